//! Build every protection domain the description declares, then start them.

use crate::audit::Mapping;
use crate::elf;
use crate::fault::FaultRecord;
use crate::objects::{Allocator, BuildError, BuildResult, Context, ROOT_DEPTH};
use alloc::string::String;
use alloc::vec::Vec;
use sel4_bindings::{self as sys, initial_cap, object_type, CPtr, Rights};
use sel4_runtime::abi::*;
use system_layout::{
    ChannelKind, IrqSource, SystemLayout, IRQ_VECTOR_BASE, LAYOUT_VERSION, MAX_IRQ_VECTOR,
    MIN_IRQ_VECTOR, PAGE_SIZE,
};

/// Where the root task maps a frame to fill or reset it.
const SCRATCH_VADDR: u64 = 0x7000_0000;
/// Component images must lie below the fixed PD areas.
const IMAGE_LIMIT: u64 = PD_INFO_VADDR;

pub struct Pd {
    pub name: String,
    pub tcb: CPtr,
    pub cnode: CPtr,
    vspace: CPtr,
    pub endpoint: CPtr,
    pub notification: CPtr,
    /// Root-held cap to the PD's notification, badged MONITOR_NEWS_BIT.
    pub news: CPtr,
    image: &'static [u8],
    pub parsed: elf::Image,
    /// Every frame mapped into the PD's VSpace (by [`System::map_into_pd`]).
    pub mappings: Vec<Mapping>,
    /// Image pages: (vaddr, root-held copy of the frame cap).
    image_pages: Vec<(u64, CPtr)>,
    /// Stack and IPC buffer frames (root-held copies), zeroed on restart.
    scratch_pages: Vec<CPtr>,
    /// Root-held copy of the IPC buffer frame (to read the serving marker).
    ipc_copy: Option<CPtr>,
    /// Calls this PD serves: (its channel id, client PD, client's channel id).
    served_calls: Vec<(u8, usize, u8)>,
    pub supervisor: Option<usize>,
    /// The monitor restarts it on a fault (`supervisor = "@platform"`).
    pub platform_supervised: bool,
    /// When it faulted lately (ns since boot), for the hold policy.
    pub platform_faults: Vec<u64>,
    pub children: Vec<usize>,
    pub may_power_off: bool,
    /// The description's simulated host (the only PD that may ask for
    /// fault injection, in a root task built for it).
    pub simulated_host: bool,
    pub pending_fault: Option<FaultRecord>,
}

pub struct System {
    pub pds: Vec<Pd>,
    pub monitor_endpoint: CPtr,
    /// The TSC's rate (from the kernel's boot info), for the monitor's clock.
    pub tsc_per_us: u64,
    pub allocator: Allocator,
}

pub struct RegionFrames {
    first: CPtr,
    pub pages: u64,
    pub paddr: u64,
    host_visible: bool,
    /// Device memory (`physical = ...`): mapped write-combining.
    device: bool,
}

fn image_for(package: &str) -> BuildResult<&'static [u8]> {
    crate::embedded::ELFS
        .iter()
        .find(|(name, _)| *name == package)
        .map(|(_, bytes)| *bytes)
        .ok_or(BuildError::Description(
            "a component's package has no embedded image",
        ))
}

impl System {
    /// Map a root-held frame copy at the scratch address, let `fill` write
    /// it, and unmap it again.
    fn write_frame(&mut self, frame: CPtr, fill: impl FnOnce(&mut [u8])) -> BuildResult {
        self.allocator.map_page(
            frame,
            initial_cap::INIT_THREAD_VSPACE,
            SCRATCH_VADDR,
            Rights::READ_WRITE,
        )?;
        // SAFETY: one page is mapped read-write at SCRATCH_VADDR until the
        // unmap below; nothing else uses that address.
        let page = unsafe {
            core::slice::from_raw_parts_mut(SCRATCH_VADDR as *mut u8, PAGE_SIZE as usize)
        };
        fill(page);
        sys::page_unmap(frame).context("unmap scratch")
    }

