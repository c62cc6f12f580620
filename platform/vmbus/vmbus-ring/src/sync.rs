//! The atomics the ring protocol uses, in one place so the model checker
//! can replace them: built with `--cfg loom` (tests/loom_ring.rs, run by
//! `cargo xtask test`), the ring's control words, loads, stores and fences
//! are `loom`'s, and loom explores every interleaving and every value a
//! weak-memory load may return. Otherwise they are `core`'s.

#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicU32, Ordering};

#[cfg(not(loom))]
pub use core::sync::atomic::{fence, AtomicU32, Ordering};
