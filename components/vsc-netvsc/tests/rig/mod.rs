//! The initiator and real `vmbus-channel` rings against hvsim's NIC host
//! (`hvsim::channel::network`, netvsp) in one process: guest memory, the
//! channels' rings in it, the receive and send buffers as GPADLs the host
//! resolves, a client data region the host reads GPA-direct, and the
//! host's `MemoryNet` backend as the far end of the wire. Shared by the
//! in-process tests and the driver-alone benchmark.
#![allow(dead_code)]

use hv_interface::{check_atomic_u32, check_range, GuestMemory, OutOfRange};
use hvsim::channel::network::{NetConfig, NetController, NetFault};
use hvsim::channel::ChannelEndpoint;
use hvsim::net::{GuestFrames, MemoryNet, MemoryNetHandle};
use hvsim::vmbus::DeviceKind;
use std::sync::atomic::{AtomicU32, Ordering};
use vmbus_channel::{ChannelError, DataChannel, ReceiveBuffer, Received, Refusal, SharedBuffer};
use vmbus_protocol::nvsp;
use vmbus_ring::{MemoryError, RingError, RingMemory, RingReader, RingWriter};
use vsc_netvsc::initiator::{
    Buffers, Config, Device, Event, Initiator, Output, Tag, TxRefused, TxRequest, MAX_SLOTS,
};

pub const PAGE: u64 = 4096;
const RING_DATA_PAGES: u64 = 32;
/// Channel k's out ring: pages STRIDE*k.., its in ring right after.
const STRIDE: u64 = 2 * (1 + RING_DATA_PAGES);
pub const CHANNELS: usize = 3;
pub const RECEIVE_PAGE: u64 = STRIDE * CHANNELS as u64;
pub const RECEIVE_PAGES: u64 = 256;
pub const SEND_PAGE: u64 = RECEIVE_PAGE + RECEIVE_PAGES;
pub const SEND_PAGES: u64 = 128;
/// The client's data region: `FRAMES` buffers of 2048 bytes.
pub const DATA_PAGE: u64 = SEND_PAGE + SEND_PAGES;
pub const FRAMES: u64 = 256;
pub const DATA_PAGES: u64 = FRAMES / 2;
const MEMORY_PAGES: u64 = DATA_PAGE + DATA_PAGES;
const RECEIVE_GPADL: u32 = 0x10;
const SEND_GPADL: u32 = 0x11;
pub const BUFFER: u64 = 2048;

/// Guest memory in this process's heap, moved a word at a time (hvsim's
/// `VecMemory` moves a byte at a time with a compare-and-swap each, which
/// would make the benchmark measure that). Words are atomics so the ring
/// control words behave as in a shared mapping.
pub struct FastMemory {
    words: Vec<AtomicU32>,
}

impl FastMemory {
    pub fn new(size: usize) -> Self {
        FastMemory {
            words: (0..size.div_ceil(4)).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    pub fn word(&self, gpa: u64) -> Option<&AtomicU32> {
        check_atomic_u32(self.size(), gpa).ok()?;
        self.words.get(gpa as usize / 4)
    }

    fn set_byte(&self, index: usize, value: u8) {
        let shift = (index % 4) * 8;
        let _ = self.words[index / 4].fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
            Some((old & !(0xFF << shift)) | (u32::from(value) << shift))
        });
    }
}

