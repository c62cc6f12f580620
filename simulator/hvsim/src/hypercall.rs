//! Hypercall decoding and validation: the control word rules common to all
//! hypercalls (TLFS "Hypercall Inputs" and "Common Hypercall Status Codes")
//! and the input checks of HvCallPostMessage and HvCallSignalEvent. The
//! result is a validated request; what it does is up to the host.

use alloc::vec::Vec;
use hv_interface::GuestMemory;
use hyperv_defs::{
    call_code, message_type, HvStatus, HypercallControl, PostMessageInput, SignalEventInput,
    MESSAGE_MAX_PAYLOAD, PAGE_SIZE,
};
use zerocopy::FromBytes;

/// A hypercall whose encoding and inputs passed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    PostMessage {
        connection_id: u32,
        message_type: u32,
        payload: Vec<u8>,
    },
    SignalEvent {
        connection_id: u32,
        flag_number: u16,
    },
}

/// Checks that a memory-based input or output parameter block of `len`
/// bytes at `gpa` is 8-aligned, inside one page and inside guest memory.
fn check_parameter_block<M: GuestMemory>(memory: &M, gpa: u64, len: u64) -> Result<(), HvStatus> {
    let crosses_page = (gpa % PAGE_SIZE) + len > PAGE_SIZE;
    if !gpa.is_multiple_of(8) || crosses_page || !memory.contains(gpa, len) {
        return Err(HvStatus::INVALID_ALIGNMENT);
    }
    Ok(())
}

/// Decodes a hypercall. `input` is RDX (a GPA, or the value for a fast
/// call), `_output` is R8 (neither call has output parameters, so the TLFS
/// says it is ignored). The checks apply in the order of
/// `docs/hypervisor-transport.md` section 5.3: the control word
/// ([`check_control`]), then (after the host's privilege check) the input
/// ([`decode_input`]).
pub fn decode<M: GuestMemory>(
    memory: &M,
    control: u64,
    input: u64,
    _output: u64,
) -> Result<Request, HvStatus> {
    let code = check_control(control)?;
    decode_input(memory, code, control, input)
}

/// The checks on the control word alone (RCX): a call code this host
/// implements, no reps, no variable header, no reserved bits, and the
/// fast bit only where the call allows it. Returns the call code.
pub fn check_control(control: u64) -> Result<u16, HvStatus> {
    let control = HypercallControl(control);
    let code = control.code();
    if code != call_code::POST_MESSAGE && code != call_code::SIGNAL_EVENT {
        return Err(HvStatus::INVALID_HYPERCALL_CODE);
    }
    // Both are simple calls without variable headers.
    if control.reserved_bits() != 0
        || control.rep_count() != 0
        || control.rep_start() != 0
        || control.variable_header_qwords() != 0
    {
        return Err(HvStatus::INVALID_HYPERCALL_INPUT);
    }
    // The 256-byte input of HvCallPostMessage cannot be passed in two
    // registers, and this host does not offer XMM fast input.
    if code == call_code::POST_MESSAGE && control.fast() {
        return Err(HvStatus::INVALID_HYPERCALL_INPUT);
    }
    Ok(code)
}

