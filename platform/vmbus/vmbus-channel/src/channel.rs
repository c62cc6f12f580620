//! [`DataChannel`]: the two rings of an open channel, the transaction table
//! and the receive buffer, with the three send shapes and a receive that
//! refuses (and counts) whatever the host may not send.

use crate::buffer::{BufferError, BufferSlice, ReceiveBuffer, ReceivedRanges, TransferError};
use vmbus_protocol::packet::{PacketError, PacketKind};
use vmbus_ring::{
    GpaRange, RingError, RingMemory, RingReader, RingWriter, Signal, TransactionError,
    TransactionTable,
};

/// Page-buffer entries per packet (Linux's MAX_PAGE_BUFFER_COUNT is 32;
/// the ring writer takes up to 64).
pub const MAX_PAGE_BUFFER_ENTRIES: usize = 64;
/// GPA ranges per multi-page packet.
pub const MAX_MULTI_PAGE_RANGES: usize = 32;
/// PFNs in all ranges of a multi-page packet (1 MiB of 4 KiB pages).
pub const MAX_MULTI_PAGE_PFNS: usize = 256;

/// What [`DataChannel::end_round`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct RoundEnd {
    /// Reading freed the space the host's `pending_send_sz` waits for:
    /// signal the host.
    pub signal_host: bool,
    /// Packets arrived that no interrupt will announce: drain again.
    pub more: bool,
}

/// Why a host packet was refused. The packet has been consumed and
/// counted; the channel goes on with the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A completion for an ID this channel never issued.
    UnknownCompletion(u64),
    /// A completion for an ID issued earlier that is no longer outstanding
    /// (completed already, or failed by a reset).
    StaleCompletion(u64),
    /// A transfer-page packet naming bytes outside the receive buffer (or
    /// another set, or with no receive buffer): none of it was read. The
    /// transaction ID is there so the driver can complete it with an error
    /// in its device protocol.
    Transfer {
        transaction_id: u64,
        error: TransferError,
    },
    /// The host sent a GPA-direct packet: only guests send those.
    GpaDirectFromHost,
    /// The copied packet failed validation.
    BadPacket(PacketError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelError {
    /// The ring refused (full: retry once signalled; corrupt: tear down).
    Ring(RingError),
    /// A host packet was refused (see [`Refusal`]).
    Refused(Refusal),
    /// Every transaction slot is in use.
    TooManyOutstanding,
    /// A slice does not fit the send shape's limits.
    TooManyPages,
    /// A buffer or slice was refused.
    Buffer(BufferError),
}

impl From<RingError> for ChannelError {
    fn from(error: RingError) -> Self {
        ChannelError::Ring(error)
    }
}

impl From<BufferError> for ChannelError {
    fn from(error: BufferError) -> Self {
        ChannelError::Buffer(error)
    }
}

/// A send that failed: why, and the request's context back (nothing was
/// left outstanding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendError<T> {
    pub error: ChannelError,
    pub context: Option<T>,
}

/// A packet written: its transaction ID if a completion was requested, and
/// whether to signal the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct Sent {
    pub transaction_id: Option<u64>,
    pub signal: Signal,
}

/// A host packet, validated.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a, T> {
    InBand {
        transaction_id: u64,
        completion_requested: bool,
        payload: &'a [u8],
    },
    /// The completion of one of our requests, with the request's context.
    Completion {
        transaction_id: u64,
        context: T,
        payload: &'a [u8],
    },
    /// Data in the receive buffer: every range lies inside it. The driver
    /// copies the bytes out of its receive region, then completes
    /// `transaction_id` so the host may reuse them.
    TransferPages {
        transaction_id: u64,
        completion_requested: bool,
        ranges: ReceivedRanges<'a>,
        payload: &'a [u8],
    },
}

/// What the channel counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelStats {
    pub sent_in_band: u64,
    pub sent_page_buffer: u64,
    pub sent_multi_page: u64,
    pub sent_completions: u64,
    pub received_in_band: u64,
    pub received_completions: u64,
    pub received_transfer_pages: u64,
    pub refused_unknown_completions: u64,
    pub refused_stale_completions: u64,
    pub refused_transfer_outside: u64,
    pub refused_transfer_wrong_set: u64,
    pub refused_transfer_without_buffer: u64,
    pub refused_gpa_direct: u64,
    pub refused_bad_packets: u64,
    /// Signals the sends asked for.
    pub signals_requested: u64,
}

impl ChannelStats {
    /// Every packet the host sent that was refused.
    pub fn refused(&self) -> u64 {
        self.refused_unknown_completions
            + self.refused_stale_completions
            + self.refused_transfer_outside
            + self.refused_transfer_wrong_set
            + self.refused_transfer_without_buffer
            + self.refused_gpa_direct
            + self.refused_bad_packets
    }
}

/// A driver's open channel: `writer` is the guest-to-host ring, `reader`
/// the host-to-guest ring; up to `N` requests outstanding, each with a
/// context `T` the completion hands back.
pub struct DataChannel<M: RingMemory, T, const N: usize> {
    writer: RingWriter<M>,
    reader: RingReader<M>,
    transactions: TransactionTable<T, N>,
    receive_buffer: Option<ReceiveBuffer>,
    stats: ChannelStats,
}