    /// Reset a PD's image pages from its ELF and zero its stack and IPC
    /// buffer.
    fn reset_memory(&mut self, pd: usize) -> BuildResult {
        let image = self.pds[pd].image;
        let parsed = self.pds[pd].parsed.clone();
        let pages = self.pds[pd].image_pages.clone();
        for (vaddr, frame) in pages {
            self.write_frame(frame, |page| {
                page.fill(0);
                for segment in parsed.segments.iter() {
                    elf::fill_page(image, segment, vaddr, page);
                }
            })?;
        }
        let zeroed = self.pds[pd].scratch_pages.clone();
        for frame in zeroed {
            self.write_frame(frame, |page| page.fill(0))?;
        }
        Ok(())
    }

    /// Start (or restart) a PD at its entry point with a fresh stack.
    fn start(&mut self, pd: usize) -> BuildResult {
        let context = sys::UserContext {
            rip: self.pds[pd].parsed.entry,
            rsp: STACK_TOP_VADDR,
            rflags: 0x202,
            ..Default::default()
        };
        sys::tcb_write_registers(self.pds[pd].tcb, true, &context).context("start thread")
    }

    /// The byte at `address` of a PD's image (None outside it).
    fn image_byte(&mut self, pd: usize, address: u64) -> BuildResult<Option<u8>> {
        let page = address & !(PAGE_SIZE - 1);
        let Some(&(_, frame)) = self.pds[pd].image_pages.iter().find(|(v, _)| *v == page) else {
            return Ok(None);
        };
        let mut byte = 0;
        self.write_frame(frame, |bytes| byte = bytes[(address - page) as usize])?;
        Ok(Some(byte))
    }

    /// If `server` was serving a protected call (its runtime's marker in
    /// the IPC buffer), make that client's `seL4_Call` return with
    /// `PPC_REPLY_SERVER_FAULTED` instead of waiting forever for a reply
    /// that will not come. The client's registers must show it in that
    /// very call (`syscall` at rip, rdx = Call, rdi = its cap for this
    /// channel); otherwise nothing is touched. Returns the client.
    pub fn fail_pending_call(&mut self, server: usize) -> BuildResult<Option<usize>> {
        let Some(ipc) = self.pds[server].ipc_copy else {
            return Ok(None);
        };
        let mut marker = 0u64;
        self.write_frame(ipc, |page| {
            let word = &mut page[IPC_SERVING_OFFSET..IPC_SERVING_OFFSET + 8];
            marker = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
            word.fill(0);
        })?;
        let Some(channel) = marker.checked_sub(1).filter(|&c| c < 62) else {
            return Ok(None);
        };
        let Some(&(_, client, client_channel)) = self.pds[server]
            .served_calls
            .iter()
            .find(|(id, _, _)| u64::from(*id) == channel)
        else {
            return Ok(None);
        };
        let tcb = self.pds[client].tcb;
        let mut context = sys::tcb_read_registers(tcb, false).context("read client registers")?;
        let in_that_call = context.rdx == sys::syscall::Call as u64
            && context.rdi == SLOT_CHANNEL_BASE + u64::from(client_channel)
            && self.image_byte(client, context.rip)? == Some(0x0f)
            && self.image_byte(client, context.rip + 1)? == Some(0x05);
        if !in_that_call {
            return Ok(None);
        }
        context.rip += 2; // past `syscall`, as if the kernel returned
        context.rsi = sys::MessageInfo::new(PPC_REPLY_SERVER_FAULTED, 0, 0, 0).0;
        context.rdi = 0;
        sys::tcb_write_registers(tcb, true, &context).context("fail the client's call")?;
        Ok(Some(client))
    }

    /// Suspend, fail the call it was serving, reset memory to the initial
    /// image, start again.
    pub fn restart(&mut self, pd: usize) -> BuildResult {
        sys::tcb_suspend(self.pds[pd].tcb).context("suspend")?;
        self.fail_pending_call_and_log(pd)?;
        self.reset_memory(pd)?;
        self.pds[pd].pending_fault = None;
        self.start(pd)
    }