impl GuestMemory for FastMemory {
    fn size(&self) -> u64 {
        self.words.len() as u64 * 4
    }
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        check_range(self.size(), gpa, buf.len() as u64)?;
        let mut at = gpa as usize;
        let mut rest = &mut buf[..];
        while !rest.is_empty() {
            let word = self.words[at / 4].load(Ordering::Acquire).to_le_bytes();
            let skip = at % 4;
            let take = (4 - skip).min(rest.len());
            rest[..take].copy_from_slice(&word[skip..skip + take]);
            rest = &mut rest[take..];
            at += take;
        }
        Ok(())
    }
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), OutOfRange> {
        check_range(self.size(), gpa, data.len() as u64)?;
        let mut at = gpa as usize;
        let mut rest = data;
        while !rest.is_empty() {
            if at.is_multiple_of(4) && rest.len() >= 4 {
                let word = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                self.words[at / 4].store(word, Ordering::Release);
                rest = &rest[4..];
                at += 4;
            } else {
                self.set_byte(at, rest[0]);
                rest = &rest[1..];
                at += 1;
            }
        }
        Ok(())
    }
    fn load_u32(&self, gpa: u64) -> Result<u32, OutOfRange> {
        check_atomic_u32(self.size(), gpa)?;
        Ok(self.words[gpa as usize / 4].load(Ordering::SeqCst))
    }
    fn store_u32(&self, gpa: u64, value: u32) -> Result<(), OutOfRange> {
        check_atomic_u32(self.size(), gpa)?;
        self.words[gpa as usize / 4].store(value, Ordering::SeqCst);
        Ok(())
    }
    fn fetch_or_u32(&self, gpa: u64, bits: u32) -> Result<u32, OutOfRange> {
        check_atomic_u32(self.size(), gpa)?;
        Ok(self.words[gpa as usize / 4].fetch_or(bits, Ordering::SeqCst))
    }
    fn fetch_and_u32(&self, gpa: u64, bits: u32) -> Result<u32, OutOfRange> {
        check_atomic_u32(self.size(), gpa)?;
        Ok(self.words[gpa as usize / 4].fetch_and(bits, Ordering::SeqCst))
    }
}

pub struct GuestRing {
    memory: &'static FastMemory,
    control: u64,
    data: u64,
}

impl RingMemory for GuestRing {
    fn control(&self, offset: usize) -> Result<&AtomicU32, MemoryError> {
        self.memory
            .word(self.control + offset as u64)
            .ok_or(MemoryError)
    }
    fn data_len(&self) -> usize {
        (RING_DATA_PAGES * PAGE) as usize
    }
    fn double_mapped(&self) -> bool {
        false
    }
    fn read_data(&self, offset: usize, out: &mut [u8]) -> Result<(), MemoryError> {
        self.memory
            .read(self.data + offset as u64, out)
            .map_err(|_| MemoryError)
    }
    fn write_data(&self, offset: usize, data: &[u8]) -> Result<(), MemoryError> {
        self.memory
            .write(self.data + offset as u64, data)
            .map_err(|_| MemoryError)
    }
}

/// What the initiator reaches: guest memory, the client's frames (in the
/// data region, one 2048-byte buffer per token) and what was delivered.
pub struct Memory {
    pub memory: &'static FastMemory,
    pub frame_lens: Vec<u32>,
    pub delivered: Vec<(u8, Vec<u8>, bool)>,
    /// Keep delivered frames (the benchmark only counts them).
    pub keep: bool,
    pub delivered_count: u64,
    pub delivered_bytes: u64,
    pub client_has_buffers: bool,
}

impl Buffers for Memory {
    fn read_receive(&mut self, offset: u32, out: &mut [u8]) -> bool {
        self.memory
            .read(RECEIVE_PAGE * PAGE + u64::from(offset), out)
            .is_ok()
    }
    fn write_send(&mut self, offset: u32, bytes: &[u8]) -> bool {
        self.memory
            .write(SEND_PAGE * PAGE + u64::from(offset), bytes)
            .is_ok()
    }
    fn peek_frame(&mut self, token: u32, out: &mut [u8]) -> bool {
        self.memory
            .read(DATA_PAGE * PAGE + u64::from(token) * BUFFER, out)
            .is_ok()
    }
    fn copy_frame(&mut self, token: u32, offset: u32, len: u32) -> bool {
        let mut frame = [0u8; 2048];
        let frame = &mut frame[..len as usize];
        self.peek_frame(token, frame) && self.write_send(offset, frame)
    }
    fn deliver(&mut self, lane: u8, frame: &[u8], checksum_verified: bool) -> bool {
        if !self.client_has_buffers {
            return false;
        }
        // Into the client's buffer, as the component does (the benchmark
        // counts this copy).
        let mut buffer = [0u8; 2048];
        buffer[..frame.len()].copy_from_slice(frame);
        self.delivered_count += 1;
        self.delivered_bytes += frame.len() as u64;
        if self.keep {
            self.delivered
                .push((lane, buffer[..frame.len()].to_vec(), checksum_verified));
        }
        true
    }
}

