//! The initiator's commands as vstor packets and the host's packets as
//! the initiator's inputs, on `vmbus_protocol::storage` (the formats the
//! simulated host uses too).
//!
//! Sizes follow the negotiated version: until a version is agreed, and for
//! versions before Windows 8, packets are 48 bytes (the SCSI request without
//! the Windows 8 extension, 18 sense bytes); from Windows 8 on, 64 bytes
//! and 20 sense bytes. A completion must be COMPLETE_IO, long enough for
//! what it answers, and its sense length within the version's field.

use crate::initiator::{Command, Control, HostEvent, Properties, Reply, Srb};
use vmbus_protocol::storage::{
    self, channel_flags, data_direction, operation, ChannelProperties, ProtocolVersion,
    ScsiRequest, SubChannelCount, VstorError, MAX_PACKET_SIZE, VSTOR_FLAG_REQUEST_COMPLETION,
};
use zerocopy::IntoBytes;

/// The version packets are sized for before one is agreed (the short form,
/// as the anchors send during negotiation).
pub const NEGOTIATION_SIZE_VERSION: u16 = storage::version::WIN7;

/// Why a host packet was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than its header or than what it answers.
    Truncated,
    /// A completion whose operation is not COMPLETE_IO.
    NotCompleteIo(u32),
    /// Sense length beyond the version's sense field.
    SenseTooLong,
}

/// Where the target is addressed (from QUERY_PROPERTIES; an IDE
/// controller names its one disk's path and target there).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Address {
    pub port: u8,
    pub path_id: u8,
    pub target_id: u8,
}

/// `command` as a vstor packet in `out`; returns its length.
pub fn encode(
    command: &Command,
    version: Option<u16>,
    address: Address,
    out: &mut [u8; MAX_PACKET_SIZE],
) -> usize {
    let size_version = version.unwrap_or(NEGOTIATION_SIZE_VERSION);
    let mut payload = [0u8; storage::PAYLOAD_SIZE];
    let (op, payload_len) = match *command {
        Command::Control(control) => match control {
            Control::BeginInitialization => (operation::BEGIN_INITIALIZATION, 0),
            Control::EndInitialization => (operation::END_INITIALIZATION, 0),
            Control::QueryProperties => (operation::QUERY_PROPERTIES, 0),
            Control::ResetBus => (operation::RESET_BUS, 0),
            Control::QueryProtocolVersion(wanted) => {
                let body = ProtocolVersion {
                    major_minor: wanted.into(),
                    revision: 0.into(),
                };
                payload[..4].copy_from_slice(body.as_bytes());
                (operation::QUERY_PROTOCOL_VERSION, 4)
            }
            Control::CreateSubChannels(count) => {
                let body = SubChannelCount {
                    count: count.into(),
                };
                payload[..2].copy_from_slice(body.as_bytes());
                (operation::CREATE_SUB_CHANNELS, 2)
            }
        },
        Command::Srb(srb) => {
            let request = scsi_request(&srb, size_version, address);
            let bytes = request.as_bytes();
            let len = storage::scsi_request_size(size_version);
            payload[..len].copy_from_slice(&bytes[..len]);
            (operation::EXECUTE_SRB, len)
        }
    };
    storage::write_packet(
        out,
        size_version,
        op,
        VSTOR_FLAG_REQUEST_COMPLETION,
        0,
        &payload[..payload_len],
    )
    .unwrap_or(0)
}

fn scsi_request(srb: &Srb, version: u16, address: Address) -> ScsiRequest {
    let direction = if srb.data.is_empty() {
        data_direction::UNKNOWN
    } else if srb.data_in {
        data_direction::READ
    } else {
        data_direction::WRITE
    };
    let mut request = ScsiRequest::new(
        srb.lun,
        srb.cdb.as_slice(),
        direction,
        srb.data.len(),
        version,
    );
    request.port_number = address.port;
    request.path_id = address.path_id;
    request.target_id = address.target_id;
    request
}

/// A decoded SRB completion (its sense copied out, so it outlives the
/// packet buffer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SrbCompletion {
    pub status: u32,
    pub srb_status: u8,
    pub scsi_status: u8,
    pub transferred: u32,
    pub sense: [u8; storage::SENSE_BUFFER_SIZE],
    pub sense_len: u8,
}

