//! The console protocol: what every component's `Env::console` sends on
//! its end named `console` (the runtimes frame it), and what the `console`
//! component serves. Text travels as bytes (the console prints invalid
//! UTF-8 replaced), at most [`CHUNK`] per message.

use crate::protocol::{encode, MessageError, Protocol};

/// The most text bytes one console message carries (the rest of
/// [`crate::MAX_MESSAGE`] is the header and the length).
pub const CHUNK: usize = 900;

/// `protocol = "console"`.
pub struct Console;

impl Protocol for Console {
    const NAME: &'static str = "console";
    const VERSION: u16 = 1;
    const OPERATIONS: &'static [&'static str] = &["print"];
    type Request = heapless::Vec<u8, CHUNK>;
    type Reply = ();
    fn operation(_: &Self::Request) -> usize {
        0
    }
}

/// A console message carrying `text` (at most [`CHUNK`] bytes) into
/// `buffer`; its length.
pub fn message(buffer: &mut [u8], text: &[u8]) -> Result<usize, MessageError> {
    if text.len() > CHUNK {
        return Err(MessageError::TooLarge);
    }
    // A byte slice and a `heapless::Vec<u8, _>` have the same encoding.
    encode::<Console, &[u8]>(buffer, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::decode;

    #[test]
    fn text_round_trips_and_the_largest_chunk_fits_a_message() {
        let mut buffer = [0u8; crate::MAX_MESSAGE];
        let used = message(&mut buffer, &[b'x'; CHUNK]).unwrap();
        let text: heapless::Vec<u8, CHUNK> =
            decode::<Console, heapless::Vec<u8, CHUNK>>(&buffer[..used]).unwrap();
        assert_eq!(text.as_slice(), &[b'x'; CHUNK]);
        assert_eq!(
            message(&mut buffer, &[b'x'; CHUNK + 1]),
            Err(MessageError::TooLarge)
        );
    }
}
