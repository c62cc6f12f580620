//! The global allocator of an seL4 component that needs `alloc` (today the
//! simulated host): talc over a static array in the component's image, so
//! the heap is part of what the root task maps and a restart zeroes it.
//! A component links it with `use sel4_heap as _;`; it is a crate of its
//! own (not a feature of `sel4-runtime`) so that the components built in
//! the same cargo run without it do not get a heap too.
#![no_std]

use talc::{ClaimOnOom, Span, Talc, Talck};

/// Enough for the simulated host (GPADL tables, queued messages, packet
/// copies). 512 KiB ran out (an allocation of 6410 bytes failed) once the
/// data-path test streamed on three channels at once
/// (tests/systems/datapath.toml).
const HEAP_BYTES: usize = 1024 * 1024;

static mut HEAP: [u8; HEAP_BYTES] = [0; HEAP_BYTES];

#[global_allocator]
static ALLOCATOR: Talck<spin::Mutex<()>, ClaimOnOom> =
    // SAFETY: HEAP is reached by nothing but this allocator (it is private
    // to this module and only its address is taken).
    Talc::new(unsafe {
        ClaimOnOom::new(Span::from_array(core::ptr::addr_of!(HEAP).cast_mut()))
    })
    .lock();