struct Lane {
    relid: u32,
    endpoint: ChannelEndpoint,
    channel: DataChannel<GuestRing, Tag, MAX_SLOTS>,
}

pub struct Rig {
    pub memory: &'static FastMemory,
    pub controller: NetController,
    pub net: MemoryNetHandle,
    lanes: Vec<Lane>,
    pub initiator: Initiator,
    pub mem: Memory,
    pub events: Vec<Event>,
    pub tx_done: Vec<(u32, bool)>,
    /// Channel refusals of host packets (the channel layer's own).
    pub channel_refusals: Vec<Refusal>,
    pub now_ns: u64,
    /// Guest -> host signals the rings asked for.
    pub guest_signals: u64,
    /// Host -> guest interrupts the host raised.
    pub host_interrupts: u64,
    receive: SharedBuffer,
    send: SharedBuffer,
    data: SharedBuffer,
}

pub fn config() -> Config {
    Config {
        sub_channels: (CHANNELS - 1) as u16,
        receive_buffer_bytes: (RECEIVE_PAGES * PAGE) as u32,
        send_buffer_bytes: (SEND_PAGES * PAGE) as u32,
        request_timeout_ns: 1_000_000_000,
        keepalive_ns: 3_000_000_000,
        ..Config::default()
    }
}

impl Rig {
    pub fn new(host: NetConfig, config: Config) -> Rig {
        Self::with_frames(host, config, GuestFrames::Keep)
    }

    pub fn with_frames(host: NetConfig, config: Config, frames: GuestFrames) -> Rig {
        let memory: &'static FastMemory =
            Box::leak(Box::new(FastMemory::new((MEMORY_PAGES * PAGE) as usize)));
        let (net, handle) = MemoryNet::new(4096, frames);
        let mut controller = NetController::new(host);
        controller.set_backend(Box::new(net));
        let mut rig = Rig {
            memory,
            controller,
            net: handle,
            lanes: Vec::new(),
            initiator: Initiator::new(config),
            mem: Memory {
                memory,
                frame_lens: vec![0; FRAMES as usize],
                delivered: Vec::new(),
                keep: true,
                delivered_count: 0,
                delivered_bytes: 0,
                client_has_buffers: true,
            },
            events: Vec::new(),
            tx_done: Vec::new(),
            channel_refusals: Vec::new(),
            now_ns: 0,
            guest_signals: 0,
            host_interrupts: 0,
            receive: SharedBuffer::new(
                RECEIVE_PAGE * PAGE,
                (RECEIVE_PAGES * PAGE) as usize,
                RECEIVE_GPADL,
            )
            .unwrap(),
            send: SharedBuffer::new(SEND_PAGE * PAGE, (SEND_PAGES * PAGE) as usize, SEND_GPADL)
                .unwrap(),
            data: SharedBuffer::new(DATA_PAGE * PAGE, (DATA_PAGES * PAGE) as usize, 0).unwrap(),
        };
        rig.open_lane();
        rig.initiator.start(RECEIVE_GPADL, SEND_GPADL, 0);
        rig
    }

