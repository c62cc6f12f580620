//! A hostile GPADL: the input is split into a GpadlHeader and GpadlBody
//! messages (at 0xFF 0xFF separators) and fed to the parser and assembler.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vmbus_protocol::gpadl::GpadlAssembler;
use vmbus_protocol::{parse, ChannelMessage, ProtocolVersion};

fuzz_target!(|data: &[u8]| {
    let mut assembler: Option<GpadlAssembler<1024>> = None;
    for chunk in data.split(|b| *b == 0xFF).filter(|c| !c.is_empty()) {
        let mut message = [0u8; 240];
        let len = chunk.len().min(240);
        message[..len].copy_from_slice(&chunk[..len]);
        // Force the type so most inputs reach the GPADL code.
        let message_type: u32 = if assembler.is_none() { 8 } else { 9 };
        message[..4].copy_from_slice(&message_type.to_le_bytes());
        match parse(&message[..len.max(8)], ProtocolVersion::V5_3) {
            Ok(ChannelMessage::GpadlHeader(header)) => {
                assembler = GpadlAssembler::new(&header).ok();
            }
            Ok(ChannelMessage::GpadlBody(mut body)) => {
                if let Some(assembler) = assembler.as_mut() {
                    body.fixed.gpadl_id = assembler.gpadl_id.into();
                    let _ = assembler.add_body(&body);
                }
            }
            _ => {}
        }
    }
    if let Some(assembler) = assembler {
        if let Ok(ranges) = assembler.ranges() {
            for range in ranges {
                assert!(!range.pfns.is_empty());
            }
        }
    }
});