    pub fn stop(&mut self, pd: usize) -> BuildResult {
        sys::tcb_suspend(self.pds[pd].tcb).context("suspend")?;
        self.fail_pending_call_and_log(pd)
    }

    pub fn fail_pending_call_and_log(&mut self, server: usize) -> BuildResult {
        if let Some(client) = self.fail_pending_call(server)? {
            crate::log!(
                "{}'s call to {} fails: the server stopped while serving it",
                self.pds[client].name,
                self.pds[server].name
            );
        }
        Ok(())
    }

    /// The one way a frame enters a PD's VSpace: map it and record the
    /// mapping (with the frame's physical address, from the kernel) for the
    /// capability audit.
    fn map_into_pd(
        &mut self,
        pd: usize,
        frame: CPtr,
        vaddr: u64,
        rights: Rights,
        attributes: u64,
    ) -> BuildResult {
        let vspace = self.pds[pd].vspace;
        self.allocator
            .map_page_with_attributes(frame, vspace, vaddr, rights, attributes)?;
        let paddr = sys::page_get_address(frame).context("frame address")?;
        self.pds[pd].mappings.push(Mapping {
            vaddr,
            paddr,
            rights,
        });
        Ok(())
    }

    fn mint_into_pd(
        &self,
        pd: usize,
        slot: u64,
        source: CPtr,
        rights: Rights,
        badge: u64,
    ) -> BuildResult {
        sys::cnode_mint(
            self.pds[pd].cnode,
            slot,
            PD_CNODE_BITS as u8,
            initial_cap::INIT_THREAD_CNODE,
            source,
            ROOT_DEPTH,
            rights,
            badge,
        )
        .context("mint into PD CNode")
    }

    fn copy_into_pd(&self, pd: usize, slot: u64, source: CPtr, rights: Rights) -> BuildResult {
        sys::cnode_copy(
            self.pds[pd].cnode,
            slot,
            PD_CNODE_BITS as u8,
            initial_cap::INIT_THREAD_CNODE,
            source,
            ROOT_DEPTH,
            rights,
        )
        .context("copy into PD CNode")
    }

    /// Allocate frames, map them at `vaddr..` in the PD, and keep root-held
    /// copies for later resets.
    fn private_pages(
        &mut self,
        pd: usize,
        vaddr: u64,
        count: u64,
        rights: Rights,
    ) -> BuildResult<Vec<(u64, CPtr, CPtr)>> {
        let first = self.allocator.objects(object_type::seL4_X86_4K, 0, count)?;
        let mut pages = Vec::new();
        for index in 0..count {
            let frame = first + index;
            let page_vaddr = vaddr + index * PAGE_SIZE;
            self.map_into_pd(pd, frame, page_vaddr, rights, sys::DEFAULT_VM_ATTRIBUTES)?;
            let copy = self.allocator.copy(frame)?;
            pages.push((page_vaddr, frame, copy));
        }
        Ok(pages)
    }
}

