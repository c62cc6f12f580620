//! Entry point, stack, heap and log output of the root task.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicUsize, Ordering};
use sel4_bindings as sys;

/// The power-off code when the capability audit refuses the system.
pub const AUDIT_FAILED_CODE: u8 = 0x7d;
/// The power-off code when the image is built for Hyper-V
/// (`[platform] hypervisor = "hyper-v"`) and CPUID does not report Hyper-V
/// with the synic and hypercalls.
pub const HYPERV_ABSENT_CODE: u8 = 0x7c;

const STACK_BYTES: usize = 64 * 1024;
// The audit's frame lists grow with the description and a bump heap never
// frees: system.toml with the network (13 PDs, about 3900 frames) ran out
// of 1 MiB.
const HEAP_BYTES: usize = 4 * 1024 * 1024;

// The kernel starts the root task with rsp = 0 and the boot information
// pointer in rdi: give it a stack first.
core::arch::global_asm!(
    ".section .bss.roottask_stack, \"aw\", @nobits",
    ".align 16",
    "roottask_stack_bottom:",
    ".space {stack_bytes}",
    "roottask_stack_top:",
    ".section .text._start, \"ax\"",
    ".global _start",
    "_start:",
    "lea rsp, [rip + roottask_stack_top]",
    "call {main}",
    "ud2",
    stack_bytes = const STACK_BYTES,
    main = sym roottask_main,
);

/// A bump allocator: the root task allocates while it builds the system
/// and the monitor's needs afterwards are fixed, so nothing is freed.
struct BumpHeap;

#[repr(align(4096))]
struct HeapArea {
    _bytes: [u8; HEAP_BYTES],
}
static mut HEAP: HeapArea = HeapArea {
    _bytes: [0; HEAP_BYTES],
};
static HEAP_USED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: each allocation is a distinct, suitably aligned range of HEAP
// (claimed with a compare-exchange on HEAP_USED), inside HEAP_BYTES; nothing
// else touches HEAP; a failed allocation returns null.
unsafe impl GlobalAlloc for BumpHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = core::ptr::addr_of_mut!(HEAP) as usize;
        let mut used = HEAP_USED.load(Ordering::Relaxed);
        loop {
            let start = (base + used).next_multiple_of(layout.align()) - base;
            let end = start + layout.size();
            if end > HEAP_BYTES {
                return core::ptr::null_mut();
            }
            match HEAP_USED.compare_exchange(used, end, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return (base + start) as *mut u8,
                Err(now) => used = now,
            }
        }
    }
    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static ALLOCATOR: BumpHeap = BumpHeap;

/// COM1 through the root task's IO-port cap (works on a release kernel
/// too, unlike seL4_DebugPutChar).
pub struct Serial;

const COM1: u16 = 0x3f8;

impl Serial {
    fn put(byte: u8) {
        for _ in 0..10_000 {
            match sys::ioport_in(sys::initial_cap::IO_PORT, COM1 + 5, 1) {
                Ok(status) if status & 0x20 != 0 => break,
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        let _ = sys::ioport_out(sys::initial_cap::IO_PORT, COM1, 1, byte as u32);
    }
}

impl core::fmt::Write for Serial {
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        for byte in text.bytes() {
            if byte == b'\n' {
                Self::put(b'\r');
            }
            Self::put(byte);
        }
        Ok(())
    }
}

/// Print a monitor line: `log!("x {}", y)`.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::boot::Serial, "[monitor] {}", format_args!($($arg)*));
    }};
}

/// End QEMU through the isa-debug-exit device: status `(code << 1) | 1`.
pub fn power_off(code: u8) -> ! {
    let _ = sys::ioport_out(sys::initial_cap::IO_PORT, 0xf4, 1, code as u32);
    loop {
        sys::yield_now();
    }
}

extern "C" fn roottask_main(boot_info: *const sys::BootInfo) -> ! {
    // SAFETY: the kernel passes a pointer to the mapped boot info frame.
    let boot_info = unsafe { &*boot_info };
    sys::set_ipc_buffer(boot_info.ipc_buffer as usize);
    check_platform();
    match crate::system::build(boot_info) {
        Ok(system) => crate::monitor::serve(system),
        Err(error) => {
            log!("cannot build the system: {error}");
            match error {
                crate::objects::BuildError::AuditFailed(_) => power_off(AUDIT_FAILED_CODE),
                _ => power_off(0x7f),
            }
        }
    }
}

/// Print what CPUID reports; power off if the image is built for Hyper-V
/// and this machine cannot serve it. An undecodable layout is left to
/// `system::build`, which reports it.
fn check_platform() {
    use crate::detect::{cpuid, report, Verdict};
    let detection = hyperv_defs::cpuid::Detection::probe(cpuid);
    let platform = system_layout::SystemLayout::decode(crate::embedded::LAYOUT)
        .map(|layout| layout.platform)
        .unwrap_or_default();
    let (lines, verdict) = report(&detection, platform);
    for line in &lines {
        log!("{line}");
    }
    if verdict == Verdict::HyperVAbsent {
        power_off(HYPERV_ABSENT_CODE);
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    log!("root task panic: {info}");
    power_off(0x7e)
}
