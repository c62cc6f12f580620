//! The hosted runtime: the same components that run as seL4 protection
//! domains, run as Linux processes.
//!
//! - [`component_main!`] defines a component binary's `main`: it takes the
//!   handoff the launcher left in the environment, maps the regions, and
//!   runs the component's event loop on an [`Endpoint`].
//! - [`Endpoint`] implements [`component_api::Env`]: regions are sealed
//!   memfd shared memory mapped with the declared rights (a read-only map
//!   comes from a read-only file description, so the OS refuses writes and
//!   any attempt to upgrade the mapping; a double map is the same file
//!   mapped twice back to back); notifications and IRQs are eventfds, one
//!   per receiving end; protected calls are request/reply over a
//!   SOCK_SEQPACKET pair per channel, served in the server's process;
//!   COM1-style IO ports are an emulated 16550; `console` goes through the
//!   description's `console` channel.
//! - [`launcher::System`] starts and supervises a whole system (or a part
//!   of it, with test doubles played by the calling process), reports a
//!   component's panic, abort or crash to its supervisor's `fault` entry,
//!   and restarts it as a new process whose regions keep their contents.
//!
//! Trusts: the layout given to the launcher (validated by `sysdesc`) and,
//! in a component, the handoff from the launcher. Writes: only what the
//! components write to their regions and output; nothing on disk.

pub mod endpoint;
pub mod ioport;
pub mod launcher;
pub mod monolith;
pub mod protocol;
pub mod simulated_host;
pub mod sys;
pub mod tap;

pub use endpoint::{Endpoint, Event, OutputMode};
pub use launcher::{
    build_components, FaultRecord, GuestMemory, LaunchOptions, OutputSink, Status, System,
};

use component_api::{Component, MAX_MESSAGE};
use protocol::{Handoff, ToLauncher, HANDOFF_VARIABLE};
use std::sync::atomic::{AtomicI32, Ordering};

/// Defines `fn main` for a component binary on the hosted runtime.
#[macro_export]
macro_rules! component_main {
    ($component:ty) => {
        fn main() {
            $crate::run_component::<$component>()
        }
    };
}

static CONTROL_FD: AtomicI32 = AtomicI32::new(-1);

/// Tell the launcher this process panicked, so the fault it reports is
/// `Fault::Panic` and not the SIGABRT that follows.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(move |info| {
        // The same first line the seL4 runtime prints through the console.
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info.payload_as_str().unwrap_or("(no message)");
        eprintln!("panic: {message}{location}");
        let fd = CONTROL_FD.load(Ordering::Relaxed);
        if fd >= 0 {
            let _ = sys::send_message(fd, &protocol::encode(&ToLauncher::Panicked), None);
        }
    }));
}

