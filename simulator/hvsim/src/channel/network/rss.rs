//! Receive-side scaling as a Hyper-V host does it for a synthetic NIC:
//! the Toeplitz hash of a received frame's flow, with the guest's secret
//! key, indexes the guest's indirection table, whose entry names the
//! channel (0 the primary, K sub-channel K) the frame goes up on.
//!
//! The flow: IPv4 source and destination addresses, and for TCP the
//! source and destination ports (NDIS_HASH_TCP_IPV4; NDIS_HASH_IPV4 for
//! other IPv4). Other frames (ARP, IPv6 here) are not hashed and go up
//! on the primary, as a host that does not hash them does.

use alloc::vec::Vec;

/// The hash types a guest may enable (NDIS `NDIS_HASH_*`).
pub const HASH_IPV4: u32 = 0x0000_0100;
pub const HASH_TCP_IPV4: u32 = 0x0000_0200;
/// The only hash function: Toeplitz (`NdisHashFunctionToeplitz`).
pub const HASH_FUNCTION_TOEPLITZ: u32 = 0x0000_0001;
pub const HASH_FUNCTION_MASK: u32 = 0x0000_00FF;

/// The Toeplitz hash of `input` under `key` (at least 4 bytes longer
/// than the input for the full hash; bits beyond the key count as 0).
pub fn toeplitz(key: &[u8], input: &[u8]) -> u32 {
    let key_bit = |bit: usize| -> u32 {
        key.get(bit / 8)
            .map_or(0, |byte| u32::from(byte >> (7 - bit % 8) & 1))
    };
    // The 32-bit window of the key starting at the current input bit.
    let mut window: u32 = (0..32).fold(0, |acc, bit| acc << 1 | key_bit(bit));
    let mut hash = 0;
    for (index, byte) in input.iter().enumerate() {
        for bit in 0..8 {
            if byte & (0x80 >> bit) != 0 {
                hash ^= window;
            }
            window = window << 1 | key_bit(index * 8 + bit + 32);
        }
    }
    hash
}

/// The bytes of a frame's flow a hash type covers, or None if the frame
/// is not hashed (not IPv4, a fragment's ports are not looked at).
pub fn flow_input(frame: &[u8], hash_types: u32) -> Option<(Vec<u8>, u32)> {
    const ETHERTYPE_IPV4: u16 = 0x0800;
    const PROTOCOL_TCP: u8 = 6;
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    if ethertype != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = frame.get(14..)?;
    let version_ihl = *ip.first()?;
    let header_len = usize::from(version_ihl & 0x0F) * 4;
    if version_ihl >> 4 != 4 || header_len < 20 || ip.len() < header_len {
        return None;
    }
    let addresses = &ip[12..20];
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3FFF != 0;
    if ip[9] == PROTOCOL_TCP && !fragment && hash_types & HASH_TCP_IPV4 != 0 {
        if let Some(ports) = ip.get(header_len..header_len + 4) {
            let mut input = addresses.to_vec();
            input.extend_from_slice(ports);
            return Some((input, HASH_TCP_IPV4));
        }
    }
    if hash_types & HASH_IPV4 != 0 {
        return Some((addresses.to_vec(), HASH_IPV4));
    }
    None
}

/// The guest's RSS setting (OID_GEN_RECEIVE_SCALE_PARAMETERS).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RssState {
    pub key: Vec<u8>,
    /// Channel index per entry (a power of two entries).
    pub table: Vec<u32>,
    pub hash_types: u32,
}

impl RssState {
    /// The channel a frame goes up on and its hash (value, type), if RSS
    /// is on and the frame is hashed.
    pub fn channel_for(&self, frame: &[u8]) -> Option<(u32, u32, u32)> {
        if self.table.is_empty() || self.key.is_empty() {
            return None;
        }
        let (input, hash_type) = flow_input(frame, self.hash_types)?;
        let hash = toeplitz(&self.key, &input);
        let entry = self.table[hash as usize & (self.table.len() - 1)];
        Some((entry, hash, hash_type))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Microsoft's RSS verification key and suite ("Verifying the RSS
    /// Hash Calculation").
    const KEY: [u8; 40] = [
        0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f,
        0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30,
        0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
    ];

    fn tcp_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut frame = alloc::vec![0u8; 14 + 20 + 20];
        frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        frame[14] = 0x45;
        frame[14 + 9] = 6;
        frame[14 + 12..14 + 16].copy_from_slice(&src);
        frame[14 + 16..14 + 20].copy_from_slice(&dst);
        frame[34..36].copy_from_slice(&sport.to_be_bytes());
        frame[36..38].copy_from_slice(&dport.to_be_bytes());
        frame
    }

    #[test]
    fn the_verification_suite() {
        // (source, destination, ports) -> (IPv4 hash, TCP/IPv4 hash).
        let cases = [
            (
                [66, 9, 149, 187],
                [161, 142, 100, 80],
                2794,
                1766,
                0x323e_8fc2,
                0x51cc_c178,
            ),
            (
                [199, 92, 111, 2],
                [65, 69, 140, 83],
                14230,
                4739,
                0xd718_262a,
                0xc626_b0ea,
            ),
            (
                [24, 19, 198, 95],
                [12, 22, 207, 184],
                12898,
                38024,
                0xd2d0_a5de,
                0x5c2b_394a,
            ),
        ];
        for (src, dst, sport, dport, ipv4, tcp) in cases {
            let frame = tcp_frame(src, dst, sport, dport);
            let (input, kind) = flow_input(&frame, HASH_IPV4).unwrap();
            assert_eq!((toeplitz(&KEY, &input), kind), (ipv4, HASH_IPV4));
            let (input, kind) = flow_input(&frame, HASH_IPV4 | HASH_TCP_IPV4).unwrap();
            assert_eq!((toeplitz(&KEY, &input), kind), (tcp, HASH_TCP_IPV4));
        }
    }

    #[test]
    fn other_frames_are_not_hashed() {
        let mut arp = alloc::vec![0u8; 42];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(flow_input(&arp, HASH_IPV4 | HASH_TCP_IPV4), None);
        assert_eq!(flow_input(&arp[..10], HASH_IPV4), None);
        let mut bad_ihl = tcp_frame([1, 2, 3, 4], [5, 6, 7, 8], 1, 2);
        bad_ihl[14] = 0x44;
        assert_eq!(flow_input(&bad_ihl, HASH_IPV4), None);
        let tcp = tcp_frame([1, 2, 3, 4], [5, 6, 7, 8], 1, 2);
        assert_eq!(flow_input(&tcp, 0), None);
    }

    #[test]
    fn flows_spread_over_the_table_and_stay_put() {
        let rss = RssState {
            key: KEY.to_vec(),
            table: (0..128).map(|entry| entry % 4).collect(),
            hash_types: HASH_IPV4 | HASH_TCP_IPV4,
        };
        let mut seen = [0u32; 4];
        for port in 0..64u16 {
            let frame = tcp_frame([10, 0, 2, 2], [10, 0, 2, 15], 40000 + port, 80);
            let (channel, _, _) = rss.channel_for(&frame).unwrap();
            assert_eq!(rss.channel_for(&frame).unwrap().0, channel);
            seen[channel as usize] += 1;
        }
        assert!(seen.iter().all(|&count| count > 0), "{seen:?}");
    }
}
