//! GUIDs on the wire: 16 bytes in the mixed-endian Microsoft layout (the
//! first three fields little-endian, the last eight bytes as written).

use uuid::Uuid;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// A GUID exactly as it sits in a message; convert with [`WireGuid::to_uuid`].
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(transparent)]
pub struct WireGuid(pub [u8; 16]);

impl WireGuid {
    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid.to_bytes_le())
    }
    pub const fn to_uuid(self) -> Uuid {
        Uuid::from_bytes_le(self.0)
    }
}

impl From<Uuid> for WireGuid {
    fn from(uuid: Uuid) -> Self {
        Self::from_uuid(uuid)
    }
}

/// Device class (interface type) GUIDs from offers.
pub mod class {
    use uuid::{uuid, Uuid};
    pub const NIC: Uuid = uuid!("f8615163-df3e-46c5-913f-f2d2f965ed0e");
    pub const SCSI: Uuid = uuid!("ba6163d9-04a1-4d29-b605-72e2ffb1dc7f");
    pub const IDE: Uuid = uuid!("32412632-86cb-44a2-9b5c-50d1417354f5");
    pub const SHUTDOWN: Uuid = uuid!("0e0b6031-5213-4934-818b-38d90ced39db");
    pub const TIMESYNC: Uuid = uuid!("9527e630-d0ae-497b-adce-e80ab0175caf");
    pub const HEARTBEAT: Uuid = uuid!("57164f39-9115-4e78-ab55-382f3bd5422d");
    pub const KVP: Uuid = uuid!("a9a0f4e7-5a45-4d96-b827-8a841e8c03e6");
    pub const DYNAMIC_MEMORY: Uuid = uuid!("525074dc-8985-46e2-8057-a307dc18a502");
    pub const MOUSE: Uuid = uuid!("cfa8b69e-5b4a-4cc0-b98b-8ba1a1f3f95a");
    pub const KEYBOARD: Uuid = uuid!("f912ad6d-2b17-48ea-bd65-f927a61c7684");
    pub const VSS: Uuid = uuid!("35fa2e29-ea23-4236-96ae-3a6ebacba440");
    pub const SYNTHETIC_VIDEO: Uuid = uuid!("da0a7802-e377-4aac-8e77-0558eb1073f8");
    pub const PCI_PASSTHROUGH: Uuid = uuid!("44c4f61d-4444-4400-9d52-802e27ede19f");

    /// Every class above with a short name (for logs and system.toml).
    pub const ALL: [(&str, Uuid); 13] = [
        ("nic", NIC),
        ("scsi", SCSI),
        ("ide", IDE),
        ("shutdown", SHUTDOWN),
        ("timesync", TIMESYNC),
        ("heartbeat", HEARTBEAT),
        ("kvp", KVP),
        ("dynamic-memory", DYNAMIC_MEMORY),
        ("mouse", MOUSE),
        ("keyboard", KEYBOARD),
        ("vss", VSS),
        ("synthetic-video", SYNTHETIC_VIDEO),
        ("pci-passthrough", PCI_PASSTHROUGH),
    ];

    /// The integration components: the classes whose channels speak the
    /// IC framework's version negotiation (the VSCs report the versions
    /// they negotiated for the status view). Data devices (NIC, storage)
    /// have no such versions.
    pub const INTEGRATION_COMPONENTS: [Uuid; 5] = [SHUTDOWN, TIMESYNC, HEARTBEAT, KVP, VSS];

    /// Whether `class` negotiates IC framework versions.
    pub fn is_integration_component(class: Uuid) -> bool {
        INTEGRATION_COMPONENTS.contains(&class)
    }

    /// The short name of a known class.
    pub fn name_of(class: Uuid) -> Option<&'static str> {
        ALL.iter()
            .find(|(_, uuid)| *uuid == class)
            .map(|(name, _)| *name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_layout_is_mixed_endian() {
        let wire = WireGuid::from_uuid(class::NIC);
        // f8615163-df3e-46c5-913f-f2d2f965ed0e: first three fields reversed.
        assert_eq!(
            wire.0,
            [
                0x63, 0x51, 0x61, 0xf8, 0x3e, 0xdf, 0xc5, 0x46, 0x91, 0x3f, 0xf2, 0xd2, 0xf9, 0x65,
                0xed, 0x0e
            ]
        );
        assert_eq!(wire.to_uuid(), class::NIC);
    }

    #[test]
    fn class_names_are_unique() {
        for (i, (name, uuid)) in class::ALL.iter().enumerate() {
            assert_eq!(class::name_of(*uuid), Some(*name));
            assert!(class::ALL[i + 1..].iter().all(|(_, other)| other != uuid));
        }
    }
}
