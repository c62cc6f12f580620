//! `shutdown`: the shutdown integration-component driver.
//!
//! The host asks the guest to shut down (or reboot, or hibernate) with a
//! shutdown message. The channel loop (`ic-channel`) opens the channel,
//! negotiates framework 3.0/1.0 and shutdown 3.2/3.1/3.0/1.0 and reports
//! them; this crate answers the request, keeps it, and notifies its clients
//! (`driver::CLIENT_EVENTS`), which ask (`shutdown::Request::Pending`)
//! and gets the kind, force flag and reason. Powering off is the client's
//! decision (it asks `vmbus` to unload the bus and power off).
//!
//! Answers: power off and reboot (with or without force) succeed;
//! hibernate, and any flag we do not know, are answered with E_FAIL and
//! not forwarded (this system cannot hibernate, and an unknown request is
//! not one to act on).
//!
//! Trusts: nothing from the host: a short body is rejected; the display
//! message is read as UTF-16LE or UTF-8 up to its first NUL, control
//! characters replaced, cut to 64 characters. Writes: its own rings, the
//! console, the notifications to its clients.
#![no_std]
#![forbid(unsafe_code)]

use component_api::{println, Channel, Env, Refusal};
use ic_channel::{body_mut, ChannelIds, DriverService, IcDriver, IcService, Rejection};
use vmbus_ipc::shutdown::{Kind, Reply, Request};
use vmbus_protocol::ic::{
    self, shutdown_flags, IcVersion, ShutdownMessage, STATUS_FAIL, STATUS_OK,
};

include!(concat!(env!("OUT_DIR"), "/ids.rs"));

pub const IDS: ChannelIds = ic_channel::driver_ids!();

/// The reason text as the client gets it.
pub type Reason = heapless::String<64>;

#[derive(Default)]
pub struct ShutdownService {
    /// The request the client has not acted on (kept: it may ask again).
    pub pending: Option<Reply>,
    pub requests: u32,
}

/// The host's display message as text: UTF-16LE when it looks like it
/// (a non-zero first byte and a zero second byte), UTF-8 otherwise; up to
/// the first NUL, control characters as spaces, invalid sequences as '?'.
pub fn display_text(bytes: &[u8]) -> Reason {
    let mut text = Reason::new();
    let mut push = |ch: char| {
        let ch = if ch.is_control() { ' ' } else { ch };
        text.push(ch).is_ok()
    };
    if bytes.len() >= 2 && bytes[0] != 0 && bytes[1] == 0 {
        let units = bytes
            .chunks_exact(2)
            .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
            .take_while(|&unit| unit != 0);
        for ch in char::decode_utf16(units) {
            if !push(ch.unwrap_or('?')) {
                break;
            }
        }
    } else {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        'chunks: for chunk in bytes[..end].utf8_chunks() {
            for ch in chunk.valid().chars() {
                if !push(ch) {
                    break 'chunks;
                }
            }
            if !chunk.invalid().is_empty() && !push('?') {
                break;
            }
        }
    }
    text
}

impl IcService for ShutdownService {
    const MESSAGE_TYPE: u16 = ic::message_type::SHUTDOWN;
    const MESSAGE_VERSIONS: &'static [(u16, u16)] = &ic::versions::SHUTDOWN;

    fn handle(
        &mut self,
        env: &mut dyn Env,
        _version: IcVersion,
        body: &mut [u8],
    ) -> Result<u32, Rejection> {
        let message: &mut ShutdownMessage = body_mut(body)?;
        let flags = message.flags.get();
        let reason_code = message.reason_code.get();
        let reason = display_text(&message.display_message);
        self.requests += 1;
        let force = flags & shutdown_flags::FORCE != 0;
        let kind = match flags & !shutdown_flags::FORCE {
            0 => Kind::PowerOff,
            shutdown_flags::REBOOT => Kind::Reboot,
            shutdown_flags::HIBERNATE => {
                println!(env, "host asks to hibernate: not supported, refused");
                return Ok(STATUS_FAIL);
            }
            _ => {
                println!(
                    env,
                    "host shutdown request with unknown flags {flags:#x}: refused"
                );
                return Ok(STATUS_FAIL);
            }
        };
        println!(
            env,
            "host requests {kind:?}{} (reason code {reason_code:#x}: \"{reason}\"); telling the client",
            if force { ", forced" } else { "" }
        );
        self.pending = Some(Reply::Requested {
            kind,
            force,
            reason,
        });
        for event in driver::CLIENT_EVENTS {
            env.notify(*event);
        }
        Ok(STATUS_OK)
    }
}

impl DriverService for ShutdownService {
    const IDS: ChannelIds = IDS;

    fn serve_client(
        &mut self,
        _env: &mut dyn Env,
        channel: Channel,
        message: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, Refusal> {
        serve::shutdown(channel, message, reply, |_, request| match request {
            Request::Pending => Ok(self.pending.clone().unwrap_or(Reply::None)),
        })
    }
}

/// The component: the channel loop around [`ShutdownService`].
pub type Shutdown = IcDriver<ShutdownService>;

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use component_api::Component;
    use env_double::EnvDouble;
    use ic_channel::testing::*;
    use std::vec;
    use std::vec::Vec;
    use zerocopy::FromZeros;

