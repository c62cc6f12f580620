//! IPC contracts: a protocol names its request and reply types, its wire
//! tag and version, and its operations; every message on a typed channel
//! starts with the protocol's tag and version, so a message meant for
//! another protocol (or a version the receiver does not speak) is refused,
//! never decoded as something else (postcard itself carries no type tag).
//!
//! Wire form of every request and reply: `tag: u32 LE`, `version: u16 LE`,
//! then the postcard encoding of the value, with no byte left over.
//! The tag is the 32-bit FNV-1a hash of the protocol's name.

use crate::{CallError, Channel, Env, Refusal, MAX_MESSAGE};
use core::marker::PhantomData;

/// Bytes of the header in front of every typed message.
pub const HEADER_BYTES: usize = 6;

/// An IPC protocol (implemented once, beside its request and reply types).
/// The system description names it on each call channel that speaks it.
pub trait Protocol: 'static {
    /// The name the system description uses (`protocol = "synic"`).
    const NAME: &'static str;
    /// The one version of the protocol this code speaks.
    const VERSION: u16;
    /// Operation names, snake case, indexed by [`Protocol::operation`].
    /// The description's per-operation caller lists use these names.
    const OPERATIONS: &'static [&'static str];
    /// The tag on the wire, derived from the name.
    const TAG: u32 = protocol_tag(Self::NAME);
    type Request: serde::Serialize + serde::de::DeserializeOwned;
    type Reply: serde::Serialize + serde::de::DeserializeOwned;
    /// The operation (index into [`Protocol::OPERATIONS`]) a request asks for.
    fn operation(request: &Self::Request) -> usize;
}

/// 32-bit FNV-1a of `name`: a protocol's wire tag.
pub const fn protocol_tag(name: &str) -> u32 {
    let bytes = name.as_bytes();
    let mut hash: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u32;
        hash = hash.wrapping_mul(0x0100_0193);
        i += 1;
    }
    hash
}

/// Why a typed message was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageError {
    /// The tag is another protocol's (or none at all).
    WrongProtocol { tag: u32 },
    /// The right protocol in a version this side does not speak.
    UnsupportedVersion { version: u16 },
    /// The body does not decode (or has bytes left over).
    Malformed,
    /// The value does not fit the buffer.
    TooLarge,
}

impl From<MessageError> for Refusal {
    fn from(error: MessageError) -> Refusal {
        match error {
            MessageError::WrongProtocol { .. } => Refusal::WRONG_PROTOCOL,
            MessageError::UnsupportedVersion { .. } => Refusal::UNSUPPORTED_VERSION,
            MessageError::Malformed | MessageError::TooLarge => Refusal::MALFORMED,
        }
    }
}

impl From<MessageError> for CallError {
    fn from(error: MessageError) -> CallError {
        match error {
            MessageError::WrongProtocol { .. } => CallError::WrongProtocol,
            MessageError::UnsupportedVersion { .. } => CallError::UnsupportedVersion,
            MessageError::Malformed | MessageError::TooLarge => CallError::Encoding,
        }
    }
}

/// Encode `value` as a message of protocol `P` into `buffer`.
pub fn encode<P: Protocol, T: serde::Serialize>(
    buffer: &mut [u8],
    value: &T,
) -> Result<usize, MessageError> {
    if buffer.len() < HEADER_BYTES {
        return Err(MessageError::TooLarge);
    }
    buffer[..4].copy_from_slice(&P::TAG.to_le_bytes());
    buffer[4..HEADER_BYTES].copy_from_slice(&P::VERSION.to_le_bytes());
    let body = postcard::to_slice(value, &mut buffer[HEADER_BYTES..])
        .map_err(|_| MessageError::TooLarge)?;
    Ok(HEADER_BYTES + body.len())
}

/// Decode a message of protocol `P`: the tag and version must be `P`'s and
/// the body must be exactly one `T`.
pub fn decode<P: Protocol, T: serde::de::DeserializeOwned>(
    message: &[u8],
) -> Result<T, MessageError> {
    let (Some(tag), Some(version)) = (message.get(..4), message.get(4..HEADER_BYTES)) else {
        return Err(MessageError::WrongProtocol { tag: 0 });
    };
    let tag = u32::from_le_bytes([tag[0], tag[1], tag[2], tag[3]]);
    if tag != P::TAG {
        return Err(MessageError::WrongProtocol { tag });
    }
    let version = u16::from_le_bytes([version[0], version[1]]);
    if version != P::VERSION {
        return Err(MessageError::UnsupportedVersion { version });
    }
    match postcard::take_from_bytes(&message[HEADER_BYTES..]) {
        Ok((value, [])) => Ok(value),
        _ => Err(MessageError::Malformed),
    }
}

/// Server side: the request in `message`, or the refusal the caller gets.
pub fn decode_request<P: Protocol>(message: &[u8]) -> Result<P::Request, Refusal> {
    decode::<P, P::Request>(message).map_err(Refusal::from)
}