    fn open_lane(&mut self) {
        let index = self.lanes.len() as u64;
        let base = index * STRIDE;
        let out_pages: Vec<u64> = (base..base + 1 + RING_DATA_PAGES).collect();
        let in_pages: Vec<u64> = (base + 1 + RING_DATA_PAGES..base + STRIDE).collect();
        let mut endpoint = ChannelEndpoint::new(
            DeviceKind::Network,
            1 + index as u32,
            &out_pages,
            &in_pages,
            self.memory,
            0,
        );
        endpoint
            .gpadls
            .insert(RECEIVE_GPADL, (RECEIVE_PAGE..SEND_PAGE).collect());
        endpoint
            .gpadls
            .insert(SEND_GPADL, (SEND_PAGE..DATA_PAGE).collect());
        let writer = RingWriter::new(
            GuestRing {
                memory: self.memory,
                control: base * PAGE,
                data: (base + 1) * PAGE,
            },
            true,
        )
        .unwrap();
        let reader = RingReader::new(GuestRing {
            memory: self.memory,
            control: (base + 1 + RING_DATA_PAGES) * PAGE,
            data: (base + 2 + RING_DATA_PAGES) * PAGE,
        })
        .unwrap();
        let mut channel = DataChannel::new(writer, reader);
        channel.set_receive_buffer(Some(ReceiveBuffer {
            buffer: self.receive,
            transfer_page_set_id: nvsp::RECEIVE_BUFFER_ID,
        }));
        let relid = 30 + index as u32;
        self.controller.channel_opened(index as u16, relid);
        self.lanes.push(Lane {
            relid,
            endpoint,
            channel,
        });
        if index > 0 {
            self.initiator.lane_opened(index as u8);
        }
    }

    /// Put a client frame in buffer `token`.
    pub fn put_frame(&mut self, token: u32, frame: &[u8]) {
        self.memory
            .write(DATA_PAGE * PAGE + u64::from(token) * BUFFER, frame)
            .unwrap();
        self.mem.frame_lens[token as usize] = frame.len() as u32;
    }

    pub fn transmit(&mut self, token: u32, checksum_offload: bool) -> Result<(), TxRefused> {
        let request = TxRequest {
            token,
            len: self.mem.frame_lens[token as usize],
            checksum_offload,
            flow_hash: token,
        };
        self.initiator.transmit(request, &mut self.mem)
    }

    /// Put the initiator's outputs on the rings; whether any went.
    pub fn send_outputs(&mut self) -> bool {
        let mut moved = false;
        while let Some(output) = self.initiator.front().copied() {
            let lane = (output.lane() as usize).min(self.lanes.len() - 1);
            let channel = &mut self.lanes[lane].channel;
            let result = match output {
                Output::InBand { tag, message, .. } => channel
                    .send_in_band(&message, tag)
                    .map(|s| s.signal.0)
                    .map_err(|e| e.error),
                Output::Direct {
                    tag,
                    message,
                    header_offset,
                    header_len,
                    token,
                    frame_len,
                    ..
                } => {
                    let header = self
                        .send
                        .slice(header_offset as usize, header_len as usize)
                        .unwrap();
                    let frame = self
                        .data
                        .slice((u64::from(token) * BUFFER) as usize, frame_len as usize)
                        .unwrap();
                    channel
                        .send_page_buffer(&[header, frame], &message, Some(tag))
                        .map(|s| s.signal.0)
                        .map_err(|e| e.error)
                }
                Output::Completion {
                    transaction_id,
                    message,
                    ..
                } => channel
                    .send_completion(transaction_id, &message)
                    .map(|s| s.0),
            };
            match result {
                Ok(signal) => {
                    self.guest_signals += u64::from(signal);
                    self.initiator.pop_sent();
                    moved = true;
                }
                Err(ChannelError::Ring(RingError::Full { .. })) => return moved,
                Err(error) => panic!("send failed: {error:?}"),
            }
        }
        moved
    }

