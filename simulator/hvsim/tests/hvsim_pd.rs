//! The simulated host as a component (seL4 image form): `synic`'s
//! hypervisor calls arrive as protected calls, guest memory is the
//! host-visible regions at their GPAs, and the interrupt is a notification.
//! Driven here through the component environment double.
#![forbid(unsafe_code)]

use component_api::{Channel, Env, Refusal};
use env_double::EnvDouble;
use hv_interface::GuestMemory;
use hvsim::pd::{HostPd, InterruptPath, RegionMemory};
use hvsim::vmbus::ServerConfig;
use hyperv_defs::{call_code, msr, HvStatus, HypercallControl, HypercallResult, SintMsr};
use vmbus_ipc::hypervisor::{Hypervisor, Reply, Request};
use vmbus_protocol::messages::InitiateContact;
use vmbus_protocol::{parse, ChannelMessage, ProtocolVersion, VmbusMessage};
use zerocopy::IntoBytes;

const INTERRUPT: Channel = Channel(1);
const BASE: u64 = 0x20_0000;

fn call(pd: &mut HostPd<RegionMemory>, env: &mut EnvDouble, request: Request) -> Reply {
    let message = env_double::encode_request::<Hypervisor>(&request);
    let mut reply = [0u8; 64];
    let used = pd.call(env, &message, &mut reply).unwrap();
    env_double::decode_reply::<Hypervisor>(&reply[..used])
}

#[test]
fn synic_calls_as_protected_calls_and_the_interrupt_as_a_notification() {
    let mut env = EnvDouble::new();
    // SIMP, SIEFP, input page, monitor pages: one host-visible region.
    let pages = env.add_region_with(8 * 4096, true, Some(BASE));
    let view = env.test_view(pages);
    let memory = RegionMemory::new(&[env.region(pages)]).unwrap();
    let mut pd = HostPd::new(memory, ServerConfig::default(), INTERRUPT);
    let write = |pd: &mut HostPd<RegionMemory>, env: &mut EnvDouble, msr: u32, value: u64| {
        call(pd, env, Request::MsrWrite { msr, value })
    };
    assert_eq!(
        call(&mut pd, &mut env, Request::MsrRead { msr: 0x1234 }),
        Reply::GeneralProtection
    );
    assert_eq!(
        write(&mut pd, &mut env, msr::GUEST_OS_ID, 1 << 63),
        Reply::Done
    );
    // A hypercall page outside every host-visible region: #GP.
    assert_eq!(
        write(&mut pd, &mut env, msr::HYPERCALL, 0x1000 | 1),
        Reply::GeneralProtection
    );
    assert_eq!(
        write(&mut pd, &mut env, msr::HYPERCALL, (BASE + 0x7000) | 1),
        Reply::Done
    );
    assert_eq!(write(&mut pd, &mut env, msr::SIMP, BASE | 1), Reply::Done);
    assert_eq!(
        write(&mut pd, &mut env, msr::SIEFP, (BASE + 0x1000) | 1),
        Reply::Done
    );
    assert_eq!(
        write(
            &mut pd,
            &mut env,
            msr::SINT0 + 2,
            SintMsr::new(0x30, false, false).0
        ),
        Reply::Done
    );
    assert_eq!(write(&mut pd, &mut env, msr::SCONTROL, 1), Reply::Done);

    let mut contact = InitiateContact::empty();
    contact.version_requested = ProtocolVersion::V5_3.0.into();
    contact.interrupt_page_or_target_info = InitiateContact::target_info(2, 0, 0).into();
    contact.monitor_page1 = (BASE + 0x3000).into();
    contact.monitor_page2 = (BASE + 0x4000).into();
    let mut input = [0u8; 256];
    input[0..4].copy_from_slice(&4u32.to_le_bytes());
    input[8..12].copy_from_slice(&1u32.to_le_bytes());
    input[12..16].copy_from_slice(&(InitiateContact::SIZE as u32).to_le_bytes());
    input[16..16 + InitiateContact::SIZE].copy_from_slice(contact.as_bytes());
    view.write(0x2000, &input).unwrap();
    let control = HypercallControl::simple(call_code::POST_MESSAGE, false).0;
    match call(
        &mut pd,
        &mut env,
        Request::Hypercall {
            control,
            input: BASE + 0x2000,
            output: 0,
        },
    ) {
        Reply::Value(value) => assert_eq!(HypercallResult(value).status(), HvStatus::SUCCESS),
        other => panic!("{other:?}"),
    }
    // The VersionResponse is in the SINT 2 slot and the interrupt was notified.
    assert_eq!(env.notifications_on(INTERRUPT), 1);
    let mut slot = [0u8; 256];
    view.read(2 * 256, &mut slot).unwrap();
    assert_eq!(slot[0], 1);
    let payload = &slot[16..16 + slot[4] as usize];
    match parse(payload, ProtocolVersion::V5_3).unwrap() {
        ChannelMessage::VersionResponse(response) => assert_eq!(response.version_supported, 1),
        other => panic!("{other:?}"),
    }
    // Without auto-EOI, nothing more until EndOfInterrupt.
    assert_eq!(
        call(&mut pd, &mut env, Request::EndOfInterrupt),
        Reply::Done
    );
    // A malformed call is refused, not trusted; so is one of another
    // protocol, or untagged.
    let mut reply = [0u8; 16];
    let mut garbage = env_double::encode_request::<Hypervisor>(&Request::EndOfInterrupt);
    garbage.truncate(component_api::protocol::HEADER_BYTES);
    garbage.extend_from_slice(&[0xFF, 0xFF, 0xFF]);
    assert_eq!(
        pd.call(&mut env, &garbage, &mut reply),
        Err(Refusal::MALFORMED)
    );
    assert_eq!(
        pd.call(&mut env, &[0xFF, 0xFF, 0xFF], &mut reply),
        Err(Refusal::WRONG_PROTOCOL)
    );
    let status =
        env_double::encode_request::<vmbus_ipc::synic::Synic>(&vmbus_ipc::synic::Request::Status);
    assert_eq!(
        pd.call(&mut env, &status, &mut reply),
        Err(Refusal::WRONG_PROTOCOL)
    );
    assert!(pd.sim.host.memory.contains(BASE, 8 * 4096));
}