/// Server side: encode the reply into the reply buffer.
pub fn encode_reply<P: Protocol>(reply: &mut [u8], value: &P::Reply) -> Result<usize, Refusal> {
    encode::<P, P::Reply>(reply, value).map_err(Refusal::from)
}

/// Make a call of protocol `P` on `channel` (prefer a generated
/// [`Client`] handle, which fixes the protocol per channel).
pub fn call<P: Protocol>(
    env: &mut dyn Env,
    channel: Channel,
    request: &P::Request,
) -> Result<P::Reply, CallError> {
    let mut message = [0u8; MAX_MESSAGE];
    let used = encode::<P, P::Request>(&mut message, request).map_err(|error| match error {
        MessageError::TooLarge => CallError::MessageTooLarge,
        _ => CallError::Encoding,
    })?;
    let mut reply = [0u8; MAX_MESSAGE];
    let reply_len = env.ppcall(channel, &message[..used], &mut reply)?;
    decode::<P, P::Reply>(&reply[..reply_len]).map_err(CallError::from)
}

/// The client end of a call channel that speaks protocol `P`. Generated
/// from the system description: a component can send only `P`'s requests
/// on it and gets `P`'s reply type back.
///
/// ```
/// use component_api::{Channel, Client, Env, Protocol};
/// struct Lamp;
/// impl Protocol for Lamp {
///     const NAME: &'static str = "lamp";
///     const VERSION: u16 = 1;
///     const OPERATIONS: &'static [&'static str] = &["dim"];
///     type Request = u8;
///     type Reply = bool;
///     fn operation(_: &u8) -> usize { 0 }
/// }
/// const LAMP: Client<Lamp> = Client::new(Channel(3));
/// fn dim(env: &mut dyn Env) -> bool {
///     LAMP.call(env, &50).unwrap_or(false)
/// }
/// ```
///
/// Another protocol's request does not compile:
///
/// ```compile_fail
/// use component_api::{Channel, Client, Env, Protocol};
/// struct Lamp;
/// impl Protocol for Lamp {
///     const NAME: &'static str = "lamp";
///     const VERSION: u16 = 1;
///     const OPERATIONS: &'static [&'static str] = &["dim"];
///     type Request = u8;
///     type Reply = bool;
///     fn operation(_: &u8) -> usize { 0 }
/// }
/// const LAMP: Client<Lamp> = Client::new(Channel(3));
/// fn dim(env: &mut dyn Env) -> bool {
///     LAMP.call(env, &"an order for another server").unwrap_or(false)
/// }
/// ```
pub struct Client<P> {
    channel: Channel,
    protocol: PhantomData<fn() -> P>,
}

impl<P> Clone for Client<P> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<P> Copy for Client<P> {}
impl<P> PartialEq for Client<P> {
    fn eq(&self, other: &Self) -> bool {
        self.channel == other.channel
    }
}
impl<P> Eq for Client<P> {}
impl<P> core::fmt::Debug for Client<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Client({})", self.channel.0)
    }
}

impl<P: Protocol> Client<P> {
    /// For generated code (and test doubles).
    pub const fn new(channel: Channel) -> Self {
        Client {
            channel,
            protocol: PhantomData,
        }
    }
    pub const fn channel(self) -> Channel {
        self.channel
    }
    pub fn call(self, env: &mut dyn Env, request: &P::Request) -> Result<P::Reply, CallError> {
        call::<P>(env, self.channel, request)
    }
}

impl<P> From<Client<P>> for Channel {
    fn from(client: Client<P>) -> Channel {
        client.channel
    }
}

/// The mask of operations of `P` named in `names`, for generated
/// caller checks; an unknown name stops the build.
pub const fn operation_mask<P: Protocol>(names: &[&str]) -> u64 {
    let mut mask = 0u64;
    let mut n = 0;
    while n < names.len() {
        let mut found = false;
        let mut op = 0;
        while op < P::OPERATIONS.len() {
            if str_eq(names[n], P::OPERATIONS[op]) {
                mask |= 1 << op;
                found = true;
            }
            op += 1;
        }
        if !found {
            panic!("the system description names an operation this protocol does not have");
        }
        n += 1;
    }
    mask
}

/// The operations of `P` one caller may use: every operation not in
/// `restricted` (open to all clients), and those of `granted`.
pub const fn caller_mask<P: Protocol>(restricted: &[&str], granted: &[&str]) -> u64 {
    let all = if P::OPERATIONS.len() >= 64 {
        u64::MAX
    } else {
        (1u64 << P::OPERATIONS.len()) - 1
    };
    (all & !operation_mask::<P>(restricted)) | operation_mask::<P>(granted)
}

