//! The simulated host's own console in the seL4 image under QEMU: QEMU's
//! std VGA shows the guest's synthetic framebuffer, and QEMU's PS/2
//! keyboard and mouse become the synthetic keyboard's keystrokes and the
//! synthetic mouse's position (docs/console.md, "In QEMU").
//!
//! Used when the description grants this component the display's IO ports
//! (`pci_config`: 0xcf8-0xcff, `vbe`: 0x1ce-0x1d0, as 16-bit ports) and its framebuffer
//! (the device region `vga_lfb`, at BAR0's physical address), and the
//! i8042's (`i8042_data`: 0x60, `i8042_command`: 0x64) with its IRQs
//! (`keyboard`: 1, `mouse`: 12). The devices' logic is [`hvsim::vga`] and
//! [`hvsim::ps2`]; the synthetic side is [`hvsim::pd::ConsoleHost`]. This
//! is the port access and the wiring.
//!
//! With the scenario's `qemu_console_test` the host shows a test pattern
//! at boot and logs every key and mouse packet (the QEMU console boot
//! test checks both).

use crate::component::{DEVICE_REGIONS, IOPORT_NAMES, IRQ_NAMES, REGION_NAMES};
use component_api::{id_named, println, Channel, ChannelSet, Env, IoPortName};
use hvsim::pd::{deliver_input, refresh_display, ConsoleHost};
use hvsim::ps2::{I8042Ports, Ps2Event, I8042};
use hvsim::vga::{StdVga, VgaPorts};
use sel4_runtime::Sel4Env;

/// PCI configuration and the Bochs VBE registers.
pub struct DisplayPorts {
    env: Sel4Env,
    pci: IoPortName,
    vbe: IoPortName,
}

impl VgaPorts for DisplayPorts {
    fn pci_config_read(&mut self, address: u32) -> u32 {
        self.env.ioport_write(self.pci, 0, 4, address);
        self.env.ioport_read(self.pci, 4, 4)
    }
    fn pci_config_write(&mut self, address: u32, value: u32) {
        self.env.ioport_write(self.pci, 0, 4, address);
        self.env.ioport_write(self.pci, 4, 4, value);
    }
    fn dispi_read(&mut self, index: u16) -> u16 {
        self.env.ioport_write(self.vbe, 0, 2, u32::from(index));
        self.env.ioport_read(self.vbe, 1, 2) as u16
    }
    fn dispi_write(&mut self, index: u16, value: u16) {
        self.env.ioport_write(self.vbe, 0, 2, u32::from(index));
        self.env.ioport_write(self.vbe, 1, 2, u32::from(value));
    }
}

/// The i8042's data and command/status ports.
pub struct ControllerPorts {
    env: Sel4Env,
    data: IoPortName,
    command: IoPortName,
}

impl I8042Ports for ControllerPorts {
    fn read_data(&mut self) -> u8 {
        self.env.ioport_read(self.data, 0, 1) as u8
    }
    fn write_data(&mut self, value: u8) {
        self.env.ioport_write(self.data, 0, 1, u32::from(value));
    }
    fn read_status(&mut self) -> u8 {
        self.env.ioport_read(self.command, 0, 1) as u8
    }
    fn write_command(&mut self, value: u8) {
        self.env.ioport_write(self.command, 0, 1, u32::from(value));
    }
}

pub struct QemuConsole {
    display: Option<StdVga<DisplayPorts>>,
    input: Option<I8042<ControllerPorts>>,
    irqs: [Option<Channel>; 2],
    /// Log every input event (the scenario's `qemu_console_test`).
    log_input: bool,
    /// Events no synthetic device took (not open yet, or not there).
    pub undelivered: u64,
}

