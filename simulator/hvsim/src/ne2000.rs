//! [`Ne2000`]: an Ethernet NIC on a DP8390 (NE2000) controller reached by
//! programmed I/O. In the seL4 image this is QEMU's `ne2k_isa`
//! (`-device ne2k_isa,netdev=n0,iobase=0x300,irq=9`): the simulated host
//! carries the frames of its synthetic NIC (netvsp) through it to QEMU's
//! user network. The port access itself is the only seL4-specific part
//! ([`Ne2000Ports`], implemented by the component over `Env::ioport_*`),
//! so the register logic is unit-tested here against a model of the
//! controller.
//!
//! How it drives the chip: reset through the reset port; the station
//! address from the 32-byte address PROM (each byte stored twice) by a
//! remote-DMA read; the 32 KiB of on-board memory (pages 0x40..0xC0 of
//! 256 bytes) split into one transmit buffer ([`TX_START_PAGE`], 6 pages)
//! and the receive ring ([`RX_START_PAGE`]..[`RX_STOP_PAGE`]); 16-bit data
//! transfers (DCR word mode). The boundary register (BNRY) is the last
//! ring page the driver has consumed: the next frame starts at BNRY + 1
//! (wrapping), and the ring is empty when that page is the chip's current
//! page (CURR). Sending is synchronous: copy the frame in by remote DMA,
//! start the transmitter and wait (bounded) for it to finish.
//!
//! Trusts nothing the chip reports: a frame header whose status, next
//! page or length is impossible drops every pending frame (BNRY is moved
//! to just before CURR) and is counted; every wait is bounded by the
//! clock and by a count of polls; a frame larger than the caller's buffer
//! is dropped and counted.

/// The registers, as offsets from the base port (0x300). Page 0 unless
/// said otherwise; some offsets read one register and write another.
pub mod reg {
    pub const COMMAND: u16 = 0x00;
    /// Write: the first page of the receive ring.
    pub const PAGE_START: u16 = 0x01;
    /// Write: the page after the receive ring.
    pub const PAGE_STOP: u16 = 0x02;
    pub const BOUNDARY: u16 = 0x03;
    /// Read: transmit status. Write: transmit page start.
    pub const TRANSMIT_STATUS: u16 = 0x04;
    pub const TRANSMIT_PAGE: u16 = 0x04;
    /// Write: transmit byte count.
    pub const TRANSMIT_COUNT_LOW: u16 = 0x05;
    pub const TRANSMIT_COUNT_HIGH: u16 = 0x06;
    pub const INTERRUPT_STATUS: u16 = 0x07;
    /// Write: remote DMA start address and byte count.
    pub const REMOTE_ADDRESS_LOW: u16 = 0x08;
    pub const REMOTE_ADDRESS_HIGH: u16 = 0x09;
    pub const REMOTE_COUNT_LOW: u16 = 0x0a;
    pub const REMOTE_COUNT_HIGH: u16 = 0x0b;
    /// Write: receive configuration.
    pub const RECEIVE_CONFIG: u16 = 0x0c;
    /// Write: transmit configuration.
    pub const TRANSMIT_CONFIG: u16 = 0x0d;
    /// Write: data configuration.
    pub const DATA_CONFIG: u16 = 0x0e;
    /// Write: interrupt mask.
    pub const INTERRUPT_MASK: u16 = 0x0f;
    /// Page 1: the station address (6 registers).
    pub const PHYSICAL_ADDRESS: u16 = 0x01;
    /// Page 1: the page the chip writes the next frame to.
    pub const CURRENT_PAGE: u16 = 0x07;
    /// Page 1: the multicast filter (8 registers).
    pub const MULTICAST: u16 = 0x08;
    /// The NE2000's data port (remote DMA) and reset port.
    pub const DATA: u16 = 0x10;
    pub const RESET: u16 = 0x1f;
}

/// Command register bits.
pub mod command {
    pub const STOP: u8 = 0x01;
    pub const START: u8 = 0x02;
    pub const TRANSMIT: u8 = 0x04;
    pub const REMOTE_READ: u8 = 0x08;
    pub const REMOTE_WRITE: u8 = 0x10;
    pub const NO_DMA: u8 = 0x20;
    pub const PAGE0: u8 = 0x00;
    pub const PAGE1: u8 = 0x40;
}