/// Stops the build unless `P` is the protocol the description calls `name`.
pub const fn assert_protocol_name<P: Protocol>(name: &str) {
    if !str_eq(P::NAME, name) {
        panic!("the Rust protocol type does not have the name the system description gives it");
    }
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Server side, for generated dispatchers: decode a request of `P` and
/// check that the caller may ask for its operation (`allowed` is the
/// caller's operation mask from the description).
pub fn decode_allowed<P: Protocol>(message: &[u8], allowed: u64) -> Result<P::Request, Refusal> {
    let request = decode_request::<P>(message)?;
    let operation = P::operation(&request);
    if operation < 64 && allowed & (1 << operation) != 0 {
        Ok(request)
    } else {
        Err(Refusal::DENIED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum CounterRequest {
        Get,
        Add(u8),
    }
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum LampRequest {
        Off,
        Dim(u8),
    }
    struct Counter;
    impl Protocol for Counter {
        const NAME: &'static str = "counter";
        const VERSION: u16 = 2;
        const OPERATIONS: &'static [&'static str] = &["get", "add"];
        type Request = CounterRequest;
        type Reply = u32;
        fn operation(request: &CounterRequest) -> usize {
            match request {
                CounterRequest::Get => 0,
                CounterRequest::Add(_) => 1,
            }
        }
    }
    struct Lamp;
    impl Protocol for Lamp {
        const NAME: &'static str = "lamp";
        const VERSION: u16 = 2;
        const OPERATIONS: &'static [&'static str] = &["off", "dim"];
        type Request = LampRequest;
        type Reply = ();
        fn operation(request: &LampRequest) -> usize {
            match request {
                LampRequest::Off => 0,
                LampRequest::Dim(_) => 1,
            }
        }
    }
    struct CounterV3;
    impl Protocol for CounterV3 {
        const NAME: &'static str = "counter";
        const VERSION: u16 = 3;
        const OPERATIONS: &'static [&'static str] = Counter::OPERATIONS;
        type Request = CounterRequest;
        type Reply = u32;
        fn operation(request: &CounterRequest) -> usize {
            Counter::operation(request)
        }
    }

    fn message<P: Protocol>(request: &P::Request) -> ([u8; 64], usize) {
        let mut buffer = [0u8; 64];
        let used = encode::<P, P::Request>(&mut buffer, request).unwrap();
        (buffer, used)
    }

    #[test]
    fn a_message_round_trips_with_its_tag_and_version() {
        let (buffer, used) = message::<Counter>(&CounterRequest::Add(7));
        assert_eq!(&buffer[..4], &protocol_tag("counter").to_le_bytes());
        assert_eq!(&buffer[4..6], &2u16.to_le_bytes());
        assert_eq!(
            decode_request::<Counter>(&buffer[..used]),
            Ok(CounterRequest::Add(7))
        );
    }

    #[test]
    fn another_protocols_message_is_refused_not_misread() {
        let (buffer, used) = message::<Lamp>(&LampRequest::Dim(9));
        // The bodies have the same shape: without the tag the lamp's
        // request would read as a counter's `Add(9)`.
        let body: CounterRequest = postcard::from_bytes(&buffer[HEADER_BYTES..used]).unwrap();
        assert_eq!(body, CounterRequest::Add(9));
        assert_eq!(
            decode::<Counter, CounterRequest>(&buffer[..used]),
            Err(MessageError::WrongProtocol {
                tag: protocol_tag("lamp")
            })
        );
        assert_eq!(
            decode_request::<Counter>(&buffer[..used]),
            Err(Refusal::WRONG_PROTOCOL)
        );
        // An untagged (raw postcard) message is refused too.
        assert_eq!(
            decode_request::<Counter>(&buffer[HEADER_BYTES..used]),
            Err(Refusal::WRONG_PROTOCOL)
        );
    }

    #[test]
    fn a_version_the_server_does_not_speak_is_refused() {
        let (buffer, used) = message::<CounterV3>(&CounterRequest::Get);
        assert_eq!(
            decode::<Counter, CounterRequest>(&buffer[..used]),
            Err(MessageError::UnsupportedVersion { version: 3 })
        );
        assert_eq!(
            decode_request::<Counter>(&buffer[..used]),
            Err(Refusal::UNSUPPORTED_VERSION)
        );
    }

    #[test]
    fn truncated_or_padded_bodies_are_malformed() {
        let (buffer, used) = message::<Counter>(&CounterRequest::Add(7));
        assert_eq!(
            decode_request::<Counter>(&buffer[..used - 1]),
            Err(Refusal::MALFORMED)
        );
        assert_eq!(
            decode_request::<Counter>(&buffer[..used + 1]),
            Err(Refusal::MALFORMED)
        );
    }

    #[test]
    fn callers_get_only_the_operations_allowed_to_them() {
        const GET_ONLY: u64 = operation_mask::<Counter>(&["get"]);
        assert_eq!(GET_ONLY, 1);
        let (get, get_len) = message::<Counter>(&CounterRequest::Get);
        let (add, add_len) = message::<Counter>(&CounterRequest::Add(1));
        assert_eq!(
            decode_allowed::<Counter>(&get[..get_len], GET_ONLY),
            Ok(CounterRequest::Get)
        );
        assert_eq!(
            decode_allowed::<Counter>(&add[..add_len], GET_ONLY),
            Err(Refusal::DENIED)
        );
        assert_eq!(
            decode_allowed::<Counter>(&add[..add_len], u64::MAX),
            Ok(CounterRequest::Add(1))
        );
    }
}
