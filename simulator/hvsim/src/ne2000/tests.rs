//! [`Ne2000`] against a model of the DP8390 as an NE2000 board presents it
//! (and as QEMU's `ne2k_isa` behaves): paged registers, remote DMA through
//! the data port that wraps at the ring's end, the doubled address PROM,
//! the receive ring with its 4-byte headers, frames dropped while the ring
//! is full; and that can be told to misbehave. Every register access is
//! logged, so the tests can also check what the driver programmed.

use super::*;
use std::vec;
use std::vec::Vec;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const MEMORY_END: usize = 0xC000;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Access {
    Read(u16),
    Write(u16, u8),
}

struct Model {
    memory: Vec<u8>,
    command: u8,
    start: u8,
    stop: u8,
    boundary: u8,
    current: u8,
    transmit_page: u8,
    transmit_count: u16,
    transmit_status: u8,
    status: u8,
    mask: u8,
    remote_address: u16,
    remote_count: u16,
    data_config: u8,
    receive_config: u8,
    physical: [u8; 6],
    multicast: [u8; 8],
    sent: Vec<Vec<u8>>,
    dropped: usize,
    log: Vec<Access>,
    clock_ns: u64,
    // Misbehaviour.
    absent: bool,
    no_reset: bool,
    no_dma_done: bool,
    transmit_fails: bool,
    frozen_clock: bool,
}

impl Model {
    fn new() -> Model {
        let mut memory = vec![0u8; MEMORY_END];
        for (index, byte) in MAC.iter().enumerate() {
            memory[2 * index] = *byte;
            memory[2 * index + 1] = *byte;
        }
        memory[28] = 0x57;
        memory[29] = 0x57;
        Model {
            memory,
            command: command::STOP,
            start: 0,
            stop: 0,
            boundary: 0,
            current: 0,
            transmit_page: 0,
            transmit_count: 0,
            transmit_status: 0,
            status: 0,
            mask: 0,
            remote_address: 0,
            remote_count: 0,
            data_config: 0,
            receive_config: 0,
            physical: [0; 6],
            multicast: [0; 8],
            sent: Vec::new(),
            dropped: 0,
            log: Vec::new(),
            clock_ns: 0,
            absent: false,
            no_reset: false,
            no_dma_done: false,
            transmit_fails: false,
            frozen_clock: false,
        }
    }

    fn page(&self) -> u8 {
        self.command >> 6
    }

    fn ring_bytes(&self) -> usize {
        (usize::from(self.stop) - usize::from(self.start)) * PAGE_SIZE
    }

    /// Room in the ring before the chip would overwrite BNRY's page.
    fn room(&self) -> usize {
        if self.stop <= self.start {
            return 0;
        }
        let index = usize::from(self.current) * PAGE_SIZE;
        let boundary = usize::from(self.boundary) * PAGE_SIZE;
        if index < boundary {
            boundary - index
        } else {
            self.ring_bytes() - (index - boundary)
        }
    }

    /// A frame arrives from the wire (what QEMU's receive does).
    fn deliver(&mut self, frame: &[u8]) -> bool {
        if self.command & command::STOP != 0 || self.room() < MAX_FRAME + 4 + 4 {
            self.dropped += 1;
            return false;
        }
        let broadcast = frame[..6] == [0xFF; 6];
        let promiscuous = self.receive_config & RECEIVE_PROMISCUOUS != 0;
        let accepted = promiscuous
            || (broadcast && self.receive_config & 0x04 != 0)
            || frame[..6] == self.physical;
        if !accepted {
            self.dropped += 1;
            return false;
        }
        let mut data = frame.to_vec();
        data.resize(data.len().max(MIN_FRAME), 0);
        let total = data.len() + 4;
        let index = usize::from(self.current) * PAGE_SIZE;
        let mut next = index + ((total + 4 + 255) & !255);
        if next >= usize::from(self.stop) * PAGE_SIZE {
            next -= self.ring_bytes();
        }
        self.memory[index] = RECEIVE_STATUS_OK;
        self.memory[index + 1] = (next >> 8) as u8;
        self.memory[index + 2] = total as u8;
        self.memory[index + 3] = (total >> 8) as u8;
        let mut address = index + 4;
        for byte in data {
            if address == usize::from(self.stop) * PAGE_SIZE {
                address = usize::from(self.start) * PAGE_SIZE;
            }
            self.memory[address] = byte;
            address += 1;
        }
        self.current = (next >> 8) as u8;
        self.status |= isr::RECEIVED;
        true
    }

