//! `hvsim --net SPEC` (hosted): which network the simulated NIC is on.
//!
//! - `tap:IFNAME`: a TAP device ([`crate::tap_net::TapNet`]) in the
//!   network namespace hvsim runs in, made if it does not exist; give it
//!   10.0.2.2/24 and bring it up, and the guest (10.0.2.15) is reached
//!   from there with `ping`, `curl`.
//! - `user:127.0.0.1:PORT[=GUESTPORT][,...]`: the user-space fallback
//!   ([`crate::user_net::UserNet`]): each TCP connection to the loopback
//!   port is carried to the guest's port (80 by default); PORT 0 lets the
//!   system pick (hvsim prints the port).
//! - `none` (or no `--net`): the in-memory network that drops what the
//!   guest sends ([`crate::net::MemoryNet::discarding`]).

use crate::net::{BoxedNetBackend, MemoryNet};
use crate::tap_net::TapNet;
use crate::user_net::{describe, Forward, UserNet};

pub const USAGE: &str =
    "--net none | tap:IFNAME | user:127.0.0.1:PORT[=GUESTPORT][,127.0.0.1:PORT=GUESTPORT]...";

/// A parsed `--net` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetSpec {
    None,
    Tap(String),
    User(Vec<Forward>),
}

impl NetSpec {
    pub fn parse(text: &str) -> Result<NetSpec, String> {
        if text == "none" {
            return Ok(NetSpec::None);
        }
        if let Some(name) = text.strip_prefix("tap:") {
            if name.is_empty() || name.len() > hosted_runtime::tap::MAX_NAME_LEN {
                return Err(format!(
                    "bad interface name {name:?} (1 to {} bytes)",
                    hosted_runtime::tap::MAX_NAME_LEN
                ));
            }
            return Ok(NetSpec::Tap(name.to_string()));
        }
        if let Some(forwards) = text.strip_prefix("user:") {
            return Forward::parse_list(forwards).map(NetSpec::User);
        }
        Err(format!("unknown network {text:?} ({USAGE})"))
    }

    /// Opens the network: the backend for the NIC host and a line for
    /// the operator saying how to reach the guest.
    pub fn open(&self) -> Result<(BoxedNetBackend, String), String> {
        match self {
            NetSpec::None => Ok((
                Box::new(MemoryNet::discarding()),
                "net: none (the guest's frames are dropped)".into(),
            )),
            NetSpec::Tap(name) => {
                let tap = TapNet::open(name).map_err(|e| {
                    format!("cannot open TAP {name}: {e} (root, /dev/net/tun; or use --net user:127.0.0.1:PORT)")
                })?;
                Ok((
                    Box::new(tap),
                    format!("net: tap {name} (give it 10.0.2.2/24 and bring it up; the guest is 10.0.2.15)"),
                ))
            }
            NetSpec::User(forwards) => {
                let net = UserNet::new(forwards)
                    .map_err(|e| format!("cannot listen for the user-space network: {e}"))?;
                let described: Vec<String> = net.listening().iter().map(describe).collect();
                Ok((Box::new(net), format!("net: user {}", described.join(", "))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(NetSpec::parse("none"), Ok(NetSpec::None));
        assert_eq!(
            NetSpec::parse("tap:hvtap0"),
            Ok(NetSpec::Tap("hvtap0".into()))
        );
        match NetSpec::parse("user:127.0.0.1:8080,127.0.0.1:8007=7") {
            Ok(NetSpec::User(forwards)) => {
                assert_eq!(forwards.len(), 2);
                assert_eq!((forwards[0].guest_port, forwards[1].guest_port), (80, 7));
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            "",
            "tap:",
            "tap:waytoolonginterfacename",
            "user:",
            "user:10.0.0.1:80",
            "slirp",
        ] {
            assert!(NetSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_user_network_says_where_it_listens() {
        let (_, line) = NetSpec::parse("user:127.0.0.1:0").unwrap().open().unwrap();
        assert!(line.starts_with("net: user 127.0.0.1:"), "{line}");
        assert!(line.ends_with(" -> 10.0.2.15:80"), "{line}");
        assert!(!line.contains("127.0.0.1:0 "), "{line}");
    }
}
