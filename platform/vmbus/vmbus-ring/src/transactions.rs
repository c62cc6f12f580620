//! Outstanding requests by transaction ID. IDs are numbers from a counter,
//! never pointers, so a completion is only ever matched against this table:
//! unknown IDs and second completions of the same ID are refused.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransactionError {
    /// Every slot holds an outstanding request.
    Full,
    /// A completion for an ID that is not outstanding: never issued, or
    /// already completed (a repeated completion).
    Unknown(u64),
}

/// At most `N` outstanding requests, each with a caller context `T`.
#[derive(Clone, Debug)]
pub struct TransactionTable<T, const N: usize> {
    slots: heapless::Vec<(u64, T), N>,
    next_id: u64,
}

impl<T, const N: usize> Default for TransactionTable<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, const N: usize> TransactionTable<T, N> {
    pub const fn new() -> Self {
        Self {
            slots: heapless::Vec::new(),
            next_id: 1,
        }
    }

    /// Record a request and return the ID to put in its packet.
    pub fn begin(&mut self, context: T) -> Result<u64, TransactionError> {
        if self.slots.is_full() {
            return Err(TransactionError::Full);
        }
        // 64-bit counter: wrapping would take centuries; 0 is skipped
        // because some hosts treat it as "no transaction".
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let _ = self.slots.push((id, context));
        Ok(id)
    }

    /// Match a completion: returns the request's context and forgets it.
    pub fn complete(&mut self, id: u64) -> Result<T, TransactionError> {
        let index = self
            .slots
            .iter()
            .position(|(slot_id, _)| *slot_id == id)
            .ok_or(TransactionError::Unknown(id))?;
        Ok(self.slots.swap_remove(index).1)
    }

    /// Whether this table ever handed out `id` (outstanding or not): a
    /// completion for an issued ID that is no longer outstanding is stale
    /// or repeated; one for an ID never issued is made up.
    pub fn was_issued(&self, id: u64) -> bool {
        id != 0 && id < self.next_id
    }

    pub fn is_outstanding(&self, id: u64) -> bool {
        self.slots.iter().any(|(slot_id, _)| *slot_id == id)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Fail every outstanding request (channel rescinded or reset).
    pub fn drain(&mut self) -> impl Iterator<Item = (u64, T)> + '_ {
        core::iter::from_fn(move || self.slots.pop())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_match_once() {
        let mut table: TransactionTable<&str, 2> = TransactionTable::new();
        let a = table.begin("a").unwrap();
        let b = table.begin("b").unwrap();
        assert_ne!(a, b);
        assert_eq!(table.begin("c"), Err(TransactionError::Full));
        assert_eq!(table.complete(b), Ok("b"));
        assert_eq!(table.complete(b), Err(TransactionError::Unknown(b)));
        assert!(table.was_issued(b) && !table.is_outstanding(b));
        assert!(!table.was_issued(999) && !table.was_issued(0));
        assert_eq!(table.complete(999), Err(TransactionError::Unknown(999)));
        let c = table.begin("c").unwrap();
        assert_ne!(c, b, "ids are not reused");
        assert_eq!(table.drain().count(), 2);
        assert!(table.is_empty());
        assert_eq!(table.complete(a), Err(TransactionError::Unknown(a)));
    }
}
