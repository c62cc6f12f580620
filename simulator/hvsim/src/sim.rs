//! [`Simulator`]: the whole simulated host (hypervisor + VMBus server +
//! integration-component hosts) as one machine, with the operator API
//! tests use to drive it and the fault-injection entry points.

use crate::channel::network::{NetController, NetFault};
use crate::channel::scsi_target::BoxedDisk;
use crate::channel::storage::{StorageController, StorageFault};
use crate::channel::synthvid::{VideoFault, VideoHost};
use crate::channel::{ChannelEndpoint, Heartbeat, KvpResponse, PacketFault};
use crate::host::Host;
use crate::net::BoxedNetBackend;
use crate::screen::Picture;
use crate::synic::Exception;
use crate::vmbus::{DeviceConfig, DeviceKind, Server, ServerConfig};
use alloc::vec::Vec;
use hv_interface::GuestMemory;
use uuid::Uuid;

pub struct Simulator<M: GuestMemory> {
    pub host: Host<M>,
    pub vmbus: Server,
    now_ns: u64,
}

impl<M: GuestMemory> Simulator<M> {
    pub fn new(memory: M, config: ServerConfig) -> Self {
        let mut host = Host::new(memory);
        let mut vmbus = Server::new(config);
        vmbus.attach(&mut host);
        Simulator {
            host,
            vmbus,
            now_ns: 0,
        }
    }

    pub fn msr_read(&mut self, msr: u32) -> Result<u64, Exception> {
        self.host.msr_read(msr)
    }
    pub fn msr_write(&mut self, msr: u32, value: u64) -> Result<(), Exception> {
        self.host.msr_write(msr, value)
    }
    pub fn hypercall(&mut self, control: u64, input: u64, output: u64) -> Result<u64, Exception> {
        self.host.hypercall(control, input, output)
    }
    pub fn take_interrupt(&mut self) -> Option<u8> {
        self.host.take_interrupt()
    }
    /// Runs the server: guest messages, delayed replies, channel rings, timers.
    pub fn step(&mut self, now_ns: u64) {
        self.now_ns = now_ns;
        self.host.advance_clock(now_ns);
        self.vmbus.step(&mut self.host, now_ns);
    }

    /// The host's clock moved (ns since the partition started): the
    /// reference counter follows it and a due synthetic timer expires.
    /// The host's TSC-to-reference-time pair (the reference TSC page's).
    pub fn set_tsc_clock(&mut self, clock: Option<hyperv_defs::reference_tsc::TscClock>) {
        self.host.set_tsc_clock(clock);
    }

    pub fn advance_clock(&mut self, now_ns: u64) {
        self.host.advance_clock(now_ns);
    }

    /// When (ns, the same clock) synthetic timer 0 expires next, if it runs.
    pub fn next_timer_ns(&self) -> Option<u64> {
        self.host.synic.next_timer_ns()
    }

    /// When (ns) the host wants to step next even if the guest stays
    /// quiet: the synthetic timer, or at once while it polls a ring.
    pub fn next_wakeup_ns(&self) -> Option<u64> {
        let timer = self.host.synic.next_timer_ns();
        if self.vmbus.polling() {
            Some(timer.map_or(self.now_ns, |due| due.min(self.now_ns)))
        } else {
            timer
        }
    }

    // ---- operator API ----

    pub fn add_device(&mut self, device: DeviceConfig) -> u32 {
        self.vmbus.add_device(&mut self.host, device)
    }

    pub fn rescind(&mut self, relid: u32) -> bool {
        self.vmbus.rescind(&mut self.host, relid)
    }

    /// The device of the open primary `relid` offers `count` sub-channels.
    pub fn offer_sub_channels(&mut self, relid: u32, count: u16) -> Vec<u32> {
        self.vmbus.offer_sub_channels(&mut self.host, relid, count)
    }

    /// Fault injection: a sub-channel offer, with or without a primary.
    pub fn offer_sub_channel(&mut self, device: DeviceConfig, index: u16) -> u32 {
        self.vmbus.offer_sub_channel(&mut self.host, device, index)
    }

    // ---- the synthetic video device (the first one) ----

    /// The host's picture of the screen: VRAM per the guest's last
    /// situation update, the pointer drawn on top when visible. `None`
    /// before the guest named its VRAM and mode (or when no video device
    /// is offered).
    pub fn screen(&self) -> Option<Picture> {
        let video = self.vmbus.video.values().next()?;
        video.picture(&self.host.memory)
    }