/// Interrupt status (and mask) bits.
pub mod isr {
    pub const RECEIVED: u8 = 0x01;
    pub const TRANSMITTED: u8 = 0x02;
    pub const RECEIVE_ERROR: u8 = 0x04;
    pub const TRANSMIT_ERROR: u8 = 0x08;
    pub const OVERWRITE: u8 = 0x10;
    pub const COUNTERS: u8 = 0x20;
    pub const REMOTE_DMA_DONE: u8 = 0x40;
    pub const RESET: u8 = 0x80;
}

/// Receive status bit in a frame header: received intact.
const RECEIVE_STATUS_OK: u8 = 0x01;
/// Transmit status bit: sent.
const TRANSMIT_STATUS_OK: u8 = 0x01;
/// Data configuration: word-wide transfers, normal operation (loopback
/// off), FIFO threshold 8 bytes.
const DATA_CONFIG_WORDS: u8 = 0x49;
/// Receive configuration: broadcasts too (ARP); multicasts that pass the
/// hash filter; every frame (promiscuous); 0x20 monitor mode while the
/// ring is set up.
const RECEIVE_BROADCAST: u8 = 0x04;
const RECEIVE_MULTICAST: u8 = 0x08;
const RECEIVE_PROMISCUOUS: u8 = 0x10;
const RECEIVE_MONITOR: u8 = 0x20;
/// Transmit configuration: internal loopback while set up; normal.
const TRANSMIT_LOOPBACK: u8 = 0x02;
const TRANSMIT_NORMAL: u8 = 0x00;

pub const PAGE_SIZE: usize = 256;
/// The NE2000's 32 KiB of packet memory: pages 0x40..0xC0.
pub const TX_START_PAGE: u8 = 0x40;
/// 6 pages: room for the largest frame (1514 bytes).
pub const TX_PAGES: u8 = 6;
pub const RX_START_PAGE: u8 = TX_START_PAGE + TX_PAGES;
pub const RX_STOP_PAGE: u8 = 0xC0;
/// The largest Ethernet II frame without FCS (1500 bytes of payload).
pub const MAX_FRAME: usize = 1514;
/// The shortest frame on the wire without FCS; shorter frames are padded.
pub const MIN_FRAME: usize = 60;
/// The 4-byte header the chip writes before each received frame: status,
/// next page, length (header included) low and high.
const HEADER_LEN: usize = 4;
/// The chip counts the 4-byte FCS in what it stores (QEMU does not; real
/// chips do): a frame may be this much longer than [`MAX_FRAME`].
const FCS_LEN: usize = 4;
/// Less than any port access takes: the poll count bound of a wait.
const MIN_POLL_NS: u64 = 100;
/// The longest any step of the chip may take (reset, remote DMA, sending).
const WAIT_NS: u64 = 50_000_000;
/// Frames [`Ne2000::receive`] may skip (too large for the caller) before
/// it returns: bounds one call.
const MAX_SKIPPED: usize = 64;

/// The port access an [`Ne2000`] needs: the 32 ports from the base, and a
/// clock for timeouts.
pub trait Ne2000Ports {
    fn read_register(&mut self, offset: u16) -> u8;
    fn write_register(&mut self, offset: u16, value: u8);
    /// 2 bytes from the data port (word mode), little-endian.
    fn read_data(&mut self) -> u16;
    fn write_data(&mut self, value: u16);
    /// A monotonic clock in nanoseconds.
    fn now_ns(&mut self) -> u64;
}

/// Why the probe found no usable NIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// Nothing answers at the ports (the bus floats: reads 0xFF).
    NoController,
    /// The chip did not finish its reset in time.
    ResetTimeout,
    /// Reading the address PROM did not complete.
    PromTimeout,
    /// The PROM holds no usable unicast address (all zeros, multicast).
    BadAddress,
}

/// What the driver counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ne2000Counters {
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
    /// Frames the caller asked to send that are not Ethernet frames
    /// (shorter than a header, longer than [`MAX_FRAME`]).
    pub send_refused: u64,
    /// Sends the chip reported as failed, or did not finish in time.
    pub send_errors: u64,
    /// Received frames larger than the caller's buffer.
    pub receive_too_large: u64,
    /// Frame headers that made no sense: the pending frames were dropped.
    pub bad_headers: u64,
    /// The chip reported a receive error or an overrun of its ring.
    pub receive_errors: u64,
    pub overruns: u64,
    /// Waits for the chip that ran out of time.
    pub timeouts: u64,
}