    /// Overwrite the header of the frame the driver reads next.
    fn corrupt_next_header(&mut self, header: [u8; 4]) {
        let page = if self.boundary + 1 >= self.stop {
            self.start
        } else {
            self.boundary + 1
        };
        let index = usize::from(page) * PAGE_SIZE;
        self.memory[index..index + 4].copy_from_slice(&header);
    }

    fn interrupt_line(&self) -> bool {
        self.status & self.mask & 0x7f != 0
    }

    fn remote_step(&mut self, len: u16) {
        if self.no_dma_done {
            return;
        }
        if self.remote_count <= len {
            self.remote_count = 0;
            self.status |= isr::REMOTE_DMA_DONE;
        } else {
            self.remote_count -= len;
        }
        self.remote_address = self.remote_address.wrapping_add(len);
        if self.remote_address == u16::from(self.stop) << 8 {
            self.remote_address = u16::from(self.start) << 8;
        }
    }

    fn accessible(address: u16) -> bool {
        let address = usize::from(address);
        address < 32 || (0x4000..MEMORY_END - 1).contains(&address)
    }
}

impl Ne2000Ports for &mut Model {
    fn read_register(&mut self, offset: u16) -> u8 {
        self.log.push(Access::Read(offset));
        if self.absent {
            return 0xFF;
        }
        if offset == reg::RESET {
            if !self.no_reset {
                self.status = isr::RESET;
                self.command = command::STOP;
            }
            return 0;
        }
        match (self.page(), offset) {
            (_, 0x00) => self.command,
            (0, 0x03) => self.boundary,
            (0, 0x04) => self.transmit_status,
            (0, 0x07) => self.status,
            (1, 0x01..=0x06) => self.physical[usize::from(offset) - 1],
            (1, 0x07) => self.current,
            (1, 0x08..=0x0f) => self.multicast[usize::from(offset) - 8],
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u16, value: u8) {
        self.log.push(Access::Write(offset, value));
        if offset == reg::RESET {
            return;
        }
        match (self.page(), offset) {
            (_, 0x00) => {
                self.command = value & !command::TRANSMIT;
                if value & command::STOP == 0 {
                    self.status &= !isr::RESET;
                    if value & (command::REMOTE_READ | command::REMOTE_WRITE) != 0
                        && self.remote_count == 0
                    {
                        self.status |= isr::REMOTE_DMA_DONE;
                    }
                    if value & command::TRANSMIT != 0 {
                        let start = usize::from(self.transmit_page) * PAGE_SIZE;
                        let end = start + usize::from(self.transmit_count);
                        if self.transmit_fails {
                            self.transmit_status = 0;
                            self.status |= isr::TRANSMIT_ERROR;
                        } else {
                            if end <= MEMORY_END {
                                self.sent.push(self.memory[start..end].to_vec());
                            }
                            self.transmit_status = TRANSMIT_STATUS_OK;
                            self.status |= isr::TRANSMITTED;
                        }
                    }
                }
            }
            (0, 0x01) => self.start = value,
            (0, 0x02) => self.stop = value,
            (0, 0x03) => self.boundary = value,
            (0, 0x04) => self.transmit_page = value,
            (0, 0x05) => self.transmit_count = self.transmit_count & 0xFF00 | u16::from(value),
            (0, 0x06) => self.transmit_count = self.transmit_count & 0x00FF | u16::from(value) << 8,
            (0, 0x07) => self.status &= !value,
            (0, 0x08) => self.remote_address = self.remote_address & 0xFF00 | u16::from(value),
            (0, 0x09) => self.remote_address = self.remote_address & 0x00FF | u16::from(value) << 8,
            (0, 0x0a) => self.remote_count = self.remote_count & 0xFF00 | u16::from(value),
            (0, 0x0b) => self.remote_count = self.remote_count & 0x00FF | u16::from(value) << 8,
            (0, 0x0c) => self.receive_config = value,
            (0, 0x0e) => self.data_config = value,
            (0, 0x0f) => self.mask = value,
            (1, 0x01..=0x06) => self.physical[usize::from(offset) - 1] = value,
            (1, 0x07) => self.current = value,
            (1, 0x08..=0x0f) => self.multicast[usize::from(offset) - 8] = value,
            _ => {}
        }
    }

    fn read_data(&mut self) -> u16 {
        assert_eq!(self.data_config & 1, 1, "the driver uses word mode");
        let address = self.remote_address & !1;
        let value = if Model::accessible(address) {
            let index = usize::from(address);
            u16::from_le_bytes([self.memory[index], self.memory[index + 1]])
        } else {
            0xFFFF
        };
        self.remote_step(2);
        value
    }

    fn write_data(&mut self, value: u16) {
        if self.remote_count == 0 {
            return;
        }
        let address = self.remote_address & !1;
        if Model::accessible(address) && address >= 0x4000 {
            let index = usize::from(address);
            self.memory[index..index + 2].copy_from_slice(&value.to_le_bytes());
        }
        self.remote_step(2);
    }

    fn now_ns(&mut self) -> u64 {
        if !self.frozen_clock {
            self.clock_ns += 1000;
        }
        self.clock_ns
    }
}

fn frame(to: [u8; 6], len: usize, seed: u8) -> Vec<u8> {
    let mut frame = vec![0u8; len];
    frame[..6].copy_from_slice(&to);
    frame[6..12].copy_from_slice(&[0x52, 0x55, 0x0a, 0x00, 0x02, 0x02]);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    for (index, byte) in frame[14..].iter_mut().enumerate() {
        *byte = seed.wrapping_add(index as u8).wrapping_mul(7);
    }
    frame
}

#[test]
fn probe_reads_the_address_and_sets_up_the_ring() {
    let mut model = Model::new();
    let nic = Ne2000::probe(&mut model).unwrap();
    assert_eq!(nic.mac(), MAC);
    assert_eq!(model.physical, MAC);
    assert_eq!(model.data_config & 1, 1);
    assert_eq!(
        (model.start, model.stop, model.transmit_page),
        (RX_START_PAGE, RX_STOP_PAGE, TX_START_PAGE)
    );
    assert_eq!(model.boundary, RX_STOP_PAGE - 1);
    assert_eq!(model.current, RX_START_PAGE);
    assert_eq!(
        model.command & (command::START | command::STOP),
        command::START
    );
    assert_eq!(model.receive_config, RECEIVE_BROADCAST);
    assert_eq!(
        model.mask,
        isr::RECEIVED | isr::RECEIVE_ERROR | isr::OVERWRITE
    );
    // The chip was reset through the reset port before anything else was
    // programmed, and the PROM read asked for its 32 bytes from 0.
    let reset = model
        .log
        .iter()
        .position(|a| *a == Access::Read(reg::RESET))
        .unwrap();
    assert!(!model.log[..reset]
        .iter()
        .any(|a| matches!(a, Access::Write(..))));
    let window = |needle: &[Access]| model.log.windows(needle.len()).any(|w| w == needle);
    assert!(window(&[
        Access::Write(reg::REMOTE_COUNT_LOW, 32),
        Access::Write(reg::REMOTE_COUNT_HIGH, 0),
        Access::Write(reg::REMOTE_ADDRESS_LOW, 0),
        Access::Write(reg::REMOTE_ADDRESS_HIGH, 0),
        Access::Write(reg::COMMAND, command::REMOTE_READ | command::START),
    ]));
}

#[test]
fn probe_failures_are_reported_and_bounded() {
    let mut model = Model::new();
    model.absent = true;
    assert_eq!(
        Ne2000::probe(&mut model).err(),
        Some(ProbeError::NoController)
    );
    for frozen in [false, true] {
        let mut model = Model::new();
        model.no_reset = true;
        model.frozen_clock = frozen;
        assert_eq!(
            Ne2000::probe(&mut model).err(),
            Some(ProbeError::ResetTimeout)
        );
        assert!(model.log.len() <= 2 * (WAIT_NS / MIN_POLL_NS) as usize + 8);
    }
    let mut model = Model::new();
    model.no_dma_done = true;
    assert_eq!(
        Ne2000::probe(&mut model).err(),
        Some(ProbeError::PromTimeout)
    );
    let mut model = Model::new();
    model.memory[..32].fill(0);
    assert_eq!(
        Ne2000::probe(&mut model).err(),
        Some(ProbeError::BadAddress)
    );
    let mut model = Model::new();
    model.memory[0] = 0x01;
    assert_eq!(
        Ne2000::probe(&mut model).err(),
        Some(ProbeError::BadAddress)
    );
}

#[test]
fn sending_copies_the_frame_and_pads_short_ones() {
    let mut model = Model::new();
    let mut nic = Ne2000::probe(&mut model).unwrap();
    let long = frame([0xFF; 6], MAX_FRAME, 3);
    let odd = frame([0xFF; 6], 101, 9);
    let request = arp::request(MAC, [10, 0, 2, 15], [10, 0, 2, 2]);
    assert!(nic.send(&long));
    assert!(nic.send(&odd));
    assert!(nic.send(&request));
    assert!(!nic.send(&[0u8; 13]));
    assert!(!nic.send(&vec![0u8; MAX_FRAME + 1]));
    let counters = nic.counters();
    assert_eq!(counters.frames_sent, 3);
    assert_eq!(counters.bytes_sent, (MAX_FRAME + 101 + 42) as u64);
    assert_eq!(counters.send_refused, 2);
    assert_eq!(model.sent.len(), 3);
    assert_eq!(model.sent[0], long);
    assert_eq!(model.sent[1], odd);
    assert_eq!(model.sent[2].len(), MIN_FRAME);
    assert_eq!(model.sent[2][..42], request);
    assert!(model.sent[2][42..].iter().all(|b| *b == 0));
}

#[test]
fn send_failures_are_counted() {
    let mut model = Model::new();
    let _ = Ne2000::probe(&mut model).unwrap();
    model.transmit_fails = true;
    let mut nic = Ne2000 {
        ports: &mut model,
        mac: MAC,
        next: RX_START_PAGE,
        counters: Ne2000Counters::default(),
    };
    assert!(!nic.send(&frame([0xFF; 6], 100, 1)));
    assert_eq!(nic.counters().send_errors, 1);
    nic.ports.transmit_fails = false;
    nic.ports.no_dma_done = true;
    nic.ports.frozen_clock = true;
    assert!(!nic.send(&frame([0xFF; 6], 100, 1)));
    assert_eq!(nic.counters().send_errors, 2);
    assert_eq!(nic.counters().timeouts, 1);
    nic.ports.no_dma_done = false;
    assert!(nic.send(&frame([0xFF; 6], 100, 1)));
    assert_eq!(nic.counters().frames_sent, 1);
}

/// A driver and its model, the model reachable between calls.
fn started() -> Model {
    let mut model = Model::new();
    let _ = Ne2000::probe(&mut model).unwrap();
    model
}

fn attach(model: &mut Model) -> Ne2000<&mut Model> {
    Ne2000 {
        ports: model,
        mac: MAC,
        next: RX_START_PAGE,
        counters: Ne2000Counters::default(),
    }
}

#[test]
fn frames_are_received_in_order_across_the_ring_end() {
    let mut model = started();
    let mut nic = attach(&mut model);
    let mut buf = [0u8; 2048];
    assert!(!nic.service());
    assert_eq!(nic.receive(&mut buf), None);
    // The ring holds 122 pages: 300 frames of assorted sizes wrap it
    // several times (each read before the next arrives, or in bursts).
    let mut expected = std::collections::VecDeque::new();
    let mut received = 0;
    for index in 0..300usize {
        let len = [60, 61, 250, 251, 252, 1000, MAX_FRAME][index % 7];
        let sent = frame(MAC, len, index as u8);
        assert!(nic.ports.deliver(&sent), "frame {index} dropped");
        expected.push_back(sent);
        if index % 3 == 0 {
            assert!(nic.service());
            while let Some(len) = nic.receive(&mut buf) {
                let mut want = expected.pop_front().unwrap();
                want.resize(want.len().max(MIN_FRAME), 0);
                assert_eq!(&buf[..len], &want[..], "frame {received}");
                received += 1;
            }
            assert!(expected.is_empty());
        }
    }
    assert!(nic.service());
    while nic.receive(&mut buf).is_some() {
        expected.pop_front();
        received += 1;
    }
    assert_eq!(received, 300);
    assert!(!nic.service());
    let counters = nic.counters();
    assert_eq!(counters.frames_received, 300);
    assert_eq!(counters.bad_headers, 0);
    // Received and acknowledged: the interrupt line is down.
    assert!(!nic.ports.interrupt_line());
}

#[test]
fn a_full_ring_drops_frames_until_the_driver_reads() {
    let mut model = started();
    let mut nic = attach(&mut model);
    let mut accepted = 0;
    for index in 0..40 {
        if nic.ports.deliver(&frame(MAC, MAX_FRAME, index)) {
            accepted += 1;
        }
    }
    // 122 pages of 256 bytes hold 20 full frames (6 pages each) with room
    // kept for one more.
    assert!((18..=20).contains(&accepted), "{accepted}");
    assert!(nic.ports.dropped > 0);
    let mut buf = [0u8; 2048];
    let mut read = 0;
    while nic.receive(&mut buf).is_some() {
        read += 1;
    }
    assert_eq!(read, accepted);
    assert!(nic.ports.deliver(&frame(MAC, MAX_FRAME, 1)));
    assert_eq!(nic.receive(&mut buf), Some(MAX_FRAME));
}

#[test]
fn broadcasts_arrive_and_other_stations_frames_do_not() {
    let mut model = started();
    let mut nic = attach(&mut model);
    assert!(nic.ports.deliver(&frame([0xFF; 6], 100, 1)));
    assert!(!nic.ports.deliver(&frame([0x52, 0x54, 0, 0, 0, 1], 100, 1)));
    let mut buf = [0u8; 2048];
    assert_eq!(nic.receive(&mut buf), Some(100));
    assert_eq!(nic.receive(&mut buf), None);
}

#[test]
fn a_frame_too_large_for_the_buffer_is_skipped() {
    let mut model = started();
    let mut nic = attach(&mut model);
    nic.ports.deliver(&frame(MAC, 1200, 1));
    let small = frame(MAC, 80, 2);
    nic.ports.deliver(&small);
    let mut buf = [0u8; 1000];
    assert_eq!(nic.receive(&mut buf), Some(80));
    assert_eq!(&buf[..80], &small[..]);
    assert_eq!(nic.counters().receive_too_large, 1);
}

#[test]
fn impossible_headers_drop_the_pending_frames() {
    let headers = [
        [0x00, RX_START_PAGE + 1, 100, 0], // status without "received intact"
        [RECEIVE_STATUS_OK, RX_STOP_PAGE, 100, 0], // next page outside the ring
        [RECEIVE_STATUS_OK, 0x10, 100, 0], // next page below the ring
        [RECEIVE_STATUS_OK, RX_START_PAGE + 1, 10, 0], // shorter than a header
        [RECEIVE_STATUS_OK, RX_START_PAGE + 7, 0xFF, 0x7F], // longer than a frame
    ];
    for header in headers {
        let mut model = started();
        let mut nic = attach(&mut model);
        nic.ports.deliver(&frame(MAC, 100, 1));
        nic.ports.deliver(&frame(MAC, 100, 2));
        nic.ports.corrupt_next_header(header);
        let mut buf = [0u8; 2048];
        assert_eq!(nic.receive(&mut buf), None, "{header:?}");
        assert_eq!(nic.counters().bad_headers, 1);
        // Both frames are gone; the ring works on.
        assert_eq!(nic.receive(&mut buf), None);
        let after = frame(MAC, 300, 3);
        assert!(nic.ports.deliver(&after));
        assert_eq!(nic.receive(&mut buf), Some(300), "{header:?}");
        assert_eq!(&buf[..300], &after[..]);
    }
}

#[test]
fn impossible_current_page_restarts_the_ring() {
    let mut model = started();
    let mut nic = attach(&mut model);
    nic.ports.deliver(&frame(MAC, 100, 1));
    nic.ports.current = 0x10;
    nic.ports.corrupt_next_header([0, 0, 0, 0]);
    let mut buf = [0u8; 2048];
    assert_eq!(nic.receive(&mut buf), None);
    assert_eq!(nic.ports.current, RX_START_PAGE);
    assert_eq!(nic.ports.boundary, RX_STOP_PAGE - 1);
    assert!(nic.ports.deliver(&frame(MAC, 100, 2)));
    assert_eq!(nic.receive(&mut buf), Some(100));
}

#[test]
fn service_acknowledges_and_counts_errors() {
    let mut model = started();
    let mut nic = attach(&mut model);
    nic.ports.status |= isr::RECEIVE_ERROR | isr::OVERWRITE | isr::COUNTERS;
    assert!(nic.ports.interrupt_line());
    assert!(!nic.service());
    assert!(!nic.ports.interrupt_line());
    assert_eq!(nic.ports.status & 0x7f, 0);
    let counters = nic.counters();
    assert_eq!((counters.receive_errors, counters.overruns), (1, 1));
}

#[test]
fn arp_request_and_reply() {
    let request = arp::request(MAC, [10, 0, 2, 15], [10, 0, 2, 2]);
    assert_eq!(request[..6], [0xFF; 6]);
    assert_eq!(request[12..14], [0x08, 0x06]);
    assert_eq!(request[38..42], [10, 0, 2, 2]);
    let gateway = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];
    // The reply as the gateway sends it: swapped addresses, opcode 2.
    let mut reply = request;
    reply[0..6].copy_from_slice(&MAC);
    reply[6..12].copy_from_slice(&gateway);
    reply[21] = 2;
    reply[22..28].copy_from_slice(&gateway);
    reply[28..32].copy_from_slice(&[10, 0, 2, 2]);
    reply[32..38].copy_from_slice(&MAC);
    reply[38..42].copy_from_slice(&[10, 0, 2, 15]);
    assert_eq!(
        arp::reply_about(&reply, [10, 0, 2, 2], [10, 0, 2, 15]),
        Some(gateway)
    );
    assert_eq!(
        arp::reply_about(&reply, [10, 0, 2, 3], [10, 0, 2, 15]),
        None
    );
    assert_eq!(
        arp::reply_about(&request, [10, 0, 2, 2], [10, 0, 2, 15]),
        None
    );
    assert_eq!(
        arp::reply_about(&reply[..41], [10, 0, 2, 2], [10, 0, 2, 15]),
        None
    );
}