/// A completion, decoded for what it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    Control {
        status: u32,
        properties: Option<(Properties, Address)>,
    },
    Srb(SrbCompletion),
}

impl Completion {
    pub fn reply(&self) -> Reply<'_> {
        match self {
            Completion::Control { status, properties } => Reply::Control {
                status: *status,
                properties: properties.map(|(p, _)| p),
            },
            Completion::Srb(srb) => Reply::Srb {
                status: srb.status,
                srb_status: srb.srb_status,
                scsi_status: srb.scsi_status,
                transferred: srb.transferred,
                sense: &srb.sense[..srb.sense_len as usize],
            },
        }
    }
}

fn truncated(_: VstorError) -> Malformed {
    Malformed::Truncated
}

/// The host's completion `payload` of `sent`, under `version`.
pub fn decode_completion(
    payload: &[u8],
    sent: &Command,
    version: Option<u16>,
) -> Result<Completion, Malformed> {
    let packet = storage::parse(payload).map_err(truncated)?;
    if packet.operation() != operation::COMPLETE_IO {
        return Err(Malformed::NotCompleteIo(packet.operation()));
    }
    let status = packet.header.status.get();
    match sent {
        Command::Control(Control::QueryProperties) if status == 0 => {
            let properties: ChannelProperties = packet.payload_as().map_err(truncated)?;
            let flags = properties.flags.get();
            Ok(Completion::Control {
                status,
                properties: Some((
                    Properties {
                        max_channels: properties.max_channel_count.get(),
                        multi_channel: flags & channel_flags::MULTI_CHANNEL != 0,
                        max_transfer_bytes: properties.max_transfer_bytes.get(),
                    },
                    Address {
                        port: properties.port.get() as u8,
                        path_id: properties.path_id,
                        target_id: properties.target_id,
                    },
                )),
            })
        }
        Command::Control(_) => Ok(Completion::Control {
            status,
            properties: None,
        }),
        Command::Srb(_) => {
            let version = version.unwrap_or(NEGOTIATION_SIZE_VERSION);
            let request = packet.scsi_request().map_err(truncated)?;
            let sense = request
                .sense(version)
                .map_err(|_| Malformed::SenseTooLong)?;
            let mut completion = SrbCompletion {
                status,
                srb_status: request.srb_status,
                scsi_status: request.scsi_status,
                transferred: request.data_transfer_length.get(),
                sense: [0; storage::SENSE_BUFFER_SIZE],
                sense_len: sense.len() as u8,
            };
            completion.sense[..sense.len()].copy_from_slice(sense);
            Ok(Completion::Srb(completion))
        }
    }
}