/// Build the whole system from the embedded description.
pub fn build(boot_info: &sys::BootInfo) -> BuildResult<System> {
    let layout = SystemLayout::decode(crate::embedded::LAYOUT)
        .map_err(|_| BuildError::Description("no or undecodable layout.bin embedded"))?;
    if layout.version != LAYOUT_VERSION {
        return Err(BuildError::Description(
            "layout version differs from the root task's",
        ));
    }
    let mut allocator = Allocator::new(boot_info);
    let monitor_endpoint = allocator.object(object_type::seL4_EndpointObject, 0)?;
    let tsc_per_us = boot_info.arch_info;

    // Regions: contiguous frames each, so host-visible ones have one GPA.
    let mut regions = Vec::new();
    for region in &layout.regions {
        let pages = region.size.div_ceil(PAGE_SIZE).max(1);
        let first = match region.physical {
            // Device memory: the frames at those addresses, from the
            // device untyped that covers them.
            Some(physical) => allocator.device_frames(physical, pages)?,
            None => allocator.objects(object_type::seL4_X86_4K, 0, pages)?,
        };
        let paddr = sys::page_get_address(first).context("frame address")?;
        if let Some(physical) = region.physical {
            crate::log!(
                "device memory `{}`: {} KiB at physical {:#x}",
                region.name,
                pages * PAGE_SIZE / 1024,
                physical
            );
        }
        regions.push(RegionFrames {
            first,
            pages,
            paddr,
            host_visible: region.host_visible,
            device: region.physical.is_some(),
        });
    }

    // Kernel objects of every PD first: channels need their peers'.
    let mut pds = Vec::new();
    for component in &layout.components {
        let image = image_for(&component.package)?;
        let parsed = elf::parse(image, IMAGE_LIMIT)
            .map_err(|_| BuildError::Description("a component image is not a valid ELF"))?;
        let cnode = allocator.object(object_type::seL4_CapTableObject, PD_CNODE_BITS)?;
        let tcb = allocator.object(object_type::seL4_TCBObject, 0)?;
        let vspace = allocator.object(object_type::seL4_X64_PML4Object, 0)?;
        sys::asid_pool_assign(initial_cap::INIT_THREAD_ASID_POOL, vspace).context("assign ASID")?;
        let endpoint = allocator.object(object_type::seL4_EndpointObject, 0)?;
        let notification = allocator.object(object_type::seL4_NotificationObject, 0)?;
        sys::tcb_bind_notification(tcb, notification).context("bind notification")?;
        let news = allocator.slot()?;
        sys::cnode_mint(
            initial_cap::INIT_THREAD_CNODE,
            news,
            ROOT_DEPTH,
            initial_cap::INIT_THREAD_CNODE,
            notification,
            ROOT_DEPTH,
            Rights::WRITE,
            MONITOR_NEWS_BIT,
        )
        .context("mint news badge")?;
        pds.push(Pd {
            name: component.name.clone(),
            tcb,
            cnode,
            vspace,
            endpoint,
            notification,
            news,
            image,
            parsed,
            mappings: Vec::new(),
            image_pages: Vec::new(),
            scratch_pages: Vec::new(),
            ipc_copy: None,
            served_calls: component
                .channels
                .iter()
                .filter(|c| c.kind == ChannelKind::CallServer)
                .map(|c| (c.id, usize::from(c.peer), c.peer_id))
                .collect(),
            supervisor: component.supervisor.map(usize::from),
            platform_supervised: component.platform_supervised,
            platform_faults: Vec::new(),
            children: component.children.iter().map(|&c| usize::from(c)).collect(),
            may_power_off: component.may_power_off,
            simulated_host: component.simulated_host,
            pending_fault: None,
        });
    }
    let mut system = System {
        pds,
        monitor_endpoint,
        tsc_per_us,
        allocator,
    };

    for (index, component) in layout.components.iter().enumerate() {
        build_pd(&mut system, &layout, &regions, index, tsc_per_us)?;
        crate::log!("built {} (priority {})", component.name, component.priority);
    }
    grant_one_extra_for_the_audit_test(&mut system, &layout, &regions)?;
    crate::audit_probe::audit(
        &mut system,
        &layout,
        &regions,
        boot_info.init_thread_cnode_size_bits,
        tsc_per_us,
    )?;
    for index in 0..system.pds.len() {
        system.start(index)?;
    }
    let (slots_left, bytes_used) = system.allocator.usage();
    crate::log!(
        "started {} protection domains ({} KiB of kernel objects, {slots_left} root slots left)",
        system.pds.len(),
        bytes_used / 1024
    );
    Ok(system)
}