/// The checks on the input of a call whose control word passed
/// [`check_control`]: where it lies, then what it says.
pub fn decode_input<M: GuestMemory>(
    memory: &M,
    code: u16,
    control: u64,
    input: u64,
) -> Result<Request, HvStatus> {
    let control = HypercallControl(control);
    match code {
        call_code::POST_MESSAGE => {
            check_parameter_block(memory, input, 256)?;
            let mut bytes = [0u8; 256];
            memory
                .read(input, &mut bytes)
                .map_err(|_| HvStatus::INVALID_ALIGNMENT)?;
            let posted = PostMessageInput::read_from_bytes(&bytes).expect("256 bytes");
            if posted.reserved != 0
                || posted.message_type == message_type::NONE
                || posted.message_type & message_type::HYPERVISOR_RESERVED_BIT != 0
                || posted.payload_size as usize > MESSAGE_MAX_PAYLOAD
            {
                return Err(HvStatus::INVALID_PARAMETER);
            }
            Ok(Request::PostMessage {
                connection_id: posted.connection_id,
                message_type: posted.message_type,
                payload: posted.payload[..posted.payload_size as usize].to_vec(),
            })
        }
        call_code::SIGNAL_EVENT => {
            let signal = if control.fast() {
                SignalEventInput::from_fast(input)
            } else {
                check_parameter_block(memory, input, 8)?;
                let mut bytes = [0u8; 8];
                memory
                    .read(input, &mut bytes)
                    .map_err(|_| HvStatus::INVALID_ALIGNMENT)?;
                SignalEventInput::read_from_bytes(&bytes).expect("8 bytes")
            };
            if signal.reserved != 0 {
                return Err(HvStatus::INVALID_HYPERCALL_INPUT);
            }
            Ok(Request::SignalEvent {
                connection_id: signal.connection_id,
                flag_number: signal.flag_number,
            })
        }
        _ => Err(HvStatus::INVALID_HYPERCALL_CODE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::VecMemory;

    #[test]
    fn control_word_rules() {
        let memory = VecMemory::new(0x2000);
        let post = HypercallControl::simple(call_code::POST_MESSAGE, false).0;
        assert_eq!(
            decode(&memory, 0x5E, 0, 0),
            Err(HvStatus::INVALID_HYPERCALL_CODE)
        );
        for bad in [1 << 27, 1 << 32, 1 << 48, 1 << 17, 1 << 63] {
            assert_eq!(
                decode(&memory, post | bad, 0, 0),
                Err(HvStatus::INVALID_HYPERCALL_INPUT),
                "{bad:#x}"
            );
        }
        assert_eq!(
            decode(&memory, post | HypercallControl::FAST, 0, 0),
            Err(HvStatus::INVALID_HYPERCALL_INPUT)
        );
    }

    #[test]
    fn post_message_input_rules() {
        let memory = VecMemory::new(0x2000);
        let post = HypercallControl::simple(call_code::POST_MESSAGE, false).0;
        for gpa in [4, 0xF08, 0x2000, u64::MAX - 7] {
            assert_eq!(
                decode(&memory, post, gpa, 0),
                Err(HvStatus::INVALID_ALIGNMENT),
                "{gpa:#x}"
            );
        }
        let write = |connection: u32, reserved: u32, kind: u32, size: u32| {
            let mut bytes = [0u8; 16];
            bytes[0..4].copy_from_slice(&connection.to_le_bytes());
            bytes[4..8].copy_from_slice(&reserved.to_le_bytes());
            bytes[8..12].copy_from_slice(&kind.to_le_bytes());
            bytes[12..16].copy_from_slice(&size.to_le_bytes());
            memory.write(0x1000, &bytes).unwrap();
        };
        write(1, 0, 0, 8);
        assert_eq!(
            decode(&memory, post, 0x1000, 0),
            Err(HvStatus::INVALID_PARAMETER)
        );
        write(1, 0, 0x8000_0001, 8);
        assert_eq!(
            decode(&memory, post, 0x1000, 0),
            Err(HvStatus::INVALID_PARAMETER)
        );
        write(1, 0, 1, 241);
        assert_eq!(
            decode(&memory, post, 0x1000, 0),
            Err(HvStatus::INVALID_PARAMETER)
        );
        write(1, 1, 1, 8);
        assert_eq!(
            decode(&memory, post, 0x1000, 0),
            Err(HvStatus::INVALID_PARAMETER)
        );
        write(7, 0, 1, 240);
        match decode(&memory, post, 0x1000, 0) {
            Ok(Request::PostMessage {
                connection_id: 7,
                message_type: 1,
                payload,
            }) => assert_eq!(payload.len(), 240),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn signal_event_input_rules() {
        let memory = VecMemory::new(0x2000);
        let fast = HypercallControl::simple(call_code::SIGNAL_EVENT, true).0;
        let slow = HypercallControl::simple(call_code::SIGNAL_EVENT, false).0;
        assert_eq!(
            decode(&memory, fast, 0x0000_0003_0000_0011, 0),
            Ok(Request::SignalEvent {
                connection_id: 0x11,
                flag_number: 3
            })
        );
        assert_eq!(
            decode(&memory, fast, 1 << 48 | 0x11, 0),
            Err(HvStatus::INVALID_HYPERCALL_INPUT)
        );
        assert_eq!(
            decode(&memory, slow, 0x1004, 0),
            Err(HvStatus::INVALID_ALIGNMENT)
        );
        memory.write(0x1008, &[0x22, 0, 0, 0, 1, 0, 0, 0]).unwrap();
        assert_eq!(
            decode(&memory, slow, 0x1008, 0),
            Ok(Request::SignalEvent {
                connection_id: 0x22,
                flag_number: 1
            })
        );
    }
}