    /// The rectangle (x, y, w, h) of the host's picture one row at a time
    /// (`VideoHost::picture_rows`): what the seL4 host copies to QEMU's
    /// display without holding a whole picture.
    pub fn screen_rows(
        &self,
        rect: (u32, u32, u32, u32),
        row_out: &mut dyn FnMut(u32, &[u32]),
    ) -> Option<()> {
        let video = self.vmbus.video.values().next()?;
        video.picture_rows(&self.host.memory, rect, row_out)
    }

    /// The union (x, y, w, h) of the dirt and pointer changes since the
    /// last take; `None` when nothing changed.
    pub fn take_screen_damage(&mut self) -> Option<(u32, u32, u32, u32)> {
        self.vmbus.video.values_mut().next()?.take_damage()
    }

    /// The video host (the first video device).
    pub fn video(&self) -> Option<&VideoHost> {
        self.vmbus.video.values().next()
    }

    /// Makes the video host hostile (`VideoFault`): whether it was done
    /// (the channel must be open).
    pub fn video_inject(&mut self, fault: VideoFault) -> bool {
        let Some(relid) = self.channel_of(DeviceKind::Video) else {
            return false;
        };
        let memory = &self.host.memory;
        let Some((video, endpoint)) = self.vmbus.video_channel(relid) else {
            return false;
        };
        if video.inject(endpoint, memory, fault) {
            let sint = self.vmbus.message_sint_for_signals();
            self.host.signal_guest(sint, relid as u16);
        }
        true
    }

    /// The relid of the open channel serving `kind`, if one is open.
    pub fn channel_of(&self, kind: DeviceKind) -> Option<u32> {
        self.vmbus
            .open_channels()
            .into_iter()
            .find(|&relid| self.vmbus.endpoint(relid).is_some_and(|e| e.kind == kind))
    }

    /// Runs `f` on a channel endpoint and signals the guest if it asks to.
    pub fn with_channel<R>(
        &mut self,
        relid: u32,
        f: impl FnOnce(&mut ChannelEndpoint, &M) -> R,
        signal: impl Fn(&R) -> bool,
    ) -> Option<R> {
        let memory = &self.host.memory;
        let endpoint = self.vmbus.endpoint_mut(relid)?;
        let result = f(endpoint, memory);
        if signal(&result) {
            let sint = self.vmbus.message_sint_for_signals();
            self.host.signal_guest(sint, relid as u16);
        }
        Some(result)
    }

    fn ic_call(
        &mut self,
        kind: DeviceKind,
        f: impl FnOnce(&mut ChannelEndpoint, &M) -> Option<bool>,
    ) -> bool {
        let Some(relid) = self.channel_of(kind) else {
            return false;
        };
        matches!(
            self.with_channel(relid, f, |r| *r == Some(true)),
            Some(Some(_))
        )
    }

    /// Asks the guest to shut down (flags: 0 shut down, 1 force, 2 reboot).
    pub fn request_shutdown(&mut self, flags: u32) -> bool {
        self.ic_call(DeviceKind::Shutdown, |e, m| {
            e.request_shutdown(m, flags, "hvsim")
        })
    }

    /// The guest's answer to the last shutdown request.
    pub fn shutdown_status(&self) -> Option<u32> {
        let relid = self.channel_of(DeviceKind::Shutdown)?;
        self.vmbus.endpoint(relid)?.ic.shutdown_status
    }

    pub fn request_heartbeat(&mut self) -> bool {
        self.ic_call(DeviceKind::Heartbeat, |e, m| e.request_heartbeat(m))
    }

    /// The last heartbeat the guest answered.
    pub fn last_heartbeat(&self) -> Option<Heartbeat> {
        let relid = self.channel_of(DeviceKind::Heartbeat)?;
        self.vmbus.endpoint(relid)?.ic.last_heartbeat
    }

    /// A time sample; its reference time is the partition's now (the
    /// reference counter's value).
    pub fn send_time(&mut self, parent_time: u64, flags: u8) -> bool {
        let reference_time = self.host.synic.reference_time();
        self.ic_call(DeviceKind::TimeSync, |e, m| {
            e.send_time(m, parent_time, reference_time, flags)
        })
    }

    /// Pushes a KVP pair to the guest (KVP_OP_SET in `pool`).
    pub fn kvp_set(&mut self, pool: u8, key: &str, value: &str) -> bool {
        self.ic_call(DeviceKind::Kvp, |e, m| {
            e.kvp_request(m, vmbus_protocol::ic::kvp_operation::SET, pool, key, value)
        })
    }

