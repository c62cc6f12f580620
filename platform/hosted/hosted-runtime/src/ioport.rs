//! Emulated IO ports. A range at a PC serial-port base (COM1..COM4) behaves
//! like an idle 16550 whose transmitter is always ready: a byte written to
//! THR (offset 0) goes to the component's output, LSR (offset 5) reads
//! 0x60 (THR empty, transmitter empty), every other register reads 0 and
//! ignores writes, except IER: enabling the transmitter-empty interrupt
//! raises the port's IRQ at once (the transmitter is always empty), and
//! IIR then reads 0x02 until IER is cleared. So a console driver written
//! for the real UART runs hosted unchanged. Any other range reads as all ones (a floating bus)
//! and ignores writes.

const SERIAL_BASES: [u16; 4] = [0x3f8, 0x2f8, 0x3e8, 0x2e8];
const THR: u16 = 0;
const IER: u16 = 1;
const IIR: u16 = 2;
const LSR: u16 = 5;
const LSR_IDLE: u32 = 0x60;
const IER_THR_EMPTY: u32 = 0x02;
const IIR_NONE: u32 = 0x01;
const IIR_THR_EMPTY: u32 = 0x02;
/// Output is passed on per line, or when this much is buffered.
const LINE_LIMIT: usize = 512;

pub struct PortRange {
    size: u16,
    serial: bool,
    /// The ISA IRQ line a UART at this base uses (COM1/3: 4, COM2/4: 3).
    irq_line: u8,
    ier: u32,
    line: Vec<u8>,
}

/// What a port write asks the caller to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WriteEffect {
    /// A complete line to print.
    pub output: Option<Vec<u8>>,
    /// An IRQ line to raise.
    pub raise_irq: Option<u8>,
}

impl PortRange {
    pub fn new(base: u16, size: u16) -> PortRange {
        PortRange {
            size,
            serial: SERIAL_BASES.contains(&base) && size >= 8,
            irq_line: if base == 0x3f8 || base == 0x3e8 { 4 } else { 3 },
            ier: 0,
            line: Vec::new(),
        }
    }

    fn in_range(&self, offset: u16, width: u8) -> bool {
        matches!(width, 1 | 2 | 4) && (offset as u32 + width as u32) <= self.size as u32
    }

    pub fn read(&mut self, offset: u16, width: u8) -> u32 {
        let all_ones = match width {
            1 => 0xff,
            2 => 0xffff,
            _ => u32::MAX,
        };
        if !self.in_range(offset, width) || !self.serial {
            return all_ones;
        }
        match offset {
            LSR => LSR_IDLE,
            IER => self.ier,
            IIR if self.ier & IER_THR_EMPTY != 0 => IIR_THR_EMPTY,
            IIR => IIR_NONE,
            _ => 0,
        }
    }

    pub fn write(&mut self, offset: u16, width: u8, value: u32) -> WriteEffect {
        let mut effect = WriteEffect::default();
        if !self.in_range(offset, width) || !self.serial {
            return effect;
        }
        match offset {
            THR => {
                let byte = value as u8;
                self.line.push(byte);
                if byte == b'\n' || self.line.len() >= LINE_LIMIT {
                    effect.output = Some(std::mem::take(&mut self.line));
                }
            }
            IER => {
                let enabling = value & IER_THR_EMPTY != 0 && self.ier & IER_THR_EMPTY == 0;
                self.ier = value & 0x0f;
                if enabling {
                    effect.raise_irq = Some(self.irq_line);
                }
            }
            _ => {}
        }
        effect
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_transmits_lines_and_reports_idle() {
        let mut com1 = PortRange::new(0x3f8, 8);
        assert_eq!(com1.read(LSR, 1), 0x60);
        assert_eq!(com1.write(THR, 1, b'h' as u32), WriteEffect::default());
        assert_eq!(
            com1.write(THR, 1, b'\n' as u32).output,
            Some(b"h\n".to_vec())
        );
        assert_eq!(com1.write(3, 1, 0x03), WriteEffect::default(), "LCR");
        assert_eq!(com1.read(8, 1), 0xff, "outside the range");
    }

    #[test]
    fn enabling_the_transmit_interrupt_raises_the_irq_once() {
        let mut com1 = PortRange::new(0x3f8, 8);
        assert_eq!(com1.read(IIR, 1), IIR_NONE);
        assert_eq!(com1.write(IER, 1, IER_THR_EMPTY).raise_irq, Some(4));
        assert_eq!(com1.read(IIR, 1), IIR_THR_EMPTY);
        assert_eq!(com1.write(IER, 1, IER_THR_EMPTY).raise_irq, None);
        com1.write(IER, 1, 0);
        assert_eq!(com1.read(IIR, 1), IIR_NONE);
        assert_eq!(PortRange::new(0x2f8, 8).write(IER, 1, 2).raise_irq, Some(3));
    }

    #[test]
    fn other_ranges_float() {
        let mut range = PortRange::new(0x60, 4);
        assert_eq!(range.read(0, 2), 0xffff);
        assert_eq!(range.write(0, 1, 1), WriteEffect::default());
    }
}
