//! synic, unchanged, against hvsim's host through the gate: the fake
//! kernel between them does what the seL4 hypervisor capability does (a
//! page named by this PD's virtual address becomes its physical address,
//! i.e. the GPA; a GPA-bearing MSR needs that page; the hypercall MSR is
//! the kernel's: a write only enables or disables the kernel's own page).
use component_api::{ChannelSet, Component, Region};
use env_double::EnvDouble;
use hvsim::pd::RegionMemory;
use hvsim::sim::Simulator;
use hvsim::vmbus::ServerConfig;
use hyperv_defs::{msr, HypercallMsr, SintMsr, SynicPageMsr};
use hyperv_gate::{CallArg, Gate, GpaMap, KernelError, KernelHypervisor};
use std::cell::RefCell;
use std::rc::Rc;
use vmbus_protocol::messages::{InitiateContact, MessageType};
use vmbus_protocol::version::ProtocolVersion;
use zerocopy::IntoBytes;

const PAGES_GPA: u64 = 0x20_0000;
const HYPERCALL_GPA: u64 = 0x30_0000;
const MONITOR_GPA: u64 = 0x40_0000;
const REFERENCE_TSC_GPA: u64 = 0x48_0000;
/// The kernel's own hypercall page: in guest memory, in no map of the gate.
const KERNEL_PAGE_GPA: u64 = 0x50_0000;
const GATE_VECTOR: u8 = 0x50;

struct FakeKernel {
    sim: Simulator<RegionMemory>,
    /// (this PD's address, GPA, length) of the pages the "kernel" can
    /// translate: the gate's maps.
    mappings: Vec<(usize, u64, usize)>,
    acks: usize,
}

impl FakeKernel {
    fn physical(&self, address: usize) -> Result<u64, KernelError> {
        self.mappings
            .iter()
            .find(|(base, _, len)| address >= *base && address < base + len)
            .map(|(base, gpa, _)| gpa + (address - base) as u64)
            .ok_or(KernelError::BadPage)
    }
    fn argument(&self, arg: CallArg) -> Result<u64, KernelError> {
        match arg {
            CallArg::None => Ok(0),
            CallArg::Fast(value) => Ok(value),
            // The kernel takes whole pages (the test's memory is not page
            // aligned in this process, so the physical side is checked).
            CallArg::Page(address) => match self.physical(address)? {
                gpa if gpa % 4096 == 0 => Ok(gpa),
                _ => Err(KernelError::BadPage),
            },
        }
    }
}

impl KernelHypervisor for FakeKernel {
    fn read_msr(&mut self, number: u32) -> Result<u64, KernelError> {
        self.sim
            .msr_read(number)
            .map_err(|_| KernelError::Kernel(13))
    }
    fn write_msr(
        &mut self,
        number: u32,
        value: u64,
        page: Option<usize>,
    ) -> Result<(), KernelError> {
        match number {
            // Kernel-managed: the value only enables or disables the
            // kernel's own page.
            msr::HYPERCALL => {
                assert!(page.is_none());
                let enable = value & HypercallMsr::ENABLE;
                return self
                    .sim
                    .msr_write(msr::HYPERCALL, KERNEL_PAGE_GPA | enable)
                    .map_err(|_| KernelError::Kernel(13));
            }
            msr::SIMP | msr::SIEFP | hyperv_gate::REFERENCE_TSC_MSR if value & 1 != 0 => {
                let page = page.ok_or(KernelError::BadPage)?;
                if self.physical(page)? != value & !0xFFF {
                    return Err(KernelError::BadPage);
                }
            }
            _ => {}
        }
        self.sim
            .msr_write(number, value)
            .map_err(|_| KernelError::Kernel(13))
    }
    fn hypercall(
        &mut self,
        control: u64,
        input: CallArg,
        output: CallArg,
    ) -> Result<u64, KernelError> {
        let (input, output) = (self.argument(input)?, self.argument(output)?);
        self.sim
            .hypercall(control, input, output)
            .map_err(|_| KernelError::Kernel(13))
    }
    fn ack_interrupt(&mut self) {
        self.acks += 1;
    }
}

