//! Expectation files (`system.expect`, `tests/systems/*.expect`): what a
//! run of a system must print, shared by the QEMU boot tests
//! (`cargo xtask boot-test`) and the hosted scenario tests.
//!
//! One substring a line; `#` starts a comment line. A line marked `sel4: `
//! applies only to the seL4 image (the monitor's lines, the host PD's
//! banner), one marked `hosted: ` only to the hosted system. Lines are
//! grouped by the component that prints them (their `[name]` prefix; lines
//! without one, such as the rows of vmbus's status view, form one group),
//! and each group must appear in order. The order across components is not
//! checked: it follows from scheduling (and, hosted, from processes
//! printing concurrently), not from the protocol.

/// Which system a run is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sel4,
    Hosted,
}

/// The lines of `text` that apply to `backend`, marks removed, in order.
pub fn parse(text: &str, backend: Backend) -> Vec<String> {
    let (mine, other) = match backend {
        Backend::Sel4 => ("sel4: ", "hosted: "),
        Backend::Hosted => ("hosted: ", "sel4: "),
    };
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with(other))
        .map(|line| line.strip_prefix(mine).unwrap_or(line).to_string())
        .collect()
}

/// The expected lines grouped by the component that prints them, each
/// group in order.
pub fn by_source(expected: &[String]) -> Vec<Vec<&str>> {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for line in expected {
        let source = line
            .strip_prefix('[')
            .and_then(|rest| rest.split_once(']'))
            .map_or("", |(name, _)| name);
        match groups.iter_mut().find(|(name, _)| *name == source) {
            Some((_, lines)) => lines.push(line),
            None => groups.push((source, vec![line])),
        }
    }
    groups.into_iter().map(|(_, lines)| lines).collect()
}

/// Match `expected` against `output` (substrings; each component's lines
/// in order): the index of the output line that matched last, or the
/// first expected line not seen.
pub fn check<'a>(expected: &'a [String], output: &[String]) -> Result<Option<usize>, &'a str> {
    let mut last = None;
    for group in by_source(expected) {
        let mut from = 0;
        for needle in group {
            match output[from..].iter().position(|line| line.contains(needle)) {
                Some(offset) => {
                    from += offset + 1;
                    last = last.max(Some(from - 1));
                }
                None => return Err(needle),
            }
        }
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &[&str]) -> Vec<String> {
        text.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn marks_choose_the_backend() {
        let text = "# c\n\nsel4: [monitor] x\nhosted: [launcher] y\n [vmbus] z \n";
        assert_eq!(parse(text, Backend::Sel4), ["[monitor] x", "[vmbus] z"]);
        assert_eq!(parse(text, Backend::Hosted), ["[launcher] y", "[vmbus] z"]);
    }

    #[test]
    fn lines_are_grouped_by_component_in_order() {
        let expected = lines(&["[a] 1", "[b] 1", "x", "[a] 2", "y"]);
        assert_eq!(
            by_source(&expected),
            [vec!["[a] 1", "[a] 2"], vec!["[b] 1"], vec!["x", "y"]]
        );
    }

    #[test]
    fn each_component_in_order_across_components_in_any() {
        let expected = lines(&["[a] 1", "[b] 1", "[a] 2"]);
        let interleaved = lines(&["[b] 1 here", "[a] 1", "noise", "[a] 2"]);
        assert_eq!(check(&expected, &interleaved), Ok(Some(3)));
        let swapped = lines(&["[a] 2", "[a] 1", "[b] 1"]);
        assert_eq!(check(&expected, &swapped), Err("[a] 2"));
        assert_eq!(check(&expected, &lines(&["[a] 1", "[a] 2"])), Err("[b] 1"));
    }
}