    /// Asks the guest for a KVP value (KVP_OP_GET); read it with `kvp_responses`.
    pub fn kvp_get(&mut self, pool: u8, key: &str) -> bool {
        self.ic_call(DeviceKind::Kvp, |e, m| {
            e.kvp_request(m, vmbus_protocol::ic::kvp_operation::GET, pool, key, "")
        })
    }

    /// KVP answers received so far (oldest first), drained.
    pub fn kvp_responses(&mut self) -> Vec<KvpResponse> {
        let Some(relid) = self.channel_of(DeviceKind::Kvp) else {
            return Vec::new();
        };
        self.vmbus
            .endpoint_mut(relid)
            .map(|e| e.ic.kvp_responses.drain(..).collect())
            .unwrap_or_default()
    }

    // ---- fault injection ----

    /// `count` copies of a control message (e.g. a flood of offers or
    /// unknown types).
    pub fn flood_messages(&mut self, bytes: &[u8], count: usize) {
        for _ in 0..count {
            self.vmbus.send_raw(&mut self.host, bytes);
        }
    }

    /// `count` assertions of the VMBus SINT without new messages or flags.
    pub fn flood_interrupts(&mut self, count: usize) {
        let sint = self.vmbus.message_sint_for_signals();
        for _ in 0..count {
            self.host.synic.assert_sint(sint);
        }
    }

    /// A malformed packet on channel `relid`.
    pub fn inject_malformed_packet(&mut self, relid: u32, fault: PacketFault) -> bool {
        self.with_channel(relid, |e, m| e.inject_malformed(m, fault), |s| *s)
            .is_some()
    }

    pub fn inject_oversized_packet(&mut self, relid: u32, len: usize) -> bool {
        self.with_channel(relid, |e, m| e.inject_oversized(m, len), |s| *s)
            .is_some()
    }

    /// Stores `value` as the in ring's write index and signals the guest.
    pub fn corrupt_ring_index(&mut self, relid: u32, value: u32) -> bool {
        self.with_channel(relid, |e, m| e.corrupt_in_write_index(m, value), |s| *s)
            .is_some()
    }

    pub fn send_completion(&mut self, relid: u32, transaction_id: u64) -> bool {
        self.with_channel(
            relid,
            |e, m| e.send_completion(m, transaction_id, &[]),
            |s| *s,
        )
        .is_some()
    }

    pub fn repeat_last_completion(&mut self, relid: u32) -> bool {
        self.with_channel(relid, |e, m| e.repeat_last_completion(m), |s| *s)
            .is_some()
    }

    /// A transfer-page packet whose range runs past the guest's receive
    /// buffer (false: no such channel or no receive buffer known).
    pub fn inject_transfer_outside(&mut self, relid: u32, transaction_id: u64) -> bool {
        self.with_channel(
            relid,
            |e, m| {
                e.inject_transfer_outside(m, transaction_id)
                    .unwrap_or(false)
            },
            |s| *s,
        )
        .is_some()
    }

    /// A completion for a transaction ID the guest never issued.
    pub fn inject_unknown_completion(&mut self, relid: u32) -> bool {
        self.with_channel(relid, |e, m| e.inject_unknown_completion(m), |s| *s)
            .is_some()
    }

    // ---- the storage host (the first storage device) ----

    fn storage(&mut self) -> Option<&mut StorageController> {
        let (instance, _) = self.vmbus.storage_primary()?;
        self.vmbus.storage.get_mut(&instance)
    }

    /// The first storage device's primary relid (offered or open).
    pub fn storage_relid(&self) -> Option<u32> {
        self.vmbus.storage_primary()?.1
    }

    pub fn storage_luns(&self) -> Vec<u8> {
        self.vmbus
            .storage
            .values()
            .next()
            .map(StorageController::luns)
            .unwrap_or_default()
    }

    fn free_lun(&mut self) -> Option<u8> {
        let controller = self.storage()?;
        let limit = if controller.config.ide {
            1
        } else {
            crate::channel::storage::MAX_LUNS
        };
        (0..limit).find(|lun| controller.lun(*lun).is_none())
    }

    /// A disk present from the start, as the next free LUN.
    pub fn storage_attach(&mut self, disk: BoxedDisk) -> Option<u8> {
        let lun = self.free_lun()?;
        self.storage()?.attach(lun, disk).then_some(lun)
    }

    /// Hot add as the next free LUN (unit attentions, ENUMERATE_BUS).
    pub fn storage_hot_add(&mut self, disk: BoxedDisk) -> Option<u8> {
        let lun = self.free_lun()?;
        self.storage()?.hot_add(lun, disk).then_some(lun)
    }

