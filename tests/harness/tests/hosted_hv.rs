//! The bridge to the simulated Hyper-V host (`tests/systems/hosted_hv.toml`):
//! the test plays a synic stand-in and drives the `hvsim` process through
//! the `vmbus_ipc::hypervisor` calls a real `synic` makes; the bridge turns
//! them into the hosted transport's records, and the host's interrupt into
//! a notification.
#![forbid(unsafe_code)]

use component_api::{call, CallError};
use hyperv_defs::{call_code, msr, HvStatus, HypercallControl, HypercallResult, SintMsr};
use ipc_harness::{Double, Harness, WAIT};
use vmbus_ipc::hypervisor::{Reply, Request};
use vmbus_protocol::messages::InitiateContact;
use vmbus_protocol::{ProtocolVersion, VmbusMessage};
use zerocopy::IntoBytes;

const SYSTEM: &str = "tests/systems/hosted_hv.toml";
const VMBUS_SINT: u64 = 2;
const VECTOR: u8 = 0x30;

fn hv(guest: &mut Double, request: Request) -> Result<Reply, CallError> {
    let channel = guest.channel("hypervisor");
    call::<vmbus_ipc::hypervisor::Hypervisor>(guest.env(), channel, &request)
}

#[test]
fn synic_calls_reach_the_host_process_and_its_interrupt_comes_back() {
    let harness = Harness::builder(SYSTEM)
        .double("ht_guest")
        .start()
        .expect("the host process starts and the bridge connects");
    let mut guest = harness.double("ht_guest");
    let pages = guest.region("synic_pages");
    let base = pages
        .guest_physical()
        .expect("a host-visible region has a GPA");
    let (simp, siefp, hypercall_page, input) = (base, base + 0x1000, base + 0x2000, base + 0x3000);

    // MSRs as the processor would see them.
    assert_eq!(
        hv(
            &mut guest,
            Request::MsrRead {
                msr: msr::GUEST_OS_ID
            }
        ),
        Ok(Reply::Value(0))
    );
    assert_eq!(
        hv(&mut guest, Request::MsrRead { msr: 0x1234 }),
        Ok(Reply::GeneralProtection)
    );
    // No hypercall page yet: #UD.
    let post = HypercallControl::simple(call_code::POST_MESSAGE, false).0;
    assert_eq!(
        hv(
            &mut guest,
            Request::Hypercall {
                control: post,
                input,
                output: 0
            }
        ),
        Ok(Reply::InvalidOpcode)
    );

    // Enable the synic on our pages, as synic does at start.
    for (register, value) in [
        (msr::GUEST_OS_ID, 0x8100_0000_0000_0001),
        (msr::HYPERCALL, hypercall_page | 1),
        (msr::SIMP, simp | 1),
        (msr::SIEFP, siefp | 1),
        (
            msr::SINT0 + VMBUS_SINT as u32,
            SintMsr::new(VECTOR, false, true).0,
        ),
        (msr::SCONTROL, 1),
    ] {
        assert_eq!(
            hv(
                &mut guest,
                Request::MsrWrite {
                    msr: register,
                    value
                }
            ),
            Ok(Reply::Done),
            "MSR {register:#x}"
        );
    }
    assert_eq!(
        hv(&mut guest, Request::MsrRead { msr: msr::SIMP }),
        Ok(Reply::Value(simp | 1))
    );

    // InitiateContact (VMBus 5.0) by HvPostMessage from our input page.
    let version = ProtocolVersion::V5_0;
    let mut contact = InitiateContact::empty();
    contact.version_requested = version.0.into();
    contact.interrupt_page_or_target_info =
        InitiateContact::target_info(VMBUS_SINT as u8, 0, 0).into();
    let payload = contact.as_bytes();
    let mut message = vec![0u8; 16 + payload.len()];
    message[0..4].copy_from_slice(&version.initiate_contact_connection_id().to_le_bytes());
    message[8..12].copy_from_slice(&1u32.to_le_bytes()); // VMBus message type
    message[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    message[16..].copy_from_slice(payload);
    pages.write(0x3000, &message).unwrap();
    let result = hv(
        &mut guest,
        Request::Hypercall {
            control: post,
            input,
            output: 0,
        },
    );
    match result {
        Ok(Reply::Value(rax)) => assert_eq!(HypercallResult(rax).status(), HvStatus::SUCCESS),
        other => panic!("HvPostMessage: {other:?}"),
    }

    // The host answers in SINT2's message slot and raises the interrupt,
    // which the bridge turns into our notification.
    assert!(
        guest.wait_notified("hypervisor_interrupt", WAIT),
        "no synic interrupt"
    );
    let mut slot = [0u8; 256];
    pages.read((VMBUS_SINT * 256) as usize, &mut slot).unwrap();
    let message_type = u32::from_le_bytes(slot[0..4].try_into().unwrap());
    assert_eq!(message_type, 1, "a VMBus message is in the slot");
    let vmbus_type = u32::from_le_bytes(slot[16..20].try_into().unwrap());
    assert_eq!(vmbus_type, 15, "VersionResponse");
}