fn build_pd(
    system: &mut System,
    layout: &SystemLayout,
    regions: &[RegionFrames],
    pd: usize,
    tsc_per_us: u64,
) -> BuildResult {
    let component = &layout.components[pd];

    // Image: one frame per page any segment touches, filled from the file.
    let page_rights: Vec<(u64, bool)> = elf::image_pages(&system.pds[pd].parsed).collect();
    for (vaddr, writable) in page_rights {
        let rights = if writable {
            Rights::READ_WRITE
        } else {
            Rights::READ
        };
        let pages = system.private_pages(pd, vaddr, 1, rights)?;
        system.pds[pd].image_pages.push((vaddr, pages[0].2));
    }

    // Stack (guard page below is simply left unmapped) and IPC buffer.
    let stack_pages = u64::from(component.stack_pages.max(1));
    for (_, _, copy) in system.private_pages(
        pd,
        STACK_TOP_VADDR - stack_pages * PAGE_SIZE,
        stack_pages,
        Rights::READ_WRITE,
    )? {
        system.pds[pd].scratch_pages.push(copy);
    }
    let ipc = system.private_pages(pd, IPC_BUFFER_VADDR, 1, Rights::READ_WRITE)?;
    let (_, ipc_frame, ipc_copy) = ipc[0];
    system.pds[pd].scratch_pages.push(ipc_copy);
    system.pds[pd].ipc_copy = Some(ipc_copy);
    system.reset_memory(pd)?;

    // Regions, with the declared rights; double maps back to back.
    let mut info = PdInfo::empty();
    if component.maps.len() > MAX_MAPS {
        return Err(BuildError::Description("too many maps"));
    }
    for (index, map) in component.maps.iter().enumerate() {
        let region = regions
            .get(map.region as usize)
            .ok_or(BuildError::Description("map of an unknown region"))?;
        let rights = if map.writable {
            Rights::READ_WRITE
        } else {
            Rights::READ
        };
        // An address-only grant maps no frame: the PD learns the address.
        let copies = match (map.address_only, map.double) {
            (true, _) => 0,
            (false, true) => 2,
            (false, false) => 1,
        };
        let size = region.pages * PAGE_SIZE;
        // A framebuffer is written in bulk and never read back by the
        // device: write combining, which the kernel's PAT provides.
        let attributes = if region.device {
            sys::WRITE_COMBINING_VM_ATTRIBUTES
        } else {
            sys::DEFAULT_VM_ATTRIBUTES
        };
        for copy_index in 0..copies {
            for page in 0..region.pages {
                let frame = system.allocator.copy(region.first + page)?;
                // The audit's negative test: RAM where the description
                // says device memory (the device region's first page).
                #[cfg(roottask_audit_test = "device-in-ram")]
                let frame = if region.device && page == 0 {
                    system.allocator.object(object_type::seL4_X86_4K, 0)?
                } else {
                    frame
                };
                system.map_into_pd(
                    pd,
                    frame,
                    map.vaddr + copy_index * size + page * PAGE_SIZE,
                    rights,
                    attributes,
                )?;
            }
        }
        info.maps[index] = MapInfo {
            vaddr: map.vaddr,
            size,
            guest_physical: if region.host_visible { region.paddr } else { 0 },
            writable: map.writable as u8,
            double: map.double as u8,
            address_only: map.address_only as u8,
            _pad: [0; 5],
        };
    }
    info.num_maps = component.maps.len() as u64;

    // The PD's CSpace.
    let endpoint = system.pds[pd].endpoint;
    // Receive only: nobody calls through the PD's own unbadged cap.
    system.copy_into_pd(pd, SLOT_ENDPOINT, endpoint, Rights::READ)?;
    let monitor = system.monitor_endpoint;
    system.mint_into_pd(
        pd,
        SLOT_MONITOR,
        monitor,
        Rights(Rights::WRITE.0 | Rights::GRANT.0),
        REQUEST_BADGE_FLAG | pd as u64,
    )?;
    // The kernel sends faults only through a cap with send and grant; no
    // read right, so the PD cannot receive on the monitor's endpoint.
    system.mint_into_pd(
        pd,
        SLOT_FAULT,
        monitor,
        Rights(Rights::WRITE.0 | Rights::GRANT.0),
        FAULT_BADGE_FLAG | pd as u64,
    )?;
    if component.hypervisor {
        // The kernel's hypervisor cap (patch 0008), a copy of the root
        // task's initial one; sysdesc admits at most one such PD.
        system.copy_into_pd(
            pd,
            SLOT_HYPERVISOR,
            initial_cap::X86_HYPERVISOR,
            Rights::ALL,
        )?;
    }
    for channel in &component.channels {
        if channel.id >= 62 {
            return Err(BuildError::Description("channel id out of range"));
        }
        let peer = channel.peer as usize;
        if peer >= system.pds.len() || channel.peer_id >= 62 {
            return Err(BuildError::Description("channel peer out of range"));
        }
        let slot = SLOT_CHANNEL_BASE + channel.id as u64;
        match channel.kind {
            ChannelKind::Notify => {
                let peer_notification = system.pds[peer].notification;
                system.mint_into_pd(
                    pd,
                    slot,
                    peer_notification,
                    Rights::WRITE,
                    notification_bit(channel.peer_id),
                )?;
                info.notify_channels |= 1 << channel.id;
            }
            ChannelKind::CallClient => {
                // Grant lets the kernel give the server a reply cap.
                let peer_endpoint = system.pds[peer].endpoint;
                system.mint_into_pd(
                    pd,
                    slot,
                    peer_endpoint,
                    Rights(Rights::WRITE.0 | Rights::GRANT.0),
                    PPC_BADGE_FLAG | channel.peer_id as u64,
                )?;
                info.call_client_channels |= 1 << channel.id;
            }
            ChannelKind::CallServer => info.call_server_channels |= 1 << channel.id,
        }
    }
    for irq in &component.irqs {
        if irq.channel >= 62 {
            return Err(BuildError::Description("IRQ channel out of range"));
        }
        let handler = system.allocator.slot()?;
        match irq.source {
            IrqSource::Line(line) => sys::irq_control_get_ioapic(
                initial_cap::IRQ_CONTROL,
                initial_cap::INIT_THREAD_CNODE,
                handler,
                ROOT_DEPTH as u64,
                0,
                line as u64,
                false,
                false,
                line as u64,
            )
            .context("IOAPIC IRQ handler")?,
            // A vector no device raises: an MSI-kind handler (nothing is
            // programmed; the kernel only routes the vector to it), which
            // the hypervisor injects or the holder raises.
            IrqSource::Vector(vector) => {
                let index = vector
                    .checked_sub(IRQ_VECTOR_BASE)
                    .filter(|_| (MIN_IRQ_VECTOR..=MAX_IRQ_VECTOR).contains(&vector))
                    .ok_or(BuildError::Description("IRQ vector out of range"))?;
                sys::irq_control_get_msi(
                    initial_cap::IRQ_CONTROL,
                    initial_cap::INIT_THREAD_CNODE,
                    handler,
                    ROOT_DEPTH as u64,
                    0,
                    0,
                    0,
                    0,
                    index as u64,
                )
                .context("MSI IRQ handler")?
            }
        }
        // Its holder's own end, or the notify-channel end it names, badged
        // as that end's channel so the receiver cannot tell them apart.
        let (notification, end) = match irq.notify {
            None => (system.pds[pd].notification, irq.channel),
            Some(target) => {
                let peer = usize::from(target.component);
                let is_notify_end = layout
                    .components
                    .get(peer)
                    .and_then(|c| c.channel(target.end))
                    .is_some_and(|end| end.kind == ChannelKind::Notify);
                if peer >= system.pds.len() || target.end >= 62 || !is_notify_end {
                    return Err(BuildError::Description(
                        "IRQ notifies no notify-channel end",
                    ));
                }
                (system.pds[peer].notification, target.end)
            }
        };
        let badged = system.allocator.slot()?;
        sys::cnode_mint(
            initial_cap::INIT_THREAD_CNODE,
            badged,
            ROOT_DEPTH,
            initial_cap::INIT_THREAD_CNODE,
            notification,
            ROOT_DEPTH,
            Rights::WRITE,
            notification_bit(end),
        )
        .context("mint IRQ badge")?;
        sys::irq_handler_set_notification(handler, badged).context("IRQ notification")?;
        system.copy_into_pd(pd, SLOT_IRQ_BASE + irq.channel as u64, handler, Rights::ALL)?;
        info.irq_channels |= 1 << irq.channel;
    }
    if component.ioports.len() > MAX_IOPORTS {
        return Err(BuildError::Description("too many IO-port ranges"));
    }
    for (index, range) in component.ioports.iter().enumerate() {
        let last = range
            .base
            .checked_add(range.size.saturating_sub(1))
            .filter(|_| range.size > 0)
            .ok_or(BuildError::Description("IO-port range out of bounds"))?;
        system.mint_into_pd(
            pd,
            SLOT_IOPORT_BASE + index as u64,
            initial_cap::IO_PORT,
            Rights::ALL,
            sys::io_port_cap_data(range.base, last),
        )?;
        info.ioports[index] = IoPortInfo {
            base: range.base,
            size: range.size,
            _pad: [0; 4],
        };
    }
    info.num_ioports = component.ioports.len() as u64;

    // The information page.
    info.pd_index = pd as u64;
    info.tsc_per_us = tsc_per_us;
    let name = component.name.as_bytes();
    let name_len = name.len().min(MAX_NAME);
    info.name[..name_len].copy_from_slice(&name[..name_len]);
    info.name_len = name_len as u64;
    info.console_channel = component.console.map_or(0xff, u64::from);
    info.may_power_off = component.may_power_off as u64;
    info.num_children = component.children.len() as u64;
    let info_pages = system.private_pages(pd, PD_INFO_VADDR, 1, Rights::READ)?;
    let info_bytes = info.as_bytes();
    system.write_frame(info_pages[0].2, |page| {
        page.fill(0);
        page[..info_bytes.len()].copy_from_slice(info_bytes);
    })?;

    // The thread: fault endpoint, priority (MCP 0: it cannot raise any
    // thread's priority), CSpace with a guard so cptrs are slot numbers.
    let (tcb, cnode, vspace) = (
        system.pds[pd].tcb,
        system.pds[pd].cnode,
        system.pds[pd].vspace,
    );
    sys::tcb_configure(
        tcb,
        SLOT_FAULT,
        component.priority,
        0,
        cnode,
        sys::cnode_cap_data(0, PD_CNODE_GUARD_BITS),
        vspace,
        IPC_BUFFER_VADDR,
        ipc_frame,
    )
    .context("configure TCB")?;
    Ok(())
}