    fn started() -> (EnvDouble, TestHost, Shutdown) {
        let (mut env, mut host, mut component) = open_driver();
        let chosen = negotiate(
            &mut component,
            &mut env,
            &mut host,
            &[(3, 0), (1, 0)],
            &[(1, 0), (3, 0), (3, 1), (3, 2)],
        );
        assert_eq!(chosen, Some(((3, 0), (3, 2))));
        (env, host, component)
    }

    fn request(flags: u32, text: &[u8]) -> Vec<u8> {
        let mut body = ShutdownMessage::new_zeroed();
        body.flags = flags.into();
        body.reason_code = 0x8000_0001.into();
        body.display_message[..text.len()].copy_from_slice(text);
        ic_request(ic::message_type::SHUTDOWN, (3, 2), &bytes_of(&body))
    }

    fn ask(component: &mut Shutdown, env: &mut EnvDouble) -> Reply {
        let message =
            env_double::encode_request::<vmbus_ipc::shutdown::Shutdown>(&Request::Pending);
        let mut reply = [0u8; 256];
        let len = component
            .protected(env, channels::CLIENT, &message, &mut reply)
            .unwrap();
        env_double::decode_reply::<vmbus_ipc::shutdown::Shutdown>(&reply[..len])
    }

    #[test]
    fn negotiation_falls_back_to_what_the_host_has() {
        let (mut env, mut host, mut component) = open_driver::<ShutdownService>();
        let chosen = negotiate(
            &mut component,
            &mut env,
            &mut host,
            &[(3, 0)],
            &[(3, 0), (1, 0)],
        );
        assert_eq!(chosen, Some(((3, 0), (3, 0))));
        assert_eq!(host.bus.borrow().reported, vec![((3, 0), (3, 0))]);
    }

    #[test]
    fn a_host_request_reaches_the_client() {
        let (mut env, mut host, mut component) = started();
        assert_eq!(ask(&mut component, &mut env), Reply::None);
        host.send(&request(0, b"Planned maintenance\0garbage"));
        notify_synic(&mut component, &mut env);
        let (header, _) = host.receive_ic().unwrap();
        assert_eq!(header.status.get(), STATUS_OK);
        assert_eq!(
            header.flags(),
            ic::IcFlags::TRANSACTION | ic::IcFlags::RESPONSE
        );
        assert_eq!(env.notifications_on(channels::CLIENT_EVENT), 1);
        assert_eq!(
            ask(&mut component, &mut env),
            Reply::Requested {
                kind: Kind::PowerOff,
                force: false,
                reason: Reason::try_from("Planned maintenance").unwrap(),
            }
        );
    }

    #[test]
    fn forced_reboot_with_a_utf16_message() {
        let (mut env, mut host, mut component) = started();
        let text: Vec<u8> = "Réboot".encode_utf16().flat_map(u16::to_le_bytes).collect();
        host.send(&request(
            shutdown_flags::REBOOT | shutdown_flags::FORCE,
            &text,
        ));
        notify_synic(&mut component, &mut env);
        host.receive_ic().unwrap();
        assert_eq!(
            ask(&mut component, &mut env),
            Reply::Requested {
                kind: Kind::Reboot,
                force: true,
                reason: Reason::try_from("Réboot").unwrap(),
            }
        );
    }

    #[test]
    fn hibernate_and_unknown_flags_are_refused_and_not_forwarded() {
        let (mut env, mut host, mut component) = started();
        for flags in [shutdown_flags::HIBERNATE, 0x40, 0x6] {
            host.send(&request(flags, b""));
            notify_synic(&mut component, &mut env);
            let (header, _) = host.receive_ic().unwrap();
            assert_eq!(header.status.get(), STATUS_FAIL);
        }
        assert_eq!(env.notifications_on(channels::CLIENT_EVENT), 0);
        assert_eq!(ask(&mut component, &mut env), Reply::None);
    }

    #[test]
    fn a_short_request_is_rejected() {
        let (mut env, mut host, mut component) = started();
        host.send(&ic_request(ic::message_type::SHUTDOWN, (3, 2), &[0; 12]));
        notify_synic(&mut component, &mut env);
        assert!(host.receive().is_none());
        assert_eq!(component.channel.stats().rejected, 1);
        assert_eq!(env.notifications_on(channels::CLIENT_EVENT), 0);
    }

    #[test]
    fn display_text_is_bounded_and_cleaned() {
        assert_eq!(display_text(&[b'a'; 2048]).len(), 64);
        assert_eq!(display_text(b"a\nb\xffc\0d").as_str(), "a b?c");
        // An unpaired surrogate in UTF-16.
        assert_eq!(
            display_text(&[b'x', 0, 0x00, 0xd8, b'y', 0]).as_str(),
            "x?y"
        );
        assert_eq!(display_text(&[]).as_str(), "");
    }

    #[test]
    fn calls_on_other_channels_and_garbage_are_refused() {
        let (mut env, _host, mut component) = started();
        let mut reply = [0u8; 64];
        assert_eq!(
            component.protected(&mut env, channels::CLIENT, &[0xff, 0xff], &mut reply),
            Err(Refusal::WRONG_PROTOCOL)
        );
        assert_eq!(
            component.protected(&mut env, channels::SYNIC, &[0], &mut reply),
            Err(Refusal::NOT_SERVED)
        );
    }
}