#[test]
fn as_the_nic_hosts_backend() {
    use crate::net::NetBackend;
    let mut model = started();
    let mut buf = [0u8; 2048];
    {
        let mut backend: alloc::boxed::Box<dyn NetBackend + Send + '_> =
            alloc::boxed::Box::new(attach(&mut model));
        assert!(!backend.poll());
        backend.transmit(&frame([0xFF; 6], 200, 5));
        assert_eq!(backend.receive(&mut buf), None);
    }
    assert_eq!(model.sent, vec![frame([0xFF; 6], 200, 5)]);
    let incoming = frame(MAC, 400, 6);
    model.deliver(&incoming);
    let mut backend = attach(&mut model);
    assert!(NetBackend::poll(&mut backend));
    assert_eq!(NetBackend::receive(&mut backend, &mut buf), Some(400));
    assert_eq!(&buf[..400], &incoming[..]);
    assert!(!NetBackend::poll(&mut backend));
}

#[test]
fn promiscuous_mode_takes_other_stations_frames() {
    let mut model = started();
    let mut nic = attach(&mut model);
    // The synthetic NIC's address, which the NE2000 bridges.
    let guest = [0x00, 0x15, 0x5d, 0x00, 0x00, 0x01];
    assert!(!nic.ports.deliver(&frame(guest, 100, 1)));
    nic.set_promiscuous(true);
    assert!(nic.ports.deliver(&frame(guest, 100, 2)));
    assert!(nic.ports.deliver(&frame([0xFF; 6], 100, 3)));
    assert_eq!(nic.ports.multicast, [0xFF; 8]);
    assert_eq!(nic.ports.command >> 6, 0, "left on page 0");
    let mut buf = [0u8; 2048];
    assert_eq!(nic.receive(&mut buf), Some(100));
    assert_eq!(&buf[..100], &frame(guest, 100, 2)[..]);
    assert_eq!(nic.receive(&mut buf), Some(100));
    nic.set_promiscuous(false);
    assert!(!nic.ports.deliver(&frame(guest, 100, 4)));
    assert!(nic.ports.deliver(&frame(MAC, 100, 5)));
}