/// A DP8390 (NE2000) NIC, started and receiving.
pub struct Ne2000<P: Ne2000Ports> {
    ports: P,
    mac: [u8; 6],
    /// The ring page the next frame starts at (BNRY + 1, kept here rather
    /// than read back from the chip).
    next: u8,
    counters: Ne2000Counters,
}

impl<P: Ne2000Ports> Ne2000<P> {
    /// Reset the chip, read its station address and start it (receiving
    /// frames to its address and broadcasts; interrupts for received
    /// frames, receive errors and overruns).
    pub fn probe(ports: P) -> Result<Ne2000<P>, ProbeError> {
        let mut nic = Ne2000 {
            ports,
            mac: [0; 6],
            next: RX_START_PAGE,
            counters: Ne2000Counters::default(),
        };
        if nic.ports.read_register(reg::COMMAND) == 0xFF {
            return Err(ProbeError::NoController);
        }
        // Reading the reset port resets the NE2000; writing it ends the
        // reset pulse on boards that hold it.
        let value = nic.ports.read_register(reg::RESET);
        nic.ports.write_register(reg::RESET, value);
        if !nic.wait_for(isr::RESET) {
            return Err(ProbeError::ResetTimeout);
        }
        nic.ports.write_register(reg::INTERRUPT_STATUS, 0xFF);
        nic.ports
            .write_register(reg::COMMAND, command::STOP | command::NO_DMA);
        nic.ports
            .write_register(reg::DATA_CONFIG, DATA_CONFIG_WORDS);
        nic.ports.write_register(reg::REMOTE_COUNT_LOW, 0);
        nic.ports.write_register(reg::REMOTE_COUNT_HIGH, 0);
        nic.ports
            .write_register(reg::RECEIVE_CONFIG, RECEIVE_MONITOR);
        nic.ports
            .write_register(reg::TRANSMIT_CONFIG, TRANSMIT_LOOPBACK);
        nic.ports.write_register(reg::INTERRUPT_MASK, 0);
        let mut prom = [0u8; 32];
        if !nic.remote_read(0, &mut prom) {
            return Err(ProbeError::PromTimeout);
        }
        // Each PROM byte is stored twice (the board's 8-bit PROM on a
        // 16-bit bus).
        for (byte, pair) in nic.mac.iter_mut().zip(prom.chunks_exact(2)) {
            *byte = pair[0];
        }
        if nic.mac == [0; 6] || nic.mac[0] & 1 != 0 {
            return Err(ProbeError::BadAddress);
        }
        nic.start_ring();
        Ok(nic)
    }

    /// (Re)initialise the ring and start the chip: stopped, empty ring,
    /// station address, then started in normal mode.
    fn start_ring(&mut self) {
        self.ports
            .write_register(reg::COMMAND, command::STOP | command::NO_DMA);
        self.ports.write_register(reg::TRANSMIT_PAGE, TX_START_PAGE);
        self.ports.write_register(reg::PAGE_START, RX_START_PAGE);
        self.ports.write_register(reg::BOUNDARY, RX_STOP_PAGE - 1);
        self.ports.write_register(reg::PAGE_STOP, RX_STOP_PAGE);
        self.ports.write_register(reg::INTERRUPT_STATUS, 0xFF);
        self.ports.write_register(
            reg::COMMAND,
            command::PAGE1 | command::STOP | command::NO_DMA,
        );
        for (index, byte) in self.mac.iter().enumerate() {
            self.ports
                .write_register(reg::PHYSICAL_ADDRESS + index as u16, *byte);
        }
        for index in 0..8 {
            self.ports.write_register(reg::MULTICAST + index, 0);
        }
        self.ports.write_register(reg::CURRENT_PAGE, RX_START_PAGE);
        self.next = RX_START_PAGE;
        self.ports
            .write_register(reg::COMMAND, command::START | command::NO_DMA);
        self.ports
            .write_register(reg::TRANSMIT_CONFIG, TRANSMIT_NORMAL);
        self.ports
            .write_register(reg::RECEIVE_CONFIG, RECEIVE_BROADCAST);
        self.ports.write_register(
            reg::INTERRUPT_MASK,
            isr::RECEIVED | isr::RECEIVE_ERROR | isr::OVERWRITE,
        );
    }

