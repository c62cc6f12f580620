//! A scripted guest harness: starts the simulated host's transport end in a
//! thread on a fresh socket, creates the guest memory file, connects the
//! guest client and hands the test both ends.
#![allow(dead_code)]

pub mod vmbus;

use hv_interface::hosted::{HostedHypervisor, MappedGuestMemory};
use hv_interface::{GuestMemory, Hypervisor};
use hvsim::transport::{self, Machine, SessionEnd};
use hyperv_defs::{call_code, msr, HvStatus, HypercallControl, HypercallResult, SintMsr};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub const MEMORY_SIZE: u64 = 4 << 20;
/// Guest layout used by the scripted guests.
pub const SIMP_GPA: u64 = 0x1000;
pub const SIEFP_GPA: u64 = 0x2000;
pub const HYPERCALL_PAGE_GPA: u64 = 0x3000;
pub const INPUT_GPA: u64 = 0x4000;
pub const VECTOR: u8 = 0x30;
pub const VMBUS_SINT: u8 = 2;

pub struct Harness<S> {
    pub guest: HostedHypervisor,
    pub memory: MappedGuestMemory,
    pub machine: Arc<Mutex<S>>,
    pub stop: Arc<AtomicBool>,
    pub server: Option<JoinHandle<SessionEnd>>,
    pub dir: PathBuf,
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "hvsim-test-{}-{}-{}",
        name,
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts a host whose machine is built from the mapped guest memory.
pub fn start<S, F>(name: &str, factory: F) -> Harness<S>
where
    S: Machine + Send + 'static,
    F: FnOnce(MappedGuestMemory) -> S + Send + 'static,
{
    let dir = temp_dir(name);
    let socket = dir.join("hv.sock");
    let memory_path = dir.join("guest.mem");
    let listener = UnixListener::bind(&socket).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (sender, receiver) = mpsc::channel();
    let server_stop = stop.clone();
    let server = std::thread::spawn(move || {
        let (mut connection, host_memory) = transport::accept(&listener).expect("handshake");
        let machine = Arc::new(Mutex::new(factory(host_memory)));
        sender.send(machine.clone()).unwrap();
        connection.serve(&*machine, &server_stop, Duration::from_millis(2))
    });
    let memory = MappedGuestMemory::create(&memory_path, MEMORY_SIZE).unwrap();
    let guest = HostedHypervisor::connect(&socket, &memory_path, MEMORY_SIZE).unwrap();
    let machine = receiver.recv_timeout(Duration::from_secs(10)).unwrap();
    Harness {
        guest,
        memory,
        machine,
        stop,
        server: Some(server),
        dir,
    }
}

impl<S> Harness<S> {
    /// Guest boot: OS ID, hypercall page, SIMP, SIEFP, SINT2, SCONTROL.
    pub fn enable_synic(&mut self, auto_eoi: bool) {
        let g = &mut self.guest;
        g.msr_write(msr::GUEST_OS_ID, 0x8100_0000_0000_0001)
            .unwrap();
        g.msr_write(msr::HYPERCALL, HYPERCALL_PAGE_GPA | 1).unwrap();
        g.msr_write(msr::SIMP, SIMP_GPA | 1).unwrap();
        g.msr_write(msr::SIEFP, SIEFP_GPA | 1).unwrap();
        g.msr_write(
            msr::SINT0 + VMBUS_SINT as u32,
            SintMsr::new(VECTOR, false, auto_eoi).0,
        )
        .unwrap();
        g.msr_write(msr::SCONTROL, 1).unwrap();
    }

    /// HvPostMessage with the input page at INPUT_GPA.
    pub fn post_raw(
        &mut self,
        connection_id: u32,
        message_type: u32,
        payload_size: u32,
        payload: &[u8],
    ) -> HvStatus {
        let mut input = [0u8; 256];
        input[0..4].copy_from_slice(&connection_id.to_le_bytes());
        input[8..12].copy_from_slice(&message_type.to_le_bytes());
        input[12..16].copy_from_slice(&payload_size.to_le_bytes());
        input[16..16 + payload.len()].copy_from_slice(payload);
        self.memory.write(INPUT_GPA, &input).unwrap();
        let control = HypercallControl::simple(call_code::POST_MESSAGE, false).0;
        HypercallResult(self.guest.hypercall(control, INPUT_GPA, 0).unwrap()).status()
    }

    pub fn post(&mut self, connection_id: u32, payload: &[u8]) -> HvStatus {
        self.post_raw(connection_id, 1, payload.len() as u32, payload)
    }

    /// Fast HvSignalEvent.
    pub fn signal(&mut self, connection_id: u32, flag: u16) -> HvStatus {
        let control = HypercallControl::simple(call_code::SIGNAL_EVENT, true).0;
        let input = connection_id as u64 | (flag as u64) << 32;
        HypercallResult(self.guest.hypercall(control, input, 0).unwrap()).status()
    }

    /// Waits for a message in the VMBus SINT slot, copies it out, frees the
    /// slot and writes EOM if the pending flag was set. Returns the payload.
    pub fn receive_message(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let slot = SIMP_GPA + VMBUS_SINT as u64 * 256;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let mut bytes = [0u8; 256];
            self.memory.read(slot, &mut bytes).unwrap();
            let message_type = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
            if message_type != 0 {
                let size = (bytes[4] as usize).min(240);
                self.memory.store_u32(slot, 0).unwrap();
                std::sync::atomic::fence(Ordering::SeqCst);
                let mut flags = [0u8; 1];
                self.memory.read(slot + 5, &mut flags).unwrap();
                if flags[0] & 1 != 0 {
                    self.guest.msr_write(msr::EOM, 0).unwrap();
                }
                return Some(bytes[16..16 + size].to_vec());
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            let _ = self.guest.wait_interrupt(Some(2_000_000));
        }
    }

    /// Tests and clears an event flag of the VMBus SINT.
    pub fn take_event_flag(&self, flag: u16) -> bool {
        let word = SIEFP_GPA + VMBUS_SINT as u64 * 256 + (flag as u64 / 32) * 4;
        let mask = 1u32 << (flag % 32);
        self.memory.fetch_and_u32(word, !mask).unwrap() & mask != 0
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        f(&mut self.machine.lock().unwrap())
    }

    /// Closes the guest end and returns how the host saw the session end.
    pub fn finish(mut self) -> SessionEnd {
        let server = self.server.take().unwrap();
        drop(self.guest);
        let end = server.join().unwrap();
        let _ = std::fs::remove_dir_all(&self.dir);
        end
    }
}
