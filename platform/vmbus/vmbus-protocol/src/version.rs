//! VMBus protocol versions, the order a guest offers them in, and which
//! synic connection ID carries control messages for each version.

/// A VMBus protocol version as it travels on the wire: `major << 16 | minor`.
///
/// An open newtype rather than an enum because the host may name versions
/// this crate does not know; comparisons are numeric, which matches the
/// protocol's "newer is larger" rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion(pub u32);

impl ProtocolVersion {
    pub const V0_13: Self = Self::new(0, 13);
    pub const V1_1: Self = Self::new(1, 1);
    pub const V2_4: Self = Self::new(2, 4);
    pub const V3_0: Self = Self::new(3, 0);
    pub const V4_0: Self = Self::new(4, 0);
    pub const V4_1: Self = Self::new(4, 1);
    pub const V5_0: Self = Self::new(5, 0);
    pub const V5_1: Self = Self::new(5, 1);
    pub const V5_2: Self = Self::new(5, 2);
    pub const V5_3: Self = Self::new(5, 3);
    pub const V6_0: Self = Self::new(6, 0);

    pub const fn new(major: u16, minor: u16) -> Self {
        Self(((major as u32) << 16) | minor as u32)
    }
    pub const fn major(self) -> u16 {
        (self.0 >> 16) as u16
    }
    pub const fn minor(self) -> u16 {
        self.0 as u16
    }

    /// The synic connection ID that InitiateContact for this version goes to.
    pub const fn initiate_contact_connection_id(self) -> u32 {
        if self.0 >= Self::V5_0.0 {
            CONNECTION_ID_INITIATE_CONTACT_V5
        } else {
            CONNECTION_ID_LEGACY
        }
    }

    /// Whether InitiateContact for this version carries `msg_sint` (and
    /// `msg_vtl`, feature flags) instead of an interrupt page GPA.
    pub const fn uses_message_sint(self) -> bool {
        self.0 >= Self::V5_0.0
    }

    /// The connection ID for every control message after a successful
    /// VersionResponse: from 5.0 the host chooses it (`msg_conn_id`), before
    /// 5.0 it is always 1 (the `msg_conn_id` field is not meaningful there).
    pub const fn message_connection_id(self, msg_conn_id_from_host: u32) -> u32 {
        if self.0 >= Self::V5_0.0 {
            msg_conn_id_from_host
        } else {
            CONNECTION_ID_LEGACY
        }
    }

    /// Whether event flag bit numbers are relids (true from 2.4, the oldest
    /// version this crate negotiates).
    pub const fn event_flags_by_relid(self) -> bool {
        self.0 >= Self::V2_4.0
    }
}

impl core::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{}", self.major(), self.minor())
    }
}

/// Before 5.0 every control message goes to connection 1.
pub const CONNECTION_ID_LEGACY: u32 = 1;
/// From 5.0 InitiateContact goes to connection 4; InvalidConnectionId on it
/// means an older host, so the guest tries the next (older) version.
pub const CONNECTION_ID_INITIATE_CONTACT_V5: u32 = 4;
/// The SINT VMBus delivers control messages on (and `msg_sint` from 5.0).
pub const VMBUS_MESSAGE_SINT: u8 = 2;

/// Versions a guest offers, newest first, without 6.0 (as Linux does).
pub const NEGOTIATION_ORDER: [ProtocolVersion; 8] = [
    ProtocolVersion::V5_3,
    ProtocolVersion::V5_2,
    ProtocolVersion::V5_1,
    ProtocolVersion::V5_0,
    ProtocolVersion::V4_1,
    ProtocolVersion::V4_0,
    ProtocolVersion::V3_0,
    ProtocolVersion::V2_4,
];

/// Versions a guest offers, newest first, with 6.0 in front.
pub const NEGOTIATION_ORDER_WITH_6_0: [ProtocolVersion; 9] = [
    ProtocolVersion::V6_0,
    ProtocolVersion::V5_3,
    ProtocolVersion::V5_2,
    ProtocolVersion::V5_1,
    ProtocolVersion::V5_0,
    ProtocolVersion::V4_1,
    ProtocolVersion::V4_0,
    ProtocolVersion::V3_0,
    ProtocolVersion::V2_4,
];

/// The versions to try in order; `offer_6_0` puts 6.0 first.
pub fn negotiation_order(offer_6_0: bool) -> &'static [ProtocolVersion] {
    if offer_6_0 {
        &NEGOTIATION_ORDER_WITH_6_0
    } else {
        &NEGOTIATION_ORDER
    }
}

/// Host side: whether a requested version is one this crate can serve.
pub fn is_known_negotiable(version: ProtocolVersion) -> bool {
    NEGOTIATION_ORDER_WITH_6_0.contains(&version)
}

/// Feature flags exchanged from 6.0 in InitiateContact (upper 32 bits of the
/// target-info word) and VersionResponse2 (OpenVMM's names).
pub mod feature_flags {
    pub const GUEST_SPECIFIED_SIGNAL_PARAMETERS: u32 = 1 << 0;
    pub const CHANNEL_INTERRUPT_REDIRECTION: u32 = 1 << 1;
    pub const MODIFY_CONNECTION: u32 = 1 << 2;
    pub const CLIENT_ID: u32 = 1 << 3;
    pub const CONFIDENTIAL_CHANNELS: u32 = 1 << 4;
    pub const PAUSE_RESUME: u32 = 1 << 5;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_values_match_the_facts_sheet() {
        assert_eq!(ProtocolVersion::V0_13.0, 0xD);
        assert_eq!(ProtocolVersion::V1_1.0, 0x10001);
        assert_eq!(ProtocolVersion::V2_4.0, 0x20004);
        assert_eq!(ProtocolVersion::V3_0.0, 0x30000);
        assert_eq!(ProtocolVersion::V4_0.0, 0x40000);
        assert_eq!(ProtocolVersion::V4_1.0, 0x40001);
        assert_eq!(ProtocolVersion::V5_0.0, 0x50000);
        assert_eq!(ProtocolVersion::V5_3.0, 0x50003);
        assert_eq!(ProtocolVersion::V6_0.0, 0x60000);
    }

    #[test]
    fn order_is_strictly_descending_and_ends_at_2_4() {
        for order in [negotiation_order(false), negotiation_order(true)] {
            assert!(order.windows(2).all(|pair| pair[0] > pair[1]));
            assert_eq!(*order.last().unwrap(), ProtocolVersion::V2_4);
        }
        assert_eq!(negotiation_order(false)[0], ProtocolVersion::V5_3);
        assert_eq!(negotiation_order(true)[0], ProtocolVersion::V6_0);
    }

    #[test]
    fn connection_ids_change_at_5_0() {
        assert_eq!(ProtocolVersion::V4_1.initiate_contact_connection_id(), 1);
        assert_eq!(ProtocolVersion::V5_0.initiate_contact_connection_id(), 4);
        assert_eq!(ProtocolVersion::V4_1.message_connection_id(0x99), 1);
        assert_eq!(ProtocolVersion::V5_3.message_connection_id(0x99), 0x99);
        assert!(!ProtocolVersion::V4_1.uses_message_sint());
        assert!(ProtocolVersion::V5_0.uses_message_sint());
    }
}
