//! The `hvsim` binary as a separate process: a scripted guest connects over
//! the socket, negotiates VMBus 5.3, receives the four IC offers, and the
//! operator reads the state over stdin.
#![forbid(unsafe_code)]

use hv_interface::hosted::{HostedHypervisor, MappedGuestMemory};
use hv_interface::{GuestMemory, Hypervisor};
use hyperv_defs::{call_code, msr, HvStatus, HypercallControl, HypercallResult, SintMsr};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vmbus_protocol::messages::{InitiateContact, RequestOffers};
use vmbus_protocol::{parse, ChannelMessage, ProtocolVersion, VmbusMessage};
use zerocopy::IntoBytes;

fn post(
    guest: &mut HostedHypervisor,
    memory: &MappedGuestMemory,
    connection: u32,
    payload: &[u8],
) -> HvStatus {
    let mut input = [0u8; 256];
    input[0..4].copy_from_slice(&connection.to_le_bytes());
    input[8..12].copy_from_slice(&1u32.to_le_bytes());
    input[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    input[16..16 + payload.len()].copy_from_slice(payload);
    memory.write(0x4000, &input).unwrap();
    let control = HypercallControl::simple(call_code::POST_MESSAGE, false).0;
    HypercallResult(guest.hypercall(control, 0x4000, 0).unwrap()).status()
}

fn receive(guest: &mut HostedHypervisor, memory: &MappedGuestMemory) -> Vec<u8> {
    let slot = 0x1000 + 2 * 256;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut bytes = [0u8; 256];
        memory.read(slot, &mut bytes).unwrap();
        if u32::from_le_bytes(bytes[0..4].try_into().unwrap()) != 0 {
            memory.store_u32(slot, 0).unwrap();
            if bytes[5] & 1 != 0 {
                guest.msr_write(msr::EOM, 0).unwrap();
            }
            return bytes[16..16 + bytes[4] as usize].to_vec();
        }
        assert!(Instant::now() < deadline, "no message from hvsim");
        let _ = guest.wait_interrupt(Some(5_000_000));
    }
}

#[test]
fn binary_serves_a_guest_and_an_operator() {
    serve_a_guest_and_an_operator(
        "plain",
        &[],
        4,
        &[(
            "stats",
            &["version Some(ProtocolVersion(327683))", "offers_sent: 4"],
        )],
    );
}

/// `--disk` files become the storage device's LUNs (a storage device is
/// added to the ICs), and the storage operator commands act on it.
#[test]
fn binary_serves_disk_files_as_luns() {
    let dir = std::env::temp_dir().join(format!("hvsim-disks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = (dir.join("a.img"), dir.join("b.img"));
    std::fs::write(&a, vec![0u8; 64 * 1024]).unwrap();
    std::fs::write(&b, vec![0u8; 32 * 1024]).unwrap();
    let b_ro = format!("{},ro", b.display());
    serve_a_guest_and_an_operator(
        "disks",
        &["--disk", a.to_str().unwrap(), "--disk", &b_ro],
        5,
        &[
            ("storage-luns", &["[0, 1]"]),
            ("storage-add-lun memory:16", &["lun 2"]),
            ("storage-remove-lun 1", &["true"]),
            ("storage-fault fail medium-error", &["true"]),
            ("storage-fault fail sideways", &["faults: delay MS"]),
            ("storage-report", &["version none, 2 LUNs"]),
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn serve_a_guest_and_an_operator(
    name: &str,
    args: &[&str],
    expected_offers: usize,
    commands: &[(&str, &[&str])],
) {
    let dir = std::env::temp_dir().join(format!("hvsim-binary-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("hv.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_hvsim"))
        .arg("--socket")
        .arg(&socket)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let memory_path = dir.join("guest.mem");
    let memory = MappedGuestMemory::create(&memory_path, 1 << 20).unwrap();
    // The socket file appears at bind, a moment before listen: retry.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut guest = loop {
        match HostedHypervisor::connect(&socket, &memory_path, 1 << 20) {
            Ok(guest) => break guest,
            Err(error) => {
                assert!(Instant::now() < deadline, "hvsim did not listen: {error:?}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    guest.msr_write(msr::GUEST_OS_ID, 1 << 63).unwrap();
    guest.msr_write(msr::HYPERCALL, 0x3000 | 1).unwrap();
    guest.msr_write(msr::SIMP, 0x1000 | 1).unwrap();
    guest.msr_write(msr::SIEFP, 0x2000 | 1).unwrap();
    guest
        .msr_write(msr::SINT0 + 2, SintMsr::new(0x30, false, true).0)
        .unwrap();
    guest.msr_write(msr::SCONTROL, 1).unwrap();

    let mut contact = InitiateContact::empty();
    contact.version_requested = ProtocolVersion::V5_3.0.into();
    contact.interrupt_page_or_target_info = InitiateContact::target_info(2, 0, 0).into();
    contact.monitor_page1 = 0x5000u64.into();
    contact.monitor_page2 = 0x6000u64.into();
    assert_eq!(
        post(&mut guest, &memory, 4, contact.as_bytes()),
        HvStatus::SUCCESS
    );
    match parse(&receive(&mut guest, &memory), ProtocolVersion::V5_3).unwrap() {
        ChannelMessage::VersionResponse(response) => assert_eq!(response.version_supported, 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        post(&mut guest, &memory, 1, RequestOffers::empty().as_bytes()),
        HvStatus::SUCCESS
    );
    let mut offers = 0;
    loop {
        match parse(&receive(&mut guest, &memory), ProtocolVersion::V5_3).unwrap() {
            ChannelMessage::OfferChannel(_) => offers += 1,
            ChannelMessage::AllOffersDelivered(_) => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(offers, expected_offers);

    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    for (command, wanted) in commands {
        writeln!(stdin, "{command}").unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        for part in *wanted {
            assert!(line.contains(part), "{command}: {line}");
        }
    }
    drop(guest);
    let status = child.wait().unwrap();
    assert!(status.success());
    let _ = std::fs::remove_dir_all(&dir);
}