/// An unsolicited host packet: the event it is, `Ok(None)` for one we
/// take note of and ignore (FC HBA data, event notifications).
pub fn decode_host_packet(payload: &[u8]) -> Result<Option<HostEvent>, Malformed> {
    let packet = storage::parse(payload).map_err(truncated)?;
    Ok(match packet.operation() {
        operation::ENUMERATE_BUS => Some(HostEvent::EnumerateBus),
        operation::REMOVE_DEVICE => Some(HostEvent::RemoveDevice),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::initiator::DataRef;
    use crate::scsi::Cdb;
    use storage::version::{WIN10, WIN7};

    #[test]
    fn packets_are_sized_by_the_version() {
        let mut out = [0u8; MAX_PACKET_SIZE];
        let begin = Command::Control(Control::BeginInitialization);
        assert_eq!(encode(&begin, None, Address::default(), &mut out), 48);
        let query = Command::Control(Control::QueryProtocolVersion(WIN10));
        assert_eq!(encode(&query, None, Address::default(), &mut out), 48);
        assert_eq!(&out[0..4], &9u32.to_le_bytes());
        assert_eq!(&out[4..8], &1u32.to_le_bytes());
        assert_eq!(&out[12..14], &0x0602u16.to_le_bytes());
        let srb = Command::Srb(Srb {
            lun: 3,
            cdb: Cdb::read_write(false, 8, 2),
            data_in: true,
            data: DataRef::Client {
                client: 0,
                offset: 0,
                len: 1024,
            },
        });
        let address = Address {
            port: 1,
            path_id: 0,
            target_id: 0,
        };
        assert_eq!(encode(&srb, Some(WIN10), address, &mut out), 64);
        let request = storage::parse(&out[..64]).unwrap().scsi_request().unwrap();
        assert_eq!(request.length.get(), 0x34);
        assert_eq!(request.lun, 3);
        assert_eq!(request.port_number, 1);
        assert_eq!(request.data_in, data_direction::READ);
        assert_eq!(request.data_transfer_length.get(), 1024);
        assert_eq!(
            request.cdb().unwrap(),
            Cdb::read_write(false, 8, 2).as_slice()
        );
        assert_eq!(request.sense_info_length, 0x14);
        assert_eq!(encode(&srb, Some(WIN7), address, &mut out), 48);
        let request = storage::parse(&out[..48]).unwrap().scsi_request().unwrap();
        assert_eq!(request.length.get(), 0x24);
        assert_eq!(request.sense_info_length, 0x12);
        assert_eq!(request.win8.srb_flags.get(), 0);
    }

    fn completion(version: u16, srb_status: u8, sense_len: u8) -> [u8; MAX_PACKET_SIZE] {
        let mut request = ScsiRequest::new(0, &[0x28; 10], data_direction::READ, 512, version);
        request.srb_status = srb_status;
        request.scsi_status = 2;
        request.sense_info_length = sense_len;
        request.cdb_or_sense[0] = 0x70;
        request.cdb_or_sense[2] = 0x06;
        let mut out = [0u8; MAX_PACKET_SIZE];
        let len = storage::scsi_request_size(version);
        storage::write_packet(
            &mut out,
            version,
            operation::COMPLETE_IO,
            0,
            0,
            &request.as_bytes()[..len],
        )
        .unwrap();
        out
    }

    #[test]
    fn sense_beyond_its_field_is_refused() {
        let sent = Command::Srb(Srb {
            lun: 0,
            cdb: Cdb::read_write(false, 0, 1),
            data_in: true,
            data: DataRef::None,
        });
        let good = completion(WIN10, 0x84, 18);
        match decode_completion(&good, &sent, Some(WIN10)).unwrap() {
            Completion::Srb(srb) => {
                assert_eq!(srb.sense_len, 18);
                assert_eq!(srb.sense[2], 6);
            }
            other => panic!("{other:?}"),
        }
        let long = completion(WIN10, 0x84, 21);
        assert_eq!(
            decode_completion(&long, &sent, Some(WIN10)),
            Err(Malformed::SenseTooLong)
        );
        // 20 fits Windows 8's field, not Windows 7's (18).
        let win7 = completion(WIN7, 0x84, 20);
        assert_eq!(
            decode_completion(&win7[..48], &sent, Some(WIN7)),
            Err(Malformed::SenseTooLong)
        );
        assert_eq!(
            decode_completion(&good[..20], &sent, Some(WIN10)),
            Err(Malformed::Truncated)
        );
        let mut wrong_op = good;
        wrong_op[0] = 3;
        assert_eq!(
            decode_completion(&wrong_op, &sent, Some(WIN10)),
            Err(Malformed::NotCompleteIo(3))
        );
    }

    #[test]
    fn properties_are_read_from_their_completion() {
        let properties = ChannelProperties {
            max_channel_count: 4.into(),
            flags: channel_flags::MULTI_CHANNEL.into(),
            max_transfer_bytes: 0x80000.into(),
            port: 2.into(),
            ..ChannelProperties::default()
        };
        let mut out = [0u8; MAX_PACKET_SIZE];
        let len = storage::write_packet(
            &mut out,
            WIN10,
            operation::COMPLETE_IO,
            0,
            0,
            properties.as_bytes(),
        )
        .unwrap();
        let sent = Command::Control(Control::QueryProperties);
        let decoded = decode_completion(&out[..len], &sent, Some(WIN10)).unwrap();
        assert_eq!(
            decoded,
            Completion::Control {
                status: 0,
                properties: Some((
                    Properties {
                        max_channels: 4,
                        multi_channel: true,
                        max_transfer_bytes: 0x80000
                    },
                    Address {
                        port: 2,
                        path_id: 0,
                        target_id: 0
                    }
                ))
            }
        );
        // Too short to hold the properties.
        assert_eq!(
            decode_completion(&out[..14], &sent, Some(WIN10)),
            Err(Malformed::Truncated)
        );
    }
}