    /// Take every frame on the wire, whatever its destination (and every
    /// multicast): the simulated host bridges its synthetic NIC, whose
    /// address is not the NE2000's, onto this network.
    pub fn set_promiscuous(&mut self, on: bool) {
        self.ports.write_register(
            reg::COMMAND,
            command::PAGE1 | command::START | command::NO_DMA,
        );
        for index in 0..8 {
            self.ports
                .write_register(reg::MULTICAST + index, if on { 0xFF } else { 0 });
        }
        self.ports.write_register(
            reg::COMMAND,
            command::PAGE0 | command::START | command::NO_DMA,
        );
        let config = if on {
            RECEIVE_BROADCAST | RECEIVE_MULTICAST | RECEIVE_PROMISCUOUS
        } else {
            RECEIVE_BROADCAST
        };
        self.ports.write_register(reg::RECEIVE_CONFIG, config);
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    pub fn counters(&self) -> Ne2000Counters {
        self.counters
    }

    /// Poll (the interrupt status) until one of `bits` is set; bounded by
    /// the clock and by a count of polls should the clock stand still.
    fn wait_for(&mut self, bits: u8) -> bool {
        let start = self.ports.now_ns();
        let max_polls = WAIT_NS / MIN_POLL_NS;
        for _ in 0..max_polls {
            if self.ports.read_register(reg::INTERRUPT_STATUS) & bits != 0 {
                return true;
            }
            if self.ports.now_ns().saturating_sub(start) > WAIT_NS {
                break;
            }
        }
        self.counters.timeouts += 1;
        false
    }

    /// Load the remote DMA address and count and issue `operation`.
    fn start_remote(&mut self, address: u16, count: usize, operation: u8) {
        self.ports
            .write_register(reg::INTERRUPT_STATUS, isr::REMOTE_DMA_DONE);
        self.ports
            .write_register(reg::REMOTE_COUNT_LOW, count as u8);
        self.ports
            .write_register(reg::REMOTE_COUNT_HIGH, (count >> 8) as u8);
        self.ports
            .write_register(reg::REMOTE_ADDRESS_LOW, address as u8);
        self.ports
            .write_register(reg::REMOTE_ADDRESS_HIGH, (address >> 8) as u8);
        self.ports
            .write_register(reg::COMMAND, operation | command::START);
    }

    /// Copy `buf.len()` bytes of the chip's memory from `address` (the
    /// chip wraps at the ring's end). Whether the transfer completed.
    fn remote_read(&mut self, address: u16, buf: &mut [u8]) -> bool {
        // Word mode moves whole words: an odd count is rounded up.
        let count = buf.len() + (buf.len() & 1);
        self.start_remote(address, count, command::REMOTE_READ);
        let mut pairs = buf.chunks_exact_mut(2);
        for pair in &mut pairs {
            pair.copy_from_slice(&self.ports.read_data().to_le_bytes());
        }
        if let [last] = pairs.into_remainder() {
            *last = self.ports.read_data() as u8;
        }
        self.finish_remote()
    }

    fn remote_write(&mut self, address: u16, data: &[u8]) -> bool {
        let count = data.len() + (data.len() & 1);
        self.start_remote(address, count, command::REMOTE_WRITE);
        let pairs = data.chunks_exact(2);
        let last = pairs.remainder().first().copied();
        for pair in pairs {
            self.ports
                .write_data(u16::from_le_bytes([pair[0], pair[1]]));
        }
        if let Some(last) = last {
            self.ports.write_data(u16::from(last));
        }
        self.finish_remote()
    }

    fn finish_remote(&mut self) -> bool {
        let done = self.wait_for(isr::REMOTE_DMA_DONE);
        self.ports
            .write_register(reg::INTERRUPT_STATUS, isr::REMOTE_DMA_DONE);
        if !done {
            // Abort the transfer so the next one starts clean.
            self.ports
                .write_register(reg::COMMAND, command::NO_DMA | command::START);
        }
        done
    }

    /// Send one Ethernet II frame (no FCS; padded to [`MIN_FRAME`]).
    /// Waits until the chip has sent it. Whether it was sent.
    pub fn send(&mut self, frame: &[u8]) -> bool {
        if frame.len() < 14 || frame.len() > MAX_FRAME {
            self.counters.send_refused += 1;
            return false;
        }
        // A send still in progress (it never is: this waits for each).
        if self.ports.read_register(reg::COMMAND) & command::TRANSMIT != 0
            && !self.wait_transmitter_idle()
        {
            self.counters.send_errors += 1;
            return false;
        }
        let mut padded = [0u8; MIN_FRAME];
        let data = if frame.len() < MIN_FRAME {
            padded[..frame.len()].copy_from_slice(frame);
            &padded[..]
        } else {
            frame
        };
        if !self.remote_write(u16::from(TX_START_PAGE) << 8, data) {
            self.counters.send_errors += 1;
            return false;
        }
        self.ports.write_register(
            reg::INTERRUPT_STATUS,
            isr::TRANSMITTED | isr::TRANSMIT_ERROR,
        );
        self.ports.write_register(reg::TRANSMIT_PAGE, TX_START_PAGE);
        self.ports
            .write_register(reg::TRANSMIT_COUNT_LOW, data.len() as u8);
        self.ports
            .write_register(reg::TRANSMIT_COUNT_HIGH, (data.len() >> 8) as u8);
        self.ports.write_register(
            reg::COMMAND,
            command::START | command::TRANSMIT | command::NO_DMA,
        );
        let finished = self.wait_for(isr::TRANSMITTED | isr::TRANSMIT_ERROR);
        let status = self.ports.read_register(reg::TRANSMIT_STATUS);
        self.ports.write_register(
            reg::INTERRUPT_STATUS,
            isr::TRANSMITTED | isr::TRANSMIT_ERROR,
        );
        if finished && status & TRANSMIT_STATUS_OK != 0 {
            self.counters.frames_sent += 1;
            self.counters.bytes_sent += frame.len() as u64;
            true
        } else {
            self.counters.send_errors += 1;
            false
        }
    }

    fn wait_transmitter_idle(&mut self) -> bool {
        let start = self.ports.now_ns();
        for _ in 0..WAIT_NS / MIN_POLL_NS {
            if self.ports.read_register(reg::COMMAND) & command::TRANSMIT == 0 {
                return true;
            }
            if self.ports.now_ns().saturating_sub(start) > WAIT_NS {
                break;
            }
        }
        self.counters.timeouts += 1;
        false
    }

    /// The page the chip will write its next frame to.
    fn current_page(&mut self) -> u8 {
        self.ports.write_register(
            reg::COMMAND,
            command::PAGE1 | command::START | command::NO_DMA,
        );
        let current = self.ports.read_register(reg::CURRENT_PAGE);
        self.ports.write_register(
            reg::COMMAND,
            command::PAGE0 | command::START | command::NO_DMA,
        );
        current
    }

    /// Mark every page before `page` (a ring page) consumed: the chip may
    /// write up to it.
    fn consume_until(&mut self, page: u8) {
        let boundary = if page <= RX_START_PAGE {
            RX_STOP_PAGE - 1
        } else {
            page - 1
        };
        self.ports.write_register(reg::BOUNDARY, boundary);
        self.next = page;
    }

    /// Drop every frame in the ring (after a header that made no sense).
    fn drop_pending(&mut self) {
        let current = self.current_page();
        let current = if (RX_START_PAGE..RX_STOP_PAGE).contains(&current) {
            current
        } else {
            // CURR itself is impossible: start the ring over.
            self.start_ring();
            RX_START_PAGE
        };
        self.consume_until(current);
    }

    /// Acknowledge the chip's interrupt causes (call on its interrupt and
    /// from time to time); counts receive errors and overruns. Whether
    /// frames are waiting in the ring.
    pub fn service(&mut self) -> bool {
        let status = self.ports.read_register(reg::INTERRUPT_STATUS);
        let handled = isr::RECEIVED
            | isr::RECEIVE_ERROR
            | isr::OVERWRITE
            | isr::COUNTERS
            | isr::TRANSMITTED
            | isr::TRANSMIT_ERROR;
        if status & handled != 0 {
            self.ports
                .write_register(reg::INTERRUPT_STATUS, status & handled);
        }
        if status & isr::RECEIVE_ERROR != 0 {
            self.counters.receive_errors += 1;
        }
        if status & isr::OVERWRITE != 0 {
            // The ring filled up: the chip stopped taking frames until
            // BNRY moves, which receiving does. (QEMU's model drops
            // frames instead of overrunning.)
            self.counters.overruns += 1;
        }
        if status & isr::COUNTERS != 0 {
            // Reading the tally counters clears them.
            for offset in 0x0d..=0x0f {
                let _ = self.ports.read_register(offset);
            }
        }
        self.next != self.current_page()
    }

    /// The next received frame, copied into `buf`; its length. A frame
    /// larger than `buf` is dropped (counted) and the next one tried.
    pub fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        for _ in 0..MAX_SKIPPED {
            let page = self.next;
            if page == self.current_page() {
                return None;
            }
            let mut header = [0u8; HEADER_LEN];
            if !self.remote_read(u16::from(page) << 8, &mut header) {
                return None;
            }
            let [status, next, low, high] = header;
            let total = usize::from(u16::from_le_bytes([low, high]));
            let pages_used = (RX_STOP_PAGE - RX_START_PAGE) as usize;
            let valid = status & RECEIVE_STATUS_OK != 0
                && (RX_START_PAGE..RX_STOP_PAGE).contains(&next)
                && (HEADER_LEN + 14..=HEADER_LEN + MAX_FRAME + FCS_LEN).contains(&total)
                && total <= pages_used * PAGE_SIZE;
            if !valid {
                self.counters.bad_headers += 1;
                self.drop_pending();
                return None;
            }
            let len = total - HEADER_LEN;
            if len > buf.len() {
                self.counters.receive_too_large += 1;
                self.consume_until(next);
                continue;
            }
            let address = (u16::from(page) << 8) + HEADER_LEN as u16;
            if !self.remote_read(address, &mut buf[..len]) {
                return None;
            }
            self.consume_until(next);
            self.counters.frames_received += 1;
            self.counters.bytes_received += len as u64;
            return Some(len);
        }
        None
    }
}

