//! `vmbus-protocol`: the VMBus wire formats as `zerocopy` structures, for
//! guest components and the simulated host alike (`no_std`, no allocation).
//!
//! - [`messages`]: channel messages 1-17, 21-29 with the version that
//!   introduced each, and [`messages::parse`] for received ones.
//! - [`version`]: protocol versions, negotiation order, connection-ID rules.
//! - [`packet`]: ring packet descriptors, GPA ranges, the ring control page,
//!   and [`packet::parse_packet`].
//! - [`gpadl`]: GpadlHeader/GpadlBody construction and assembly, and the
//!   guest's GPADL lifetime table.
//! - [`ic`]: integration-component framing and version negotiation.
//! - [`guid`]: GUIDs in their mixed-endian wire form and the class GUIDs.
//! - [`storage`]: the synthetic storage (storvsc/storvsp) vstor packets,
//!   versions, properties, SCSI request and SRB status.
//! - [`scsi`]: the SCSI commands, data pages and sense data a synthetic
//!   disk speaks.
//! - [`nvsp`]: the synthetic NIC's (netvsc/netvsp) messages, versions,
//!   receive/send buffer handshake, sub-channels and send table.
//! - [`synthvid`]: the synthetic video (framebuffer) messages: versions,
//!   VRAM location, situation, dirt, pointer, resolutions.
//! - [`rndis`]: the RNDIS messages carried inside NVSP: requests,
//!   completions, status indications, data packets with per-packet info,
//!   OIDs, offload and RSS parameters.
//! - [`synthkbd`]: the synthetic keyboard's messages (protocol 1.0,
//!   keystrokes with their UNICODE/BREAK/E0/E1 flags).
//! - [`synthhid`]: the synthetic HID (mouse) messages: pipe and HID
//!   headers, protocol 2.0, device info with the HID class descriptor and
//!   report descriptor, input reports.
//!
//! Trusts nothing it parses: every parser takes bytes already copied into
//! private memory, checks sizes, counts and versions, and returns an error
//! rather than panicking. Writes nothing but the buffers it is handed.
//! The synic/TLFS definitions (MSRs, hypercalls, message slots) live in
//! `hyperv-defs`.

#![no_std]
#![forbid(unsafe_code)]

pub mod datapath_test;
pub mod gpadl;
pub mod guid;
pub mod ic;
pub mod messages;
pub mod nvsp;
pub mod packet;
pub mod rndis;
pub mod scsi;
pub mod storage;
pub mod synthhid;
pub mod synthkbd;
pub mod synthvid;
pub mod version;

pub use guid::WireGuid;
pub use messages::{parse, ChannelMessage, MessageType, ProtocolError, VmbusMessage};
pub use version::ProtocolVersion;