fn attach_display(env: &mut dyn Env) -> Option<StdVga<DisplayPorts>> {
    let pci = id_named(IOPORT_NAMES, "pci_config")?;
    let vbe = id_named(IOPORT_NAMES, "vbe")?;
    let region = id_named(REGION_NAMES, "vga_lfb")?;
    let Some(&(_, physical)) = DEVICE_REGIONS.iter().find(|(name, _)| *name == region) else {
        println!(
            env,
            "host: display: region `vga_lfb` is not device memory (no `physical`): not used"
        );
        return None;
    };
    let ports = DisplayPorts {
        env: Sel4Env::current(),
        pci,
        vbe,
    };
    match StdVga::attach(ports, env.region(region), physical) {
        Ok(display) => {
            let at = display.location();
            println!(
                env,
                "host: display: std VGA at PCI 00:{:02x}.0, framebuffer (BAR0) at {:#x}, DISPI {:#x}: {}x{}x32",
                at.device,
                at.bar0,
                at.dispi_id,
                hvsim::vga::WIDTH,
                hvsim::vga::HEIGHT
            );
            Some(display)
        }
        Err(error) => {
            println!(env, "host: display: not used: {}", error);
            None
        }
    }
}

fn attach_input(env: &mut dyn Env) -> Option<I8042<ControllerPorts>> {
    let data = id_named(IOPORT_NAMES, "i8042_data")?;
    let command = id_named(IOPORT_NAMES, "i8042_command")?;
    let ports = ControllerPorts {
        env: Sel4Env::current(),
        data,
        command,
    };
    match I8042::attach(ports, hvsim::vga::WIDTH, hvsim::vga::HEIGHT) {
        Ok(controller) => {
            println!(
                env,
                "host: PS/2: keyboard (scan code set 1) and mouse reporting"
            );
            Some(controller)
        }
        Err(error) => {
            println!(env, "host: PS/2: not used: {}", error);
            None
        }
    }
}

impl QemuConsole {
    /// Whatever of the display and the PS/2 devices the description
    /// grants and QEMU has; with `test`, the test pattern is shown.
    pub fn attach(env: &mut dyn Env, test: bool) -> QemuConsole {
        let mut display = attach_display(env);
        if let (Some(display), true) = (display.as_mut(), test) {
            let bytes = display.draw(hvsim::vga::test_pattern_pixel);
            println!(env, "host: display: test pattern shown ({} bytes)", bytes);
        }
        let input = attach_input(env);
        QemuConsole {
            display,
            input,
            irqs: [
                id_named(IRQ_NAMES, "keyboard"),
                id_named(IRQ_NAMES, "mouse"),
            ],
            log_input: test,
            undelivered: 0,
        }
    }

    /// Read the PS/2 devices (on their IRQs and on every tick: an edge
    /// lost between a read and the acknowledgement costs at most a tick)
    /// and hand what they report to the synthetic devices.
    pub fn poll_input(
        &mut self,
        env: &mut dyn Env,
        channels: ChannelSet,
        host: &mut impl ConsoleHost,
    ) {
        let Some(input) = self.input.as_mut() else {
            return;
        };
        let mut events = alloc::vec::Vec::new();
        input.poll(|event| events.push(event));
        for irq in self.irqs.iter().flatten() {
            if channels.contains(*irq) {
                env.irq_ack(*irq);
            }
        }
        for event in events {
            let delivered = deliver_input(host, event);
            if !delivered {
                self.undelivered += 1;
            }
            if !self.log_input {
                continue;
            }
            let outcome = if delivered {
                "delivered"
            } else {
                "no synthetic device took it"
            };
            match event {
                Ps2Event::Key(key) => println!(
                    env,
                    "host: PS/2 key {}{:#04x} {} ({})",
                    if key.e0 {
                        "e0 "
                    } else if key.e1 {
                        "e1 "
                    } else {
                        ""
                    },
                    key.code,
                    if key.released { "up" } else { "down" },
                    outcome
                ),
                Ps2Event::Pointer { x, y, buttons } => println!(
                    env,
                    "host: PS/2 mouse at {:#06x},{:#06x} buttons {} ({})", x, y, buttons, outcome
                ),
            }
        }
    }

    /// Whether QEMU's display is there to show the synthetic screen on.
    pub fn has_display(&self) -> bool {
        self.display.is_some()
    }

    /// Copy what changed on the synthetic screen to QEMU's display.
    pub fn refresh(&mut self, host: &mut impl ConsoleHost) {
        if let Some(display) = self.display.as_mut() {
            refresh_display(host, display);
        }
    }
}
