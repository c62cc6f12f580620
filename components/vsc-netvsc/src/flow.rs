//! The flow a frame belongs to, for choosing its channel.
//!
//! Frames of one TCP or UDP flow must leave on one channel: the host
//! forwards each channel's frames as they come, so a flow spread over
//! channels arrives reordered (the peer's TCP then sees holes and
//! retransmits). Like Linux's netvsc (which takes the skb's flow hash and
//! the host's send table), the hash covers the IPv4 addresses and, for TCP
//! and UDP, the ports; everything else (ARP, fragments, other protocols)
//! hashes to 0 and goes out on the primary channel's share of the table.

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_VLAN: u16 = 0x8100;
const PROTOCOL_TCP: u8 = 6;
const PROTOCOL_UDP: u8 = 17;

/// The bytes of a frame the hash looks at at most: Ethernet (with one
/// VLAN tag), the IPv4 header with options, the ports.
pub const HEADER_BYTES: usize = 18 + 60 + 4;

/// A hash of the frame's flow, computed from its first bytes (`header`,
/// at most [`HEADER_BYTES`], shorter for a short frame). The client wrote
/// these bytes: anything malformed just hashes to 0.
pub fn flow_hash(header: &[u8]) -> u32 {
    let Some(mut ethertype) = be16(header, 12) else {
        return 0;
    };
    let mut ip = 14;
    if ethertype == ETHERTYPE_VLAN {
        let Some(inner) = be16(header, 16) else {
            return 0;
        };
        ethertype = inner;
        ip = 18;
    }
    if ethertype != ETHERTYPE_IPV4 {
        return 0;
    }
    let Some(&version_ihl) = header.get(ip) else {
        return 0;
    };
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header_len < 20 {
        return 0;
    }
    let (Some(addresses), Some(&protocol), Some(fragment)) = (
        header.get(ip + 12..ip + 20),
        header.get(ip + 9),
        be16(header, ip + 6),
    ) else {
        return 0;
    };
    let mut hash = fnv1a(0x811c_9dc5, addresses);
    // A fragment other than the first has no ports: hash on the addresses
    // only, as the first fragment would not match anyway.
    let first_fragment = fragment & 0x1fff == 0;
    if first_fragment && (protocol == PROTOCOL_TCP || protocol == PROTOCOL_UDP) {
        if let Some(ports) = header.get(ip + header_len..ip + header_len + 4) {
            hash = fnv1a(hash, &[protocol]);
            hash = fnv1a(hash, ports);
        }
    }
    hash
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

fn fnv1a(mut hash: u32, bytes: &[u8]) -> u32 {
    for &byte in bytes {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_frame(source_port: u16, destination_port: u16, payload: u8) -> [u8; 58] {
        let mut frame = [0u8; 58];
        frame[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        frame[14] = 0x45;
        frame[23] = PROTOCOL_TCP;
        frame[26..30].copy_from_slice(&[10, 0, 2, 15]);
        frame[30..34].copy_from_slice(&[10, 0, 2, 2]);
        frame[34..36].copy_from_slice(&source_port.to_be_bytes());
        frame[36..38].copy_from_slice(&destination_port.to_be_bytes());
        frame[57] = payload;
        frame
    }

    #[test]
    fn every_frame_of_a_flow_has_one_hash_and_flows_differ() {
        let a = flow_hash(&tcp_frame(80, 40000, 1));
        assert_eq!(a, flow_hash(&tcp_frame(80, 40000, 2)));
        assert_ne!(a, flow_hash(&tcp_frame(80, 40001, 1)));
        assert_ne!(a, 0);
    }

    #[test]
    fn what_is_not_ipv4_or_is_malformed_hashes_to_zero() {
        let mut arp = tcp_frame(1, 2, 0);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(flow_hash(&arp), 0);
        let mut bad_ihl = tcp_frame(1, 2, 0);
        bad_ihl[14] = 0x41;
        assert_eq!(flow_hash(&bad_ihl), 0);
        assert_eq!(flow_hash(&[0u8; 5]), 0);
        // Cut inside the ports: the addresses still give a flow.
        assert_ne!(flow_hash(&tcp_frame(1, 2, 0)[..36]), 0);
    }
}