impl<M: RingMemory, T, const N: usize> DataChannel<M, T, N> {
    pub fn new(writer: RingWriter<M>, reader: RingReader<M>) -> Self {
        Self {
            writer,
            reader,
            transactions: TransactionTable::new(),
            receive_buffer: None,
            stats: ChannelStats::default(),
        }
    }

    /// The receive buffer transfer-page packets may point into (after the
    /// device protocol told the host about it), or none.
    pub fn set_receive_buffer(&mut self, receive_buffer: Option<ReceiveBuffer>) {
        self.receive_buffer = receive_buffer;
    }

    pub fn receive_buffer(&self) -> Option<&ReceiveBuffer> {
        self.receive_buffer.as_ref()
    }

    pub fn stats(&self) -> &ChannelStats {
        &self.stats
    }

    pub fn outstanding(&self) -> usize {
        self.transactions.len()
    }

    pub fn writer(&mut self) -> &mut RingWriter<M> {
        &mut self.writer
    }

    pub fn reader(&mut self) -> &mut RingReader<M> {
        &mut self.reader
    }

    /// Start a drain round: ask the host not to interrupt while we read
    /// (its packets are found by the reads, and by [`DataChannel::end_round`]'s
    /// last look).
    pub fn begin_round(&mut self) -> Result<(), ChannelError> {
        self.reader.mask_interrupts().map_err(ChannelError::Ring)
    }

    /// End a drain round once [`DataChannel::receive`] found the ring empty:
    /// publish the read position, ask for interrupts again and look once
    /// more. The host judges whether to interrupt from the published read
    /// index and the mask, so a packet it wrote after the last empty read
    /// brings no interrupt: when [`RoundEnd::more`] is set, drain again
    /// before waiting, or that packet (and the channel) waits for good.
    pub fn end_round(&mut self) -> Result<RoundEnd, ChannelError> {
        let Signal(signal_host) = self.reader.finish_batch().map_err(ChannelError::Ring)?;
        let more = self
            .reader
            .unmask_interrupts()
            .map_err(ChannelError::Ring)?;
        Ok(RoundEnd { signal_host, more })
    }