/// The NIC host's frames go out through the chip and come in from its ring.
impl<P: Ne2000Ports> crate::net::NetBackend for Ne2000<P> {
    /// Sent at once (the chip has one transmit buffer); a failure is
    /// counted in [`Ne2000Counters`].
    fn transmit(&mut self, frame: &[u8]) {
        let _ = self.send(frame);
    }
    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        Ne2000::receive(self, buf)
    }
    /// Acknowledges the chip's interrupt causes; whether frames wait.
    fn poll(&mut self) -> bool {
        self.service()
    }
}

/// ARP over Ethernet for IPv4: enough to ask the network who has an
/// address (the boot-time check that frames move through the NIC).
pub mod arp {
    const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
    const HARDWARE_ETHERNET: [u8; 2] = [0x00, 0x01];
    const PROTOCOL_IPV4: [u8; 2] = [0x08, 0x00];
    const REQUEST: [u8; 2] = [0x00, 0x01];
    const REPLY: [u8; 2] = [0x00, 0x02];
    pub const FRAME_LEN: usize = 42;

    /// "Who has `target`? Tell `sender_ip`", broadcast.
    pub fn request(sender_mac: [u8; 6], sender_ip: [u8; 4], target: [u8; 4]) -> [u8; FRAME_LEN] {
        let mut frame = [0u8; FRAME_LEN];
        frame[0..6].copy_from_slice(&[0xFF; 6]);
        frame[6..12].copy_from_slice(&sender_mac);
        frame[12..14].copy_from_slice(&ETHERTYPE_ARP);
        frame[14..16].copy_from_slice(&HARDWARE_ETHERNET);
        frame[16..18].copy_from_slice(&PROTOCOL_IPV4);
        frame[18] = 6;
        frame[19] = 4;
        frame[20..22].copy_from_slice(&REQUEST);
        frame[22..28].copy_from_slice(&sender_mac);
        frame[28..32].copy_from_slice(&sender_ip);
        // Target hardware address: unknown (zeros).
        frame[38..42].copy_from_slice(&target);
        frame
    }

    /// If `frame` is an ARP reply telling `to_ip` where `about` is: the
    /// hardware address.
    pub fn reply_about(frame: &[u8], about: [u8; 4], to_ip: [u8; 4]) -> Option<[u8; 6]> {
        if frame.len() < FRAME_LEN
            || frame[12..14] != ETHERTYPE_ARP
            || frame[14..16] != HARDWARE_ETHERNET
            || frame[16..18] != PROTOCOL_IPV4
            || frame[18] != 6
            || frame[19] != 4
            || frame[20..22] != REPLY
            || frame[28..32] != about
            || frame[38..42] != to_ip
        {
            return None;
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&frame[22..28]);
        Some(mac)
    }
}

#[cfg(test)]
mod tests;
