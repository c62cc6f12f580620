//! Golden tests of the description errors: each `golden/NAME.toml` is
//! compiled as if it were `system.toml`; the diagnostics must equal
//! `golden/NAME.expected` exactly. Run with `BLESS=1` to rewrite the
//! expected files after a deliberate change, then review the diff.
#![forbid(unsafe_code)]

use std::path::Path;

#[test]
fn description_errors_match_their_golden_files() {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("golden");
    let bless = std::env::var_os("BLESS").is_some();
    let mut cases: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "golden cases are missing");
    let mut failures = Vec::new();
    for case in &cases {
        let text = std::fs::read_to_string(case).unwrap();
        let actual = match sysdesc::compile_str("system.toml", &text) {
            Ok(_) => "ok\n".to_string(),
            Err(diagnostics) => diagnostics.to_string(),
        };
        let expected_path = case.with_extension("expected");
        if bless {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if actual != expected {
            failures.push(format!(
                "{}:\n--- expected\n{expected}--- actual\n{actual}",
                case.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
