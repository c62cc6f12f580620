//! `[[net]]` grants expanded into the net interface
//! (`platform/api/net-queue`, docs/net-interface.md): for grant N of
//! client C (N counts C's grants in file order) six regions,
//! `C_netN_rx_free`, `C_netN_rx_active`, `C_netN_tx_free`,
//! `C_netN_tx_active` (the queues, sized for `buffers` descriptors by
//! `net_queue`), `C_netN_info` (one page) and `C_netN_data` (`buffers`
//! receive then `buffers` transmit buffers of 2048 bytes), mapped
//! read-write into the client as `netN_rx_free`, ..., `netN_data`, and
//! into the driver under their region names. The driver maps the data
//! region read-write too (it copies received frames in); when the driver
//! is a VMBus `[[driver]]` the data region is also host visible, so it may
//! name transmit buffers to the host by address. And one notify channel,
//! `driver.C_netN` / `C.netN`. The client's address configuration
//! (`address`, `gateway`) is checked here and reaches the client in its
//! generated `net::GRANTS`.

use crate::contracts::AddressConfig;
use crate::raw::{RawChannel, RawMap, RawNet, RawRegion, RawSystem, Text};
use crate::{Diagnostic, Source};
use std::net::Ipv4Addr;
use toml::Spanned;

/// The regions of a grant, in the order the tables name them.
pub const PARTS: [&str; 6] = [
    "rx_free",
    "rx_active",
    "tx_free",
    "tx_active",
    "info",
    "data",
];

/// The most buffers per direction (the interface's bound).
pub const MAX_BUFFERS: i64 = net_queue::MAX_BUFFERS as i64;

/// The local name (in the client) of grant `index`'s part `part`.
pub fn client_map_name(index: usize, part: &str) -> String {
    format!("net{index}_{part}")
}

/// The region (and the driver's map) name of grant `index` of `client`.
pub fn region_name(client: &str, index: usize, part: &str) -> String {
    format!("{client}_net{index}_{part}")
}

/// The driver's notify end to grant `index` of `client`.
pub fn driver_end_name(client: &str, index: usize) -> String {
    format!("{client}_net{index}")
}

/// The client's notify end of its grant `index`.
pub fn client_end_name(index: usize) -> String {
    format!("net{index}")
}

/// Grant `position`'s index among its client's grants.
pub fn client_index(nets: &[Spanned<RawNet>], position: usize) -> usize {
    let client = nets[position].get_ref().client.get_ref();
    nets[..position]
        .iter()
        .filter(|n| n.get_ref().client.get_ref() == client)
        .count()
}