/// The capability audit's own test (`cargo xtask boot-test` builds the
/// root task with `ROOTTASK_AUDIT_TEST_GRANT` set, see `build.rs`): grant
/// one thing the description does not, the way a mistake in this file
/// would. A normal build grants nothing here.
fn grant_one_extra_for_the_audit_test(
    system: &mut System,
    layout: &SystemLayout,
    regions: &[RegionFrames],
) -> BuildResult {
    let Some(last_pd) = system.pds.len().checked_sub(1) else {
        return Ok(());
    };
    // Only the test builds below use them.
    let _ = (&system, layout, regions, last_pd);
    #[cfg(roottask_audit_test = "extra-cap")]
    {
        // The root task's own cap to every IO port, in the last PD's last
        // IO-port slot (no PD is granted that many ranges).
        let slot = SLOT_IOPORT_BASE + MAX_IOPORTS as u64 - 1;
        system.copy_into_pd(last_pd, slot, initial_cap::IO_PORT, Rights::ALL)?;
    }
    #[cfg(roottask_audit_test = "extra-frame")]
    {
        // The first page of the first region, writable, where the last PD
        // has nothing.
        if let Some(region) = regions.first() {
            let frame = system.allocator.copy(region.first)?;
            system.map_into_pd(
                last_pd,
                frame,
                0x3000_0000,
                Rights::READ_WRITE,
                sys::DEFAULT_VM_ATTRIBUTES,
            )?;
        }
    }
    #[cfg(roottask_audit_test = "wrong-notify")]
    {
        // The first notify channel's cap, re-pointed at the PD's own
        // notification (with the badge the peer would have seen).
        let granted = layout.components.iter().enumerate().find_map(|(pd, c)| {
            c.channels
                .iter()
                .find(|ch| ch.kind == ChannelKind::Notify)
                .map(|ch| (pd, ch.id, ch.peer_id))
        });
        if let Some((pd, id, peer_id)) = granted {
            let slot = SLOT_CHANNEL_BASE + u64::from(id);
            let (cnode, own) = (system.pds[pd].cnode, system.pds[pd].notification);
            sys::cnode_delete(cnode, slot, PD_CNODE_BITS as u8).context("delete notify cap")?;
            system.mint_into_pd(pd, slot, own, Rights::WRITE, notification_bit(peer_id))?;
        }
    }
    #[cfg(roottask_audit_test = "wrong-badge")]
    {
        // The last PD's monitor cap badged as PD 0: it could ask the
        // monitor for what only PD 0 may.
        let cnode = system.pds[last_pd].cnode;
        sys::cnode_delete(cnode, SLOT_MONITOR, PD_CNODE_BITS as u8)
            .context("delete monitor cap")?;
        let monitor = system.monitor_endpoint;
        system.mint_into_pd(
            last_pd,
            SLOT_MONITOR,
            monitor,
            Rights(Rights::WRITE.0 | Rights::GRANT.0),
            REQUEST_BADGE_FLAG,
        )?;
    }
    #[cfg(roottask_audit_test = "readable-monitor")]
    {
        // The last PD's fault cap with the read right too: it could
        // receive other PDs' requests and faults on the monitor's endpoint.
        let cnode = system.pds[last_pd].cnode;
        sys::cnode_delete(cnode, SLOT_FAULT, PD_CNODE_BITS as u8).context("delete fault cap")?;
        let monitor = system.monitor_endpoint;
        system.mint_into_pd(
            last_pd,
            SLOT_FAULT,
            monitor,
            Rights::ALL,
            FAULT_BADGE_FLAG | last_pd as u64,
        )?;
    }
    #[cfg(roottask_audit_test = "wrong-irq-end")]
    {
        // The first vector IRQ that signals another PD's end, bound to its
        // holder's own notification instead (with the end's badge): right
        // slot, right cap type, the interrupt goes to the wrong PD.
        let granted = layout.components.iter().enumerate().find_map(|(pd, c)| {
            c.irqs.iter().find_map(|irq| {
                let target = irq.notify?;
                matches!(irq.source, IrqSource::Vector(_)).then_some((pd, irq.channel, target.end))
            })
        });
        if let Some((pd, channel, end)) = granted {
            let root = initial_cap::INIT_THREAD_CNODE;
            let handler = system.allocator.slot()?;
            sys::cnode_copy(
                root,
                handler,
                ROOT_DEPTH,
                system.pds[pd].cnode,
                SLOT_IRQ_BASE + u64::from(channel),
                PD_CNODE_BITS as u8,
                Rights::ALL,
            )
            .context("copy the IRQ handler")?;
            let badged = system.allocator.slot()?;
            sys::cnode_mint(
                root,
                badged,
                ROOT_DEPTH,
                root,
                system.pds[pd].notification,
                ROOT_DEPTH,
                Rights::WRITE,
                notification_bit(end),
            )
            .context("mint the wrong IRQ badge")?;
            sys::irq_handler_set_notification(handler, badged).context("rebind the IRQ")?;
        }
    }
    #[cfg(roottask_audit_test = "wider-ioport")]
    {
        // The first granted IO-port range, one port longer: right slot,
        // right cap type, one port too many.
        let granted = layout
            .components
            .iter()
            .enumerate()
            .find_map(|(pd, c)| c.ioports.first().map(|range| (pd, range.base, range.size)));
        if let Some((pd, base, size)) = granted {
            let cnode = system.pds[pd].cnode;
            sys::cnode_delete(cnode, SLOT_IOPORT_BASE, PD_CNODE_BITS as u8)
                .context("delete IO-port cap")?;
            system.mint_into_pd(
                pd,
                SLOT_IOPORT_BASE,
                initial_cap::IO_PORT,
                Rights::ALL,
                sys::io_port_cap_data(base, base + size),
            )?;
        }
    }
    Ok(())
}