    pub fn storage_hot_remove(&mut self, lun: u8) -> bool {
        self.storage()
            .is_some_and(|controller| controller.hot_remove(lun).is_some())
    }

    /// Arms a fault for the next I/O requests.
    pub fn storage_inject(&mut self, fault: StorageFault) -> bool {
        self.storage()
            .map(|controller| controller.inject(fault))
            .is_some()
    }

    /// Completions held back (delay fault) now.
    pub fn storage_pending(&self) -> usize {
        self.vmbus
            .storage
            .values()
            .next()
            .map_or(0, StorageController::pending_completions)
    }

    /// Sends ENUMERATE_BUS or REMOVE_DEVICE on the primary now (the guest
    /// rescans). False if the channel is not open or not initialized.
    pub fn storage_notify(&mut self, operation: u32) -> bool {
        let Some(relid) = self.storage_relid() else {
            return false;
        };
        let memory = &self.host.memory;
        let Some((controller, endpoint)) = self.vmbus.storage_channel(relid) else {
            return false;
        };
        if controller.version().is_none() {
            return false;
        }
        if controller.send_enumerate(endpoint, memory, operation) {
            let sint = self.vmbus.message_sint_for_signals();
            self.host.signal_guest(sint, relid as u16);
        }
        true
    }

    // ---- the NIC host (the first network device) ----

    /// The first network device's NIC host.
    pub fn net(&self) -> Option<&NetController> {
        let (instance, _) = self.vmbus.network_primary()?;
        self.vmbus.network.get(&instance)
    }

    pub fn net_mut(&mut self) -> Option<&mut NetController> {
        let (instance, _) = self.vmbus.network_primary()?;
        self.vmbus.network.get_mut(&instance)
    }

    /// The first network device's primary relid (offered or open).
    pub fn net_relid(&self) -> Option<u32> {
        self.vmbus.network_primary()?.1
    }

    /// Where the first network device's frames go from now on (a TAP
    /// device, a user-space network, QEMU's NE2000, memory). False if the
    /// host offers no network device.
    pub fn net_set_backend(&mut self, backend: BoxedNetBackend) -> bool {
        match self.net_mut() {
            Some(controller) => {
                controller.set_backend(backend);
                true
            }
            None => false,
        }
    }

    /// The cable in or out (the guest hears of it by INDICATE_STATUS).
    pub fn net_set_link(&mut self, up: bool) -> bool {
        self.net_mut()
            .map(|controller| controller.set_link(up))
            .is_some()
    }

    /// Arms a fault on the first network device.
    pub fn net_inject(&mut self, fault: NetFault) -> bool {
        self.net_mut()
            .map(|controller| controller.inject(fault))
            .is_some()
    }

    /// Offers the first network device again after a rescind, once the
    /// guest released it (same instance: the guest sees the same NIC).
    /// The new relid; None while the old channel is still there.
    pub fn net_offer_again(&mut self) -> Option<u32> {
        let (instance, relid) = self.vmbus.network_primary()?;
        if relid.is_some() || self.vmbus.channels_of(instance) > 0 {
            return None;
        }
        Some(self.add_device(DeviceConfig::ic(DeviceKind::Network, instance)))
    }

    pub fn instance_relid(&self, instance: Uuid) -> Option<u32> {
        self.vmbus.relid_of(instance)
    }
}

#[cfg(not(target_os = "none"))]
impl<M: GuestMemory> crate::transport::Machine for Simulator<M> {
    fn msr_read(&mut self, msr: u32) -> Result<u64, Exception> {
        Simulator::msr_read(self, msr)
    }
    fn msr_write(&mut self, msr: u32, value: u64) -> Result<(), Exception> {
        Simulator::msr_write(self, msr, value)
    }
    fn hypercall(&mut self, control: u64, input: u64, output: u64) -> Result<u64, Exception> {
        Simulator::hypercall(self, control, input, output)
    }
    fn take_interrupt(&mut self) -> Option<u8> {
        Simulator::take_interrupt(self)
    }
    fn step(&mut self, now_ns: u64) {
        Simulator::step(self, now_ns)
    }
    fn advance_clock(&mut self, now_ns: u64) {
        Simulator::advance_clock(self, now_ns)
    }
    fn next_wakeup_ns(&self) -> Option<u64> {
        Simulator::next_wakeup_ns(self)
    }
    fn set_tsc_clock(&mut self, clock: hyperv_defs::reference_tsc::TscClock) {
        Simulator::set_tsc_clock(self, Some(clock))
    }
}