/// Report a hardware fault to the launcher as the seL4 runtime would (an
/// address, an instruction pointer, read or write), then die of the signal.
/// Runs as a signal handler: only async-signal-safe calls (no allocation).
extern "C" fn on_fault_signal(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes valid siginfo and ucontext pointers.
    let (from_hardware, address) = unsafe { ((*info).si_code > 0, (*info).si_addr() as u64) };
    let fd = CONTROL_FD.load(Ordering::Relaxed);
    if from_hardware && fd >= 0 {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: for an SA_SIGINFO handler the kernel passes a valid
        // ucontext_t as the third argument.
        let (ip, write) = unsafe {
            let registers = &(*(context as *const libc::ucontext_t)).uc_mcontext.gregs;
            // Page-fault error code bit 1: the access was a write.
            (
                registers[libc::REG_RIP as usize] as u64,
                registers[libc::REG_ERR as usize] & 2 != 0,
            )
        };
        #[cfg(not(target_arch = "x86_64"))]
        let (ip, write) = {
            let _ = context;
            (0u64, false)
        };
        let fault = match signal {
            libc::SIGSEGV | libc::SIGBUS => protocol::WireFault::Memory { address, ip, write },
            _ => protocol::WireFault::Instruction { ip },
        };
        let mut buffer = [0u8; protocol::MAX_CONTROL];
        if let Ok(bytes) = postcard::to_slice(&ToLauncher::Faulted { fault }, &mut buffer) {
            // SAFETY: send is async-signal-safe; the buffer is ours and
            // `bytes.len()` long; a closed descriptor only makes it fail.
            unsafe {
                libc::send(
                    fd,
                    bytes.as_ptr() as *const libc::c_void,
                    bytes.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
        }
    }
    // The handler was reset to the default on entry (SA_RESETHAND): a
    // hardware fault repeats on return and kills us; a signal sent from
    // outside is raised again, pending until we return.
    if !from_hardware {
        // SAFETY: raise is async-signal-safe and takes no pointers.
        unsafe { libc::raise(signal) };
    }
}

/// Catch the fault signals on an alternate stack (so a stack overflow is
/// reported too).
fn install_fault_handlers() {
    const ALT_STACK: usize = 64 * 1024;
    let stack = Box::leak(vec![0u8; ALT_STACK].into_boxed_slice());
    let alt = libc::stack_t {
        ss_sp: stack.as_mut_ptr() as *mut libc::c_void,
        ss_flags: 0,
        ss_size: ALT_STACK,
    };
    // SAFETY: the stack is leaked, so it outlives every handler run on it.
    unsafe { libc::sigaltstack(&alt, std::ptr::null_mut()) };
    for signal in [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE] {
        // SAFETY: a zeroed sigaction is valid; the handler has the
        // SA_SIGINFO signature and only makes async-signal-safe calls.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_fault_signal as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESETHAND;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// Run component `C` in this process: the body of [`component_main!`].
pub fn run_component<C: Component>() -> ! {
    let Some(text) = std::env::var_os(HANDOFF_VARIABLE) else {
        eprintln!(
            "this program is a component of a hosted system; \
             start the system with `cargo xtask hosted [system.toml]`"
        );
        std::process::exit(2);
    };
    let handoff = match text.to_str().map(Handoff::from_env_value) {
        Some(Ok(handoff)) => handoff,
        Some(Err(error)) => {
            eprintln!("bad {HANDOFF_VARIABLE}: {error}");
            std::process::exit(2);
        }
        None => {
            eprintln!("bad {HANDOFF_VARIABLE}: not text");
            std::process::exit(2);
        }
    };
    // Not inherited by anything this process might start.
    std::env::remove_var(HANDOFF_VARIABLE);
    let mut endpoint = match Endpoint::from_handoff(handoff, OutputMode::Stdout) {
        Ok(endpoint) => endpoint,
        Err(error) => {
            eprintln!("cannot set up the component: {error}");
            std::process::exit(3);
        }
    };
    CONTROL_FD.store(endpoint.control_fd(), Ordering::Relaxed);
    install_panic_hook();
    install_fault_handlers();
    let mut component = C::init(&mut endpoint);
    let mut reply = vec![0u8; MAX_MESSAGE];
    loop {
        let event = match endpoint.wait_event(None) {
            Ok(Some(event)) => event,
            Ok(None) if endpoint.launcher_gone() => std::process::exit(0),
            Ok(None) => continue,
            Err(error) => {
                eprintln!("event loop failed: {error}");
                std::process::exit(3);
            }
        };
        match event {
            Event::Notified(channels) => component.notified(&mut endpoint, channels),
            Event::Call { channel, message } => {
                let result = component.protected(&mut endpoint, channel, &message, &mut reply);
                match result {
                    Ok(len) => {
                        let len = len.min(reply.len());
                        endpoint.reply(channel, Ok(&reply[..len]));
                    }
                    Err(refusal) => endpoint.reply(channel, Err(refusal)),
                }
            }
            Event::Fault { child, fault } => component.fault(&mut endpoint, child, fault),
            Event::Readable(_) => {}
        }
    }
}