#[test]
fn synic_enables_and_hears_the_host_through_the_gate() {
    let mut env = EnvDouble::new();
    // synic's maps, in the order of its generated ids (system.toml).
    let mut named = Vec::new();
    for (id, name) in synic::REGION_NAMES {
        let added = match *name {
            "synic_pages" => env.add_region_with(8192, true, Some(PAGES_GPA)),
            "hypercall_pages" => env.add_region_with(12288, true, Some(HYPERCALL_GPA)),
            "synic_messages" => env.add_region(8192, true),
            "monitor_pages" => env.add_region_with(12288, true, Some(MONITOR_GPA)),
            "reference_tsc" => env.add_region_with(4096, false, Some(REFERENCE_TSC_GPA)),
            other => panic!("synic maps `{other}`: give this test its size"),
        };
        assert_eq!(added, *id);
        named.push((*name, added));
    }
    let view = |name: &str| {
        named
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, id)| env.test_view(*id))
    };
    // The test's views of synic's memory, at synic's GPAs: the gate's maps
    // of the same pages (read-write, as the gate maps them).
    let pages = view("synic_pages").unwrap().with_guest_physical(PAGES_GPA);
    let hypercall = view("hypercall_pages")
        .unwrap()
        .with_guest_physical(HYPERCALL_GPA);
    let queue = view("synic_messages").unwrap();
    let monitor = view("monitor_pages")
        .unwrap()
        .with_guest_physical(MONITOR_GPA);
    let reference_tsc =
        view("reference_tsc").map(|region| region.with_guest_physical(REFERENCE_TSC_GPA));
    let kernel_page = Region::leaked(4096).with_guest_physical(KERNEL_PAGE_GPA);
    let gate_maps: Vec<Region> = [Some(pages), Some(hypercall), reference_tsc]
        .into_iter()
        .flatten()
        .collect();
    let mut guest_memory = gate_maps.clone();
    guest_memory.extend([monitor, kernel_page]);
    let memory = RegionMemory::new(&guest_memory).unwrap();
    let kernel = FakeKernel {
        sim: Simulator::new(memory, ServerConfig::default()),
        mappings: gate_maps
            .iter()
            .map(|r| (r.as_ptr() as usize, r.guest_physical().unwrap(), r.len()))
            .collect(),
        acks: 0,
    };
    let map = GpaMap::new(&gate_maps).unwrap();
    let gate = Rc::new(RefCell::new(Gate::new(kernel, map, Some(GATE_VECTOR))));
    {
        let gate = gate.clone();
        env.on_typed_call::<vmbus_ipc::hypervisor::Hypervisor>(
            synic::channels::HYPERVISOR,
            move |request| gate.borrow_mut().handle(request),
        );
    }

    let mut guest = synic::Synic::init(&mut env);
    assert!(
        env.console
            .contains("synic enabled: SIMP 0x200000, SIEFP 0x201000, SINT2 vector 0x30"),
        "{}",
        env.console
    );
    {
        let mut gate = gate.borrow_mut();
        let sim = &mut gate_kernel(&mut gate).sim;
        assert_eq!(
            sim.msr_read(msr::SIMP),
            Ok(SynicPageMsr::new(PAGES_GPA, true).0)
        );
        let sint2 = SintMsr(sim.msr_read(msr::SINT0 + 2).unwrap());
        assert_eq!(
            (sint2.vector(), sint2.masked(), sint2.auto_eoi()),
            (GATE_VECTOR, false, false)
        );
        let sint3 = SintMsr(sim.msr_read(msr::SINT0 + 3).unwrap());
        assert_eq!(sint3.vector(), GATE_VECTOR);
        assert_eq!(
            gate.counters.refused_gpas + gate.counters.kernel_refusals,
            0
        );
    }

    // vmbus's first message, posted by synic through the gate's slow
    // hypercall; the host's answer raises the gate's vector.
    let contact = InitiateContact::request(
        ProtocolVersion::V5_3,
        0,
        0,
        MONITOR_GPA,
        MONITOR_GPA + 4096,
        0,
    );
    let post = vmbus_ipc::synic::Request::PostMessage {
        connection_id: ProtocolVersion::V5_3.initiate_contact_connection_id(),
        payload: heapless::Vec::from_slice(contact.as_bytes()).unwrap(),
    };
    let message = env_double::encode_request::<vmbus_ipc::synic::Synic>(&post);
    let mut reply = [0u8; 256];
    let used = guest
        .protected(&mut env, synic::channels::VMBUS_CALL, &message, &mut reply)
        .unwrap();
    assert_eq!(
        env_double::decode_reply::<vmbus_ipc::synic::Synic>(&reply[..used]),
        vmbus_ipc::synic::Reply::Done
    );
    let vector = {
        let mut gate = gate.borrow_mut();
        let sim = &mut gate_kernel(&mut gate).sim;
        sim.step(1_000_000);
        sim.take_interrupt()
    };
    assert_eq!(vector, Some(GATE_VECTOR));
    // The kernel signals synic's notification; synic copies the answer out.
    let mut set = ChannelSet::EMPTY;
    set.insert(synic::channels::HYPERVISOR_INTERRUPT);
    guest.notified(&mut env, set);
    let mut consumer = spsc_queue::Consumer::new(queue, vmbus_ipc::MESSAGE_QUEUE_SLOT).unwrap();
    let mut slot = [0u8; vmbus_ipc::MESSAGE_QUEUE_SLOT];
    let length = consumer
        .pop(&mut slot)
        .unwrap()
        .expect("the host's answer was queued");
    assert!(length >= 20);
    // hv_message: type, size, flags, reserved, origin (16 bytes), then the
    // VMBus message, whose first word is its type.
    let vmbus_type = u32::from_le_bytes(slot[16..20].try_into().unwrap());
    assert_eq!(vmbus_type, MessageType::VERSION_RESPONSE.0);
    assert_eq!(guest.status().messages_received, 1);
}

fn gate_kernel(gate: &mut Gate<FakeKernel>) -> &mut FakeKernel {
    gate.kernel_mut()
}
