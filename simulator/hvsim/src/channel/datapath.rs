//! The host's side of the data-path test device
//! (`vmbus_protocol::datapath_test`): every byte the guest sends, in band
//! or through its GPADLs (page buffer or multi-page), is compared with the
//! pattern and the packet completed with a verdict; on the guest's request
//! the host streams in-band packets and transfer-page packets (into the
//! guest's receive buffer GPADL) with the pattern, and counts the
//! guest's verdicts. The receive buffer is reused only for packets the
//! guest completed: at most a window of transfer-page packets is in flight.

use super::{ChannelEndpoint, ReceivedPacket};
use crate::data_path::HostReceiveBuffer;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use hv_interface::GuestMemory;
use hyperv_defs::PAGE_SIZE;
use vmbus_protocol::datapath_test::{self as test, op, StreamRequest, TestHeader, Verdict};
use vmbus_protocol::packet::PacketType;
use zerocopy::{FromBytes, IntoBytes};

/// Packets and bytes the host streams at most per request (a hostile or
/// broken guest cannot make the host allocate without bound).
const MAX_STREAM_PACKETS: u32 = 4096;
const MAX_STREAM_LEN: u32 = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sent {
    InBand,
    Transfer,
}

#[derive(Clone, Copy, Debug, Default)]
struct Stream {
    in_band_left: u32,
    transfer_left: u32,
    len: u32,
    ranges: u32,
    seed: u64,
    window: u32,
}

/// What the host checked and sent on a data-path test channel.
#[derive(Clone, Debug, Default)]
pub struct DataPathHost {
    /// Guest packets checked per kind: in band, GPA direct.
    pub in_band_checked: u64,
    pub gpa_direct_checked: u64,
    pub bytes_checked: u64,
    /// Bytes that differed from the pattern (or were missing), and
    /// malformed test messages.
    pub errors: u64,
    pub in_band_sent: u64,
    pub transfers_sent: u64,
    /// The guest's verdicts on what the host sent.
    pub guest_completions: u64,
    pub guest_bytes_checked: u64,
    pub guest_errors: u64,
    /// The guest asked for the report (the script runner prints it and
    /// clears this).
    pub report_requested: bool,
    /// Sub-channels the guest asked for (`op::CREATE_SUB_CHANNELS`):
    /// the bus (`Vmbus::step_channels`) offers them and clears this.
    pub sub_channels_requested: Option<u16>,
    stream: Option<Stream>,
    outstanding: BTreeMap<u64, Sent>,
    transfers_in_flight: u32,
}

impl ChannelEndpoint {
    pub(super) fn datapath_packet<M: GuestMemory>(
        &mut self,
        memory: &M,
        packet: ReceivedPacket,
    ) -> bool {
        if packet.packet_type == PacketType::Completion.wire() {
            self.datapath_guest_completion(&packet);
            return false;
        }
        let Ok((header, rest)) = TestHeader::read_from_prefix(&packet.payload) else {
            self.datapath.errors += 1;
            return self.datapath_complete(memory, &packet, 0, 0, 1);
        };
        let len = header.len.get();
        let seed = header.seed.get();
        match header.op.get() {
            op::IN_BAND => {
                let data = rest.get(..len as usize).unwrap_or(rest);
                let errors = test::mismatches(seed, 0, data) + (len - data.len() as u32);
                self.datapath.in_band_checked += 1;
                self.datapath_complete(memory, &packet, header.op.get(), data.len() as u32, errors)
            }
            op::GPA_DIRECT => {
                if packet.outside_gpadls {
                    // Counted as a rule violation; nothing read, no completion.
                    return false;
                }
                let data = &packet.data;
                let errors =
                    test::mismatches(seed, 0, data) + (len as usize).abs_diff(data.len()) as u32;
                self.datapath.gpa_direct_checked += 1;
                self.datapath_complete(memory, &packet, header.op.get(), data.len() as u32, errors)
            }
            op::START_HOST_STREAM => {
                let accepted = StreamRequest::read_from_prefix(rest)
                    .ok()
                    .map(|(request, _)| request)
                    .filter(|request| self.datapath_start(request, len, seed));
                let errors = u32::from(accepted.is_none());
                let signal = self.datapath_complete(memory, &packet, header.op.get(), 0, errors);
                signal | self.datapath_pump(memory)
            }
            op::CREATE_SUB_CHANNELS => {
                let count = u16::try_from(len)
                    .ok()
                    .filter(|count| (1..=crate::vmbus::MAX_DEVICE_SUB_CHANNELS).contains(count));
                self.datapath.sub_channels_requested = count;
                let errors = u32::from(count.is_none());
                self.datapath_complete(memory, &packet, header.op.get(), 0, errors)
            }
            op::REPORT => {
                self.datapath.report_requested = true;
                // The totals so far, not counted again.
                let verdict = Verdict {
                    op: op::REPORT.into(),
                    bytes_checked: (self.datapath.bytes_checked.min(u32::MAX as u64) as u32).into(),
                    errors: (self.datapath.errors.min(u32::MAX as u64) as u32).into(),
                    reserved: 0.into(),
                };
                packet.completion_requested
                    && self.send_completion(memory, packet.transaction_id, verdict.as_bytes())
            }
            _ => self.datapath_complete(memory, &packet, header.op.get(), 0, 1),
        }
    }