    /// The host's step on every channel.
    pub fn host_step(&mut self) -> bool {
        let mut moved = false;
        for (index, lane) in self.lanes.iter_mut().enumerate() {
            lane.endpoint.step(self.memory, 1, self.now_ns);
            let packets = std::mem::take(&mut lane.endpoint.storage_inbox);
            moved |= !packets.is_empty();
            if self.controller.serve(
                &mut lane.endpoint,
                self.memory,
                lane.relid,
                index as u16,
                packets,
            ) {
                self.host_interrupts += 1;
                moved = true;
            }
        }
        moved
    }

    /// Read every channel's in ring into the initiator.
    pub fn guest_drain(&mut self) -> bool {
        let mut moved = false;
        let mut packet = [0u8; 8192];
        for lane_index in 0..self.lanes.len() {
            for _ in 0..100_000 {
                let channel = &mut self.lanes[lane_index].channel;
                let received = channel.receive(&mut packet);
                match received {
                    Ok(Some(Received::Completion {
                        context, payload, ..
                    })) => self
                        .initiator
                        .on_completion(context, payload, &mut self.mem),
                    Ok(Some(Received::InBand { payload, .. })) => {
                        self.initiator.on_in_band(payload)
                    }
                    Ok(Some(Received::TransferPages {
                        transaction_id,
                        ranges,
                        payload,
                        ..
                    })) => self.initiator.on_receive(
                        lane_index as u8,
                        transaction_id,
                        payload,
                        ranges.iter().map(|r| (r.offset, r.len)),
                        &mut self.mem,
                    ),
                    Ok(None) => break,
                    Err(ChannelError::Refused(
                        refusal @ Refusal::Transfer { transaction_id, .. },
                    )) => {
                        self.channel_refusals.push(refusal);
                        self.initiator
                            .on_receive_refused(lane_index as u8, transaction_id)
                    }
                    Err(ChannelError::Refused(refusal)) => self.channel_refusals.push(refusal),
                    Err(error) => panic!("in ring: {error:?}"),
                }
                moved = true;
            }
            let channel = &mut self.lanes[lane_index].channel;
            let _ = channel.reader().finish_batch();
        }
        moved
    }

    fn take_events(&mut self) -> bool {
        let mut moved = false;
        while let Some(event) = self.initiator.pop_event() {
            moved = true;
            match event {
                Event::TxDone { token, sent } => self.tx_done.push((token, sent)),
                Event::SubChannels(count) => {
                    for _ in 0..count.min((CHANNELS - 1) as u16) {
                        self.open_lane();
                    }
                    self.events.push(event);
                }
                other => self.events.push(other),
            }
        }
        moved
    }

    /// Until nothing moves: outputs onto the rings, the host's steps, the
    /// guest's reads, the events.
    pub fn run(&mut self) {
        for _ in 0..100_000 {
            let mut moved = self.send_outputs();
            moved |= self.host_step();
            moved |= self.guest_drain();
            moved |= self.take_events();
            if !moved {
                return;
            }
        }
        panic!("the exchange never settles");
    }

    pub fn tick(&mut self, now_ns: u64) {
        self.now_ns = now_ns;
        self.initiator.tick(now_ns, &mut self.mem);
        self.run();
    }

    pub fn device(&self) -> Option<Device> {
        self.events.iter().find_map(|e| match e {
            Event::Up(device) => Some(*device),
            _ => None,
        })
    }

    pub fn inject(&mut self, fault: NetFault) {
        self.controller.inject(fault);
    }

    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    pub fn channel_stats(&self, lane: usize) -> vmbus_channel::ChannelStats {
        *self.lanes[lane].channel.stats()
    }
}

/// A frame of `len` bytes: broadcast-free unicast to the host's MAC...
/// any bytes do: the host's filter takes directed frames to the guest's
/// MAC, and what the guest sends goes out as it is.
pub fn frame(len: usize, to: [u8; 6], seed: u32) -> Vec<u8> {
    let mut frame: Vec<u8> = (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed)
                .to_le_bytes()[2]
        })
        .collect();
    frame[..6].copy_from_slice(&to);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    frame[12] = 0x08;
    frame[13] = 0x06;
    frame
}