/// `address` as written: "dhcp" or "a.b.c.d/prefix"; `Err` says why not.
fn parse_address(text: &str) -> Result<Option<(Ipv4Addr, u8)>, String> {
    if text == "dhcp" {
        return Ok(None);
    }
    let Some((address, prefix)) = text.split_once('/') else {
        return Err(format!(
            "address `{text}`: write \"dhcp\" or an IPv4 address with its prefix length, like \"10.0.2.15/24\""
        ));
    };
    let address: Ipv4Addr = address
        .parse()
        .map_err(|_| format!("address `{text}`: `{address}` is not an IPv4 address"))?;
    let prefix: u8 = match prefix.parse() {
        Ok(p) if (1..=32).contains(&p) => p,
        _ => {
            return Err(format!(
                "address `{text}`: the prefix length must be 1 to 32"
            ))
        }
    };
    if address.is_unspecified()
        || address.is_multicast()
        || address.is_broadcast()
        || address.is_loopback()
    {
        return Err(format!(
            "address `{text}`: not an address a NIC can have (unspecified, loopback, multicast or broadcast)"
        ));
    }
    if prefix <= 30 {
        let host_bits = u32::from(address) & !mask(prefix);
        if host_bits == 0 || host_bits == !mask(prefix) {
            return Err(format!(
                "address `{text}`: the network's own address or its broadcast address, not a host's"
            ));
        }
    }
    Ok(Some((address, prefix)))
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// The address configuration of a stanza; errors are pushed.
pub fn address_config(
    source: &Source<'_>,
    net: &RawNet,
    errors: &mut Vec<Diagnostic>,
) -> Option<AddressConfig> {
    let parsed = match parse_address(net.address.get_ref()) {
        Ok(parsed) => parsed,
        Err(message) => {
            errors.push(source.diagnostic(net.address.span().start, message));
            return None;
        }
    };
    let Some((address, prefix)) = parsed else {
        if let Some(gateway) = &net.gateway {
            errors.push(source.diagnostic(
                gateway.span().start,
                "a gateway with address = \"dhcp\": the DHCP server names the gateway",
            ));
            return None;
        }
        return Some(AddressConfig::Dhcp);
    };
    let gateway = match &net.gateway {
        None => None,
        Some(text) => {
            let Ok(gateway) = text.get_ref().parse::<Ipv4Addr>() else {
                errors.push(source.diagnostic(
                    text.span().start,
                    format!("gateway `{}` is not an IPv4 address", text.get_ref()),
                ));
                return None;
            };
            let same_network =
                u32::from(gateway) & mask(prefix) == u32::from(address) & mask(prefix);
            if !same_network || gateway == address {
                errors.push(source.diagnostic(
                    text.span().start,
                    format!(
                        "gateway {gateway}: it must be another host of {}/{prefix}",
                        Ipv4Addr::from(u32::from(address) & mask(prefix))
                    ),
                ));
                return None;
            }
            Some(gateway.octets())
        }
    };
    Some(AddressConfig::Static {
        address: address.octets(),
        prefix,
        gateway,
    })
}

fn text(at: &Text, value: String) -> Text {
    Spanned::new(at.span(), value)
}

/// Add the expansion of every `[[net]]` to `raw` (after the drivers'
/// expansion: a grant's driver may be a `[[driver]]`). Problems with the
/// stanzas themselves are returned; the rest is checked with everything
/// else.
pub fn expand_nets(source: &Source<'_>, raw: &mut RawSystem) -> Vec<Diagnostic> {
    let mut errors = Vec::new();
    let known = |name: &Text| {
        raw.component
            .iter()
            .any(|c| c.get_ref().name.get_ref() == name.get_ref())
    };
    let mut regions = Vec::new();
    let mut maps = Vec::new();
    let mut channels = Vec::new();
    for (position, stanza) in raw.net.iter().enumerate() {
        let span = stanza.span();
        let net = stanza.get_ref();
        let mut usable = true;
        for (what, name) in [("driver", &net.driver), ("client", &net.client)] {
            if !known(name) {
                errors.push(source.diagnostic(
                    name.span().start,
                    format!(
                        "no component or driver named `{}` (the grant's {what})",
                        name.get_ref()
                    ),
                ));
                usable = false;
            }
        }
        if usable && net.driver.get_ref() == net.client.get_ref() {
            errors.push(source.diagnostic(
                net.client.span().start,
                "a driver cannot be its own net client",
            ));
            usable = false;
        }
        let buffers = *net.buffers.get_ref();
        if !(1..=MAX_BUFFERS).contains(&buffers) {
            errors.push(source.diagnostic(
                net.buffers.span().start,
                format!("{buffers} buffers: a grant has 1 to {MAX_BUFFERS} per direction"),
            ));
            usable = false;
        }
        let config = address_config(source, net, &mut errors);
        usable &= config.is_some();
        if let Some(AddressConfig::Static { address, .. }) = config {
            for (earlier, other) in raw.net[..position].iter().enumerate() {
                let other = other.get_ref();
                let same = parse_address(other.address.get_ref())
                    .ok()
                    .flatten()
                    .is_some_and(|(a, _)| a.octets() == address);
                if same {
                    errors.push(source.diagnostic(
                        net.address.span().start,
                        format!(
                            "address {} is grant {}'s already (to `{}`)",
                            Ipv4Addr::from(address),
                            earlier + 1,
                            other.client.get_ref()
                        ),
                    ));
                }
            }
        }
        if !usable {
            continue;
        }
        let index = client_index(&raw.net, position);
        let vmbus_driver = raw
            .driver
            .iter()
            .any(|d| d.get_ref().name.get_ref() == net.driver.get_ref());
        let client = net.client.get_ref();
        let at = &net.client;
        let queue = net_queue::queue_region_bytes(buffers as usize) as i64;
        let sizes = [
            queue,
            queue,
            queue,
            queue,
            net_queue::INFO_BYTES as i64,
            net_queue::data_region_bytes(buffers as usize) as i64,
        ];
        for (part, bytes) in PARTS.iter().zip(sizes) {
            let is_data = *part == "data";
            let region = text(at, region_name(client, index, part));
            regions.push(Spanned::new(
                span.clone(),
                RawRegion {
                    name: region.clone(),
                    size: Spanned::new(net.buffers.span(), bytes),
                    host_visible: (is_data && vmbus_driver).then(|| Spanned::new(at.span(), true)),
                    physical: None,
                },
            ));
            maps.push(Spanned::new(
                span.clone(),
                RawMap {
                    component: net.client.clone(),
                    region: region.clone(),
                    rights: text(at, "rw".into()),
                    double: None,
                    name: Some(text(at, client_map_name(index, part))),
                },
            ));
            maps.push(Spanned::new(
                span.clone(),
                RawMap {
                    component: net.driver.clone(),
                    region,
                    rights: text(&net.driver, "rw".into()),
                    double: None,
                    name: None,
                },
            ));
        }
        let driver = net.driver.get_ref();
        channels.push(Spanned::new(
            span.clone(),
            RawChannel {
                notify: Some(Spanned::new(
                    at.span(),
                    vec![
                        text(at, format!("{driver}.{}", driver_end_name(client, index))),
                        text(at, format!("{client}.{}", client_end_name(index))),
                    ],
                )),
                call: None,
            },
        ));
    }
    raw.region.extend(regions);
    raw.map.extend(maps);
    raw.channel.extend(channels);
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_parsed_and_checked() {
        assert_eq!(parse_address("dhcp"), Ok(None));
        assert_eq!(
            parse_address("10.0.2.15/24"),
            Ok(Some((Ipv4Addr::new(10, 0, 2, 15), 24)))
        );
        assert!(parse_address("10.0.2.15/32").is_ok());
        for bad in [
            "10.0.2.15",
            "10.0.2/24",
            "10.0.2.15/0",
            "10.0.2.15/33",
            "10.0.2.0/24",
            "10.0.2.255/24",
            "127.0.0.1/8",
            "224.0.0.1/24",
            "0.0.0.0/8",
            "DHCP",
        ] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
        assert_eq!(mask(24), 0xffff_ff00);
        assert_eq!(mask(32), u32::MAX);
        assert_eq!(mask(1), 0x8000_0000);
    }
}