const SINT_IRQ: Channel = Channel(7);

#[test]
fn with_a_vector_irq_the_interrupt_is_raised_on_the_descriptions_vector_and_acknowledged() {
    let mut env = EnvDouble::new();
    let pages = env.add_region_with(8 * 4096, true, Some(BASE));
    let memory = RegionMemory::new(&[env.region(pages)]).unwrap();
    let mut pd = HostPd::with_interrupt_path(
        memory,
        ServerConfig::default(),
        InterruptPath::Vector {
            irq: SINT_IRQ,
            vector: 0x50,
        },
    );
    let mut write = |msr: u32, value: u64| {
        assert_eq!(
            call(&mut pd, &mut env, Request::MsrWrite { msr, value }),
            Reply::Done
        )
    };
    write(msr::SIMP, BASE | 1);
    write(msr::SIEFP, (BASE + 0x1000) | 1);
    // The guest's vector (and auto-EOI) as synic writes them.
    write(msr::SINT0 + 2, SintMsr::new(0x30, false, true).0);
    write(msr::SCONTROL, 1);
    match call(&mut pd, &mut env, Request::MsrRead { msr: msr::SINT0 + 2 }) {
        Reply::Value(value) => assert_eq!(SintMsr(value).vector(), 0x50),
        other => panic!("{other:?}"),
    }

    // An event on SINT 2 (auto-EOI): raised, acknowledged at once, and
    // nothing notified.
    assert!(pd.sim.host.synic.signal_event(&pd.sim.host.memory, 2, 1));
    pd.step(&mut env);
    assert_eq!(env.irq_raises, vec![SINT_IRQ]);
    assert_eq!(env.irq_acks, vec![SINT_IRQ]);
    assert_eq!(env.notifications_on(INTERRUPT), 0);
    // Without auto-EOI (the guest reprograms SINT 2): raised, and
    // acknowledged on the guest's end of interrupt.
    assert_eq!(
        call(
            &mut pd,
            &mut env,
            Request::MsrWrite {
                msr: msr::SINT0 + 2,
                value: SintMsr::new(0x30, false, false).0
            }
        ),
        Reply::Done
    );
    assert!(pd.sim.host.synic.signal_event(&pd.sim.host.memory, 2, 2));
    pd.step(&mut env);
    assert_eq!(env.irq_raises, vec![SINT_IRQ, SINT_IRQ]);
    assert_eq!(env.irq_acks.len(), 1);
    assert_eq!(
        call(&mut pd, &mut env, Request::EndOfInterrupt),
        Reply::Done
    );
    assert_eq!(env.irq_acks, vec![SINT_IRQ, SINT_IRQ]);
    let stats = pd.interrupt_stats();
    assert_eq!(
        (stats.raised, stats.notified, stats.acknowledged, stats.raise_failures),
        (2, 0, 2, 0)
    );
    // A kernel that refuses the raise: counted, and nothing else is sent
    // in its place.
    env.refuse_irq_raise = true;
    assert!(pd.sim.host.synic.signal_event(&pd.sim.host.memory, 2, 3));
    pd.step(&mut env);
    assert_eq!(pd.interrupt_stats().raise_failures, 1);
    assert_eq!(env.notifications_on(INTERRUPT), 0);
}