    fn datapath_complete<M: GuestMemory>(
        &mut self,
        memory: &M,
        packet: &ReceivedPacket,
        op: u32,
        bytes_checked: u32,
        errors: u32,
    ) -> bool {
        self.datapath.bytes_checked += u64::from(bytes_checked);
        self.datapath.errors += u64::from(errors);
        if !packet.completion_requested {
            return false;
        }
        let verdict = Verdict {
            op: op.into(),
            bytes_checked: bytes_checked.into(),
            errors: errors.into(),
            reserved: 0.into(),
        };
        self.send_completion(memory, packet.transaction_id, verdict.as_bytes())
    }

    fn datapath_guest_completion(&mut self, packet: &ReceivedPacket) {
        let Some(sent) = self.datapath.outstanding.remove(&packet.transaction_id) else {
            self.stats.unknown_responses += 1;
            return;
        };
        if sent == Sent::Transfer {
            self.datapath.transfers_in_flight = self.datapath.transfers_in_flight.saturating_sub(1);
        }
        self.datapath.guest_completions += 1;
        match Verdict::read_from_prefix(&packet.payload) {
            Ok((verdict, _)) => {
                self.datapath.guest_bytes_checked += u64::from(verdict.bytes_checked.get());
                self.datapath.guest_errors += u64::from(verdict.errors.get());
            }
            Err(_) => self.datapath.guest_errors += 1,
        }
    }

    /// Accept a stream request if its receive buffer is one of the
    /// channel's GPADLs and one packet's ranges fit it.
    fn datapath_start(&mut self, request: &StreamRequest, len: u32, seed: u64) -> bool {
        let count = request.count.get();
        let ranges = request.ranges.get();
        let Some(pages) = self.gpadls.pages(request.receive_gpadl.get()) else {
            return false;
        };
        let buffer_len = pages.len() as u64 * PAGE_SIZE;
        if count > MAX_STREAM_PACKETS
            || len == 0
            || len > MAX_STREAM_LEN
            || ranges == 0
            || ranges > len
            || ranges > 16
        {
            return false;
        }
        // Each range's data starts on an 8-byte boundary of the buffer.
        let footprint = u64::from(len) + 8 * u64::from(ranges);
        let window = (buffer_len / footprint).saturating_sub(1);
        if window == 0
            || self
                .datapath
                .stream
                .is_some_and(|s| s.in_band_left + s.transfer_left > 0)
        {
            return false;
        }
        self.receive_buffer = Some(HostReceiveBuffer {
            gpadl_id: request.receive_gpadl.get(),
            transfer_page_set_id: request.transfer_page_set_id.get() as u16,
            cursor: 0,
        });
        self.datapath.stream = Some(Stream {
            in_band_left: count,
            transfer_left: count,
            len,
            ranges,
            seed,
            window: window.min(u32::MAX as u64) as u32,
        });
        true
    }

    /// Send what the stream still owes: in-band packets until one does
    /// not fit the ring (it is deferred, and the rest wait for the
    /// guest to make room: a copy of at most one packet per channel is
    /// held, which keeps the host's heap bounded with several channels
    /// streaming), transfer-page packets while fewer than the window are
    /// not completed.
    pub(super) fn datapath_pump<M: GuestMemory>(&mut self, memory: &M) -> bool {
        let Some(mut stream) = self.datapath.stream else {
            return false;
        };
        let mut signal = false;
        while stream.in_band_left > 0 && self.deferred.is_empty() && self.broken.is_none() {
            let transaction_id = self.next_transaction;
            self.next_transaction += 1;
            let header = TestHeader {
                op: op::HOST_IN_BAND.into(),
                len: stream.len.into(),
                seed: (stream.seed ^ transaction_id).into(),
            };
            let mut payload = header.as_bytes().to_vec();
            let start = payload.len();
            payload.resize(start + stream.len as usize, 0);
            test::fill(stream.seed ^ transaction_id, 0, &mut payload[start..]);
            self.datapath
                .outstanding
                .insert(transaction_id, Sent::InBand);
            signal |= self.send_in_band(memory, transaction_id, true, &payload);
            self.datapath.in_band_sent += 1;
            stream.in_band_left -= 1;
        }
        while stream.transfer_left > 0
            && self.datapath.transfers_in_flight < stream.window
            && self.broken.is_none()
        {
            let transaction_id = self.next_transaction;
            self.next_transaction += 1;
            let mut data = alloc::vec![0u8; stream.len as usize];
            test::fill(stream.seed ^ transaction_id, 0, &mut data);
            let piece = (stream.len as usize).div_ceil(stream.ranges as usize);
            let chunks: Vec<&[u8]> = data.chunks(piece).collect();
            self.datapath
                .outstanding
                .insert(transaction_id, Sent::Transfer);
            match self.send_transfer_pages(memory, transaction_id, &chunks) {
                Some(wanted) => signal |= wanted,
                None => {
                    // The receive buffer went away (torn down): stop.
                    self.datapath.outstanding.remove(&transaction_id);
                    self.datapath.errors += 1;
                    stream.transfer_left = 0;
                    break;
                }
            }
            self.datapath.transfers_sent += 1;
            self.datapath.transfers_in_flight += 1;
            stream.transfer_left -= 1;
        }
        self.datapath.stream = Some(stream);
        signal
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_scenario_names_the_protocol_class() {
        assert_eq!(
            crate::scenario::DATAPATH_TEST_CLASS,
            vmbus_protocol::datapath_test::CLASS.as_u128()
        );
    }
}