    /// Fail every outstanding request (the channel was closed, rescinded
    /// or reset): their contexts, in no particular order. Completions that
    /// arrive for them later are refused as stale.
    pub fn fail_outstanding(&mut self) -> impl Iterator<Item = (u64, T)> + '_ {
        self.transactions.drain()
    }

    /// Write with a transaction: `context` Some asks for a completion.
    fn send_with(
        &mut self,
        context: Option<T>,
        write: impl FnOnce(&mut RingWriter<M>, u64, bool) -> Result<Signal, ChannelError>,
    ) -> Result<Sent, SendError<T>> {
        let (transaction_id, requested) = match context {
            Some(context) => match self.transactions.begin(context) {
                Ok(id) => (Some(id), true),
                Err(TransactionError::Full) | Err(TransactionError::Unknown(_)) => {
                    return Err(SendError {
                        error: ChannelError::TooManyOutstanding,
                        context: None,
                    })
                }
            },
            None => (None, false),
        };
        match write(&mut self.writer, transaction_id.unwrap_or(0), requested) {
            Ok(signal) => {
                if signal.0 {
                    self.stats.signals_requested += 1;
                }
                Ok(Sent {
                    transaction_id,
                    signal,
                })
            }
            Err(error) => Err(SendError {
                error,
                context: transaction_id.and_then(|id| self.transactions.complete(id).ok()),
            }),
        }
    }

    /// An in-band packet; `context` Some asks for a completion.
    pub fn send_in_band(
        &mut self,
        payload: &[u8],
        context: Option<T>,
    ) -> Result<Sent, SendError<T>> {
        let sent = self.send_with(context, |writer, id, requested| {
            Ok(writer.write_in_band(id, requested, payload)?)
        })?;
        self.stats.sent_in_band += 1;
        Ok(sent)
    }

    /// GPA-direct with a page buffer: every slice is cut at page boundaries
    /// and each piece is one range of one page (its offset and length in
    /// that page), as Linux's page-buffer sends are.
    pub fn send_page_buffer(
        &mut self,
        slices: &[BufferSlice],
        payload: &[u8],
        context: Option<T>,
    ) -> Result<Sent, SendError<T>> {
        let mut pieces: heapless::Vec<(u64, u32), MAX_PAGE_BUFFER_ENTRIES> = heapless::Vec::new();
        let mut too_many = slices.is_empty();
        for piece in slices.iter().flat_map(|slice| slice.page_pieces()) {
            too_many |= pieces.push(piece).is_err();
        }
        if too_many {
            return Err(SendError {
                error: ChannelError::TooManyPages,
                context,
            });
        }
        let sent = self.send_with(context, |writer, id, requested| {
            Ok(writer.write_gpa_direct_buffers(id, requested, &pieces, payload)?)
        })?;
        self.stats.sent_page_buffer += 1;
        Ok(sent)
    }

    /// GPA-direct with multi-page ranges: each slice is one range (its
    /// offset in the first page, its length, the PFNs of every page).
    pub fn send_multi_page(
        &mut self,
        slices: &[BufferSlice],
        payload: &[u8],
        context: Option<T>,
    ) -> Result<Sent, SendError<T>> {
        let mut pfns: heapless::Vec<u64, MAX_MULTI_PAGE_PFNS> = heapless::Vec::new();
        let mut too_many = slices.is_empty() || slices.len() > MAX_MULTI_PAGE_RANGES;
        for pfn in slices.iter().flat_map(|slice| slice.pfns()) {
            too_many |= pfns.push(pfn).is_err();
        }
        if too_many {
            return Err(SendError {
                error: ChannelError::TooManyPages,
                context,
            });
        }
        let mut ranges: heapless::Vec<GpaRange<'_>, MAX_MULTI_PAGE_RANGES> = heapless::Vec::new();
        let mut first = 0;
        for slice in slices {
            let count = slice.page_count();
            // Fits: the PFNs were counted above from the same slices.
            let _ = ranges.push(GpaRange {
                byte_offset: slice.byte_offset(),
                byte_count: slice.len(),
                pfns: &pfns[first..first + count],
            });
            first += count;
        }
        let sent = self.send_with(context, |writer, id, requested| {
            Ok(writer.write_gpa_direct(id, requested, &ranges, payload)?)
        })?;
        self.stats.sent_multi_page += 1;
        Ok(sent)
    }

    /// Complete a host request (a transfer-page packet or an in-band one
    /// that asked for a completion).
    pub fn send_completion(
        &mut self,
        transaction_id: u64,
        payload: &[u8],
    ) -> Result<Signal, ChannelError> {
        let signal = self.writer.write_completion(transaction_id, payload)?;
        self.stats.sent_completions += 1;
        if signal.0 {
            self.stats.signals_requested += 1;
        }
        Ok(signal)
    }

    /// Copy the next host packet into `out`, validate it and match it:
    /// `Ok(None)` when the ring is empty. A refused packet is consumed and
    /// counted (`Err(ChannelError::Refused)`); keep reading after it. Call
    /// [`RingReader::finish_batch`] through [`DataChannel::reader`] once a
    /// batch is read.
    pub fn receive<'a>(
        &mut self,
        out: &'a mut [u8],
    ) -> Result<Option<Received<'a, T>>, ChannelError> {
        let packet = match self.reader.read_packet(out) {
            Ok(Some(packet)) => packet,
            Ok(None) => return Ok(None),
            Err(RingError::BadPacket(error)) => {
                self.stats.refused_bad_packets += 1;
                return Err(ChannelError::Refused(Refusal::BadPacket(error)));
            }
            Err(error) => return Err(ChannelError::Ring(error)),
        };
        let transaction_id = packet.transaction_id;
        match packet.kind {
            PacketKind::InBand => {
                self.stats.received_in_band += 1;
                Ok(Some(Received::InBand {
                    transaction_id,
                    completion_requested: packet.completion_requested,
                    payload: packet.payload,
                }))
            }
            PacketKind::Completion => match self.transactions.complete(transaction_id) {
                Ok(context) => {
                    self.stats.received_completions += 1;
                    Ok(Some(Received::Completion {
                        transaction_id,
                        context,
                        payload: packet.payload,
                    }))
                }
                Err(_) if self.transactions.was_issued(transaction_id) => {
                    self.stats.refused_stale_completions += 1;
                    Err(ChannelError::Refused(Refusal::StaleCompletion(
                        transaction_id,
                    )))
                }
                Err(_) => {
                    self.stats.refused_unknown_completions += 1;
                    Err(ChannelError::Refused(Refusal::UnknownCompletion(
                        transaction_id,
                    )))
                }
            },
            PacketKind::TransferPages {
                transfer_page_set_id,
                ranges,
            } => {
                let validated = match &self.receive_buffer {
                    None => Err(TransferError::NoReceiveBuffer),
                    Some(receive) => receive.validate(transfer_page_set_id, ranges),
                };
                match validated {
                    Ok(ranges) => {
                        self.stats.received_transfer_pages += 1;
                        Ok(Some(Received::TransferPages {
                            transaction_id,
                            completion_requested: packet.completion_requested,
                            ranges,
                            payload: packet.payload,
                        }))
                    }
                    Err(error) => {
                        match error {
                            TransferError::NoReceiveBuffer => {
                                self.stats.refused_transfer_without_buffer += 1
                            }
                            TransferError::WrongSet { .. } => {
                                self.stats.refused_transfer_wrong_set += 1
                            }
                            TransferError::EmptyRange { .. }
                            | TransferError::RangeOutside { .. } => {
                                self.stats.refused_transfer_outside += 1
                            }
                        }
                        Err(ChannelError::Refused(Refusal::Transfer {
                            transaction_id,
                            error,
                        }))
                    }
                }
            }
            PacketKind::GpaDirect(_) => {
                self.stats.refused_gpa_direct += 1;
                Err(ChannelError::Refused(Refusal::GpaDirectFromHost))
            }
        }
    }
}
