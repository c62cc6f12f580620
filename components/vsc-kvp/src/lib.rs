//! `kvp`: the key-value-pair exchange integration-component driver, and
//! the guest's key-value service.
//!
//! The channel loop (`ic-channel`) opens the channel, negotiates framework
//! 3.0/1.0 and KVP 5.0/4.0/3.0 and reports them. This crate keeps the
//! pools ([`store`]) and answers the host's operations on them: GET, SET,
//! DELETE and ENUMERATE (keys and values in UTF-16LE on the wire, NUL
//! terminated, sizes in bytes); the IP-injection operations are answered
//! "not supported". Clients use `kvp::Request` on `client`.
//!
//! Who may write which pool, as on Hyper-V: the host writes `EXTERNAL` (0)
//! and `AUTO_EXTERNAL` (3), the guest's clients write `GUEST` (1) and
//! `AUTO` (2); both read every pool. The host enumerates the guest pools.
//!
//! Persistence ([`persist`]): every change to the pools is saved in the
//! private region `store` before it is acknowledged, and loaded (copied
//! out and validated) when the driver starts, so a pair acknowledged to
//! the host or a client outlives a restart of the driver. A store that
//! fails validation is reported in one console line and the driver starts
//! empty.
//!
//! Trusts: nothing from the host, nor the contents of `store`. A body shorter than its operation's
//! message, a size beyond its array or odd, invalid UTF-16, or an unknown
//! operation is rejected (no answer, counted, logged). A well-formed
//! request we will not serve is answered with an error status: a pool the
//! host may not write or does not exist, a key or value beyond the IPC
//! limits (`kvp::MAX_KEY`/`MAX_VALUE` UTF-8 bytes), a full store, a key
//! not found, an index past the end (`HV_S_CONT`). Clients are trusted no
//! further than their requests' types: pool rights and sizes are checked.
//! Writes: its own rings, its `store` region, the console.
#![no_std]
#![forbid(unsafe_code)]

pub mod persist;
pub mod store;

use component_api::{println, Channel, Env, Refusal};
use ic_channel::{body_mut, ChannelIds, DriverService, IcDriver, IcService, Rejection};
use persist::{Loaded, Persistence};
use store::{Store, StoreError};
use vmbus_ipc::kvp::{
    Reply, Request, MAX_KEY, MAX_VALUE, POOL_AUTO, POOL_AUTO_EXTERNAL, POOL_EXTERNAL, POOL_GUEST,
};
use vmbus_protocol::ic::{
    self, kvp_operation, read_body, IcVersion, KvpDeleteMessage, KvpEnumerateMessage,
    KvpGetSetMessage, KvpHeader, KvpValue, STATUS_FAIL, STATUS_OK,
};

include!(concat!(env!("OUT_DIR"), "/ids.rs"));

pub const IDS: ChannelIds = ic_channel::driver_ids!();

/// KVP status codes (HRESULTs as Hyper-V's KVP uses them).
pub mod status {
    pub const OK: u32 = super::STATUS_OK;
    pub const FAIL: u32 = super::STATUS_FAIL;
    /// Enumeration: no pair at this index (the host stops asking).
    pub const NO_MORE_ITEMS: u32 = 0x8007_0103;
    pub const ACCESS_DENIED: u32 = 0x8007_0005;
    pub const NOT_SUPPORTED: u32 = 0x8007_0032;
    pub const INVALID_ARGUMENT: u32 = 0x8007_0057;
    pub const DISK_FULL: u32 = 0x8007_0070;
}

/// KVP value types: Windows registry value types, which is what a
/// Windows host sends (issue 10, item 6).
///
/// The 64-bit integer is `REG_QWORD`, 11 in Windows' `winnt.h`; Microsoft's
/// OpenVMM KVP protocol (`hyperv_ic_protocol::kvp::ValueType`: STRING 1 =
/// REG_SZ, EXPAND_STRING 2 = REG_EXPAND_SZ, DWORD 4 = REG_DWORD, QWORD 11 =
/// REG_QWORD) uses the same numbers. Linux's `uapi/linux/hyperv.h` and
/// FreeBSD's `hv_kvp.h` say `REG_U64` is 8, which in Windows' numbering is
/// REG_RESOURCE_LIST: a value Linux defines but a Windows host does not
/// send for a 64-bit integer. So 11 is right here, and 8 is refused like
/// any other unknown type.
pub mod value_type {
    /// REG_SZ.
    pub const STRING: u32 = 1;
    /// REG_DWORD.
    pub const U32: u32 = 4;
    /// REG_QWORD.
    pub const U64: u32 = 11;
}

pub type Key = heapless::String<MAX_KEY>;
pub type Value = heapless::String<MAX_VALUE>;

fn host_may_write(pool: u8) -> bool {
    pool == POOL_EXTERNAL || pool == POOL_AUTO_EXTERNAL
}

fn client_may_write(pool: u8) -> bool {
    pool == POOL_GUEST || pool == POOL_AUTO
}

/// Why a wire string was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WireText {
    /// Odd size or invalid UTF-16: malformed.
    Malformed(&'static str),
    /// Well formed but longer than the IPC limit.
    TooLong,
}

/// A NUL-terminated UTF-16LE string (the NUL and anything after it
/// ignored) as UTF-8 of at most `N` bytes.
fn from_utf16<const N: usize>(bytes: &[u8]) -> Result<heapless::String<N>, WireText> {
    if !bytes.len().is_multiple_of(2) {
        return Err(WireText::Malformed("odd UTF-16 size"));
    }
    let units = bytes
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .take_while(|&unit| unit != 0);
    let mut text = heapless::String::new();
    for ch in char::decode_utf16(units) {
        let ch = ch.map_err(|_| WireText::Malformed("invalid UTF-16"))?;
        text.push(ch).map_err(|_| WireText::TooLong)?;
    }
    Ok(text)
}

/// Write `text` as UTF-16LE with a NUL into `out`; returns the size in
/// bytes (NUL included), or None if it does not fit.
fn to_utf16(text: &str, out: &mut [u8]) -> Option<u32> {
    let mut used = 0;
    for unit in text.encode_utf16().chain(core::iter::once(0)) {
        out.get_mut(used..used + 2)?
            .copy_from_slice(&unit.to_le_bytes());
        used += 2;
    }
    u32::try_from(used).ok()
}

/// The key of a pair, bounded by its size field.
fn wire_key(bytes: &[u8], size: u32) -> Result<Result<Key, u32>, Rejection> {
    let bytes = bytes
        .get(..size as usize)
        .ok_or(Rejection("key size beyond the key field"))?;
    match from_utf16::<MAX_KEY>(bytes) {
        Ok(key) if key.is_empty() => Ok(Err(status::INVALID_ARGUMENT)),
        Ok(key) => Ok(Ok(key)),
        Err(WireText::TooLong) => Ok(Err(status::INVALID_ARGUMENT)),
        Err(WireText::Malformed(why)) => Err(Rejection(why)),
    }
}

fn wire_value(pair: &KvpValue) -> Result<Result<Value, u32>, Rejection> {
    let bytes = pair
        .value_bytes()
        .map_err(|_| Rejection("value size beyond the value field"))?;
    let number = |len: usize| -> Result<u64, Rejection> {
        let mut raw = [0u8; 8];
        raw[..len].copy_from_slice(
            bytes
                .get(..len)
                .ok_or(Rejection("value shorter than its type"))?,
        );
        Ok(u64::from_le_bytes(raw))
    };
    let mut text = Value::new();
    match pair.value_type.get() {
        value_type::STRING => match from_utf16::<MAX_VALUE>(bytes) {
            Ok(value) => return Ok(Ok(value)),
            Err(WireText::TooLong) => return Ok(Err(status::INVALID_ARGUMENT)),
            Err(WireText::Malformed(why)) => return Err(Rejection(why)),
        },
        value_type::U32 => {
            let _ = core::fmt::write(&mut text, format_args!("{}", number(4)?));
        }
        value_type::U64 => {
            let _ = core::fmt::write(&mut text, format_args!("{}", number(8)?));
        }
        _ => return Ok(Err(status::NOT_SUPPORTED)),
    }
    Ok(Ok(text))
}

/// Fill a pair's key and value (as strings) for an answer.
fn fill_pair(pair: &mut KvpValue, key: Option<&str>, value: &str) -> u32 {
    pair.value_type = value_type::STRING.into();
    if let Some(key) = key {
        pair.key.fill(0);
        match to_utf16(key, &mut pair.key) {
            Some(size) => pair.key_size = size.into(),
            None => return status::FAIL,
        }
    }
    pair.value.fill(0);
    match to_utf16(value, &mut pair.value) {
        Some(size) => pair.value_size = size.into(),
        // Cannot happen within the IPC limits (512 UTF-8 bytes are at most
        // 1026 UTF-16 bytes with the NUL); answered as a failure anyway.
        None => return status::FAIL,
    }
    status::OK
}

#[derive(Default)]
pub struct KvpService {
    pub store: Store,
    pub host_operations: u32,
    /// Where the pools outlive a restart; `None` if the region is unusable
    /// (then they live only as long as the driver).
    pub persistence: Option<Persistence>,
    /// A failed save was reported (once: it would fail every time).
    save_failure_reported: bool,
}

impl KvpService {
    /// Load the pools saved by an earlier run of the driver.
    fn load(&mut self, env: &mut dyn Env) {
        let region = env.region(regions::STORE);
        match Persistence::load(region, &mut self.store) {
            Ok((persistence, loaded)) => {
                match loaded {
                    Loaded::Fresh => {}
                    Loaded::Restored {
                        generation,
                        pairs,
                        rejected: None,
                    } => println!(env, "store: {pairs} pairs restored (generation {generation})"),
                    Loaded::Restored {
                        generation,
                        pairs,
                        rejected: Some(why),
                    } => println!(
                        env,
                        "store: {pairs} pairs restored (generation {generation}; a newer slot was rejected: {why})"
                    ),
                    Loaded::Rejected { why } => {
                        println!(env, "store rejected ({why}): starting empty")
                    }
                }
                self.persistence = Some(persistence);
            }
            Err(why) => println!(
                env,
                "store region unusable ({why}): pairs will not outlive a restart"
            ),
        }
    }

    /// Save the pools after a change, before it is acknowledged.
    fn save(&mut self, env: &mut dyn Env) {
        let Some(persistence) = self.persistence.as_mut() else {
            return;
        };
        if let Err(error) = persistence.save(&self.store) {
            if !self.save_failure_reported {
                self.save_failure_reported = true;
                println!(
                    env,
                    "store save failed ({error:?}): pairs will not outlive a restart"
                );
            }
        }
    }

    fn host_get(&mut self, pool: u8, body: &mut [u8]) -> Result<u32, Rejection> {
        let message: &mut KvpGetSetMessage = body_mut(body)?;
        let key = match wire_key(&message.value.key, message.value.key_size.get())? {
            Ok(key) => key,
            Err(status) => return Ok(status),
        };
        match self.store.get(pool, &key) {
            Some(value) => Ok(fill_pair(&mut message.value, None, value)),
            None => Ok(status::FAIL),
        }
    }

    fn host_set(&mut self, env: &mut dyn Env, pool: u8, body: &mut [u8]) -> Result<u32, Rejection> {
        let message: &mut KvpGetSetMessage = body_mut(body)?;
        let key = match wire_key(&message.value.key, message.value.key_size.get())? {
            Ok(key) => key,
            Err(status) => return Ok(status),
        };
        let value = match wire_value(&message.value)? {
            Ok(value) => value,
            Err(status) => return Ok(status),
        };
        if !host_may_write(pool) {
            println!(env, "host may not write pool {pool}: refused");
            return Ok(status::ACCESS_DENIED);
        }
        match self.store.set(pool, &key, &value) {
            Ok(()) => {
                self.save(env);
                println!(
                    env,
                    "host set pool {pool} \"{key}\" ({} bytes)",
                    value.len()
                );
                Ok(status::OK)
            }
            Err(StoreError::Full) => Ok(status::DISK_FULL),
            Err(_) => Ok(status::INVALID_ARGUMENT),
        }
    }

    fn host_delete(
        &mut self,
        env: &mut dyn Env,
        pool: u8,
        body: &mut [u8],
    ) -> Result<u32, Rejection> {
        let message: &mut KvpDeleteMessage = body_mut(body)?;
        let key = match wire_key(&message.key, message.key_size.get())? {
            Ok(key) => key,
            Err(status) => return Ok(status),
        };
        if !host_may_write(pool) {
            return Ok(status::ACCESS_DENIED);
        }
        Ok(if self.store.delete(pool, &key) {
            self.save(env);
            status::OK
        } else {
            status::FAIL
        })
    }

    fn host_enumerate(&mut self, pool: u8, body: &mut [u8]) -> Result<u32, Rejection> {
        let message: &mut KvpEnumerateMessage = body_mut(body)?;
        let index = message.index.get() as usize;
        match self.store.nth(pool, index) {
            Some((key, value)) => Ok(fill_pair(&mut message.value, Some(key), value)),
            None => Ok(status::NO_MORE_ITEMS),
        }
    }

    /// A client's request.
    pub fn serve(&mut self, env: &mut dyn Env, request: &Request) -> Reply {
        match request {
            Request::Get { pool, key } => match self.store.get(*pool, key) {
                Some(value) => Value::try_from(value).map_or(Reply::Refused, Reply::Value),
                None => Reply::NotFound,
            },
            Request::Set { pool, key, value } => {
                if !client_may_write(*pool) {
                    return Reply::Refused;
                }
                let new_key = self.store.get(*pool, key).is_none();
                match self.store.set(*pool, key, value) {
                    Ok(()) => {
                        self.save(env);
                        // New keys only: clients update their pairs often.
                        if new_key {
                            println!(env, "client set pool {pool} \"{key}\"");
                        }
                        Reply::Done
                    }
                    Err(_) => Reply::Refused,
                }
            }
            Request::Delete { pool, key } => {
                if !client_may_write(*pool) {
                    Reply::Refused
                } else if self.store.delete(*pool, key) {
                    self.save(env);
                    Reply::Done
                } else {
                    Reply::NotFound
                }
            }
            Request::Enumerate { pool, index } => match self.store.nth(*pool, *index as usize) {
                Some((key, value)) => match (Key::try_from(key), Value::try_from(value)) {
                    (Ok(key), Ok(value)) => Reply::Pair { key, value },
                    _ => Reply::Refused,
                },
                None => Reply::NotFound,
            },
        }
    }
}

impl IcService for KvpService {
    const MESSAGE_TYPE: u16 = ic::message_type::KVP;
    const MESSAGE_VERSIONS: &'static [(u16, u16)] = &ic::versions::KVP;

    fn handle(
        &mut self,
        env: &mut dyn Env,
        _version: IcVersion,
        body: &mut [u8],
    ) -> Result<u32, Rejection> {
        let header: KvpHeader = read_body(body).map_err(|_| Rejection("no KVP header"))?;
        let pool = header.pool;
        if header.operation >= kvp_operation::COUNT {
            return Err(Rejection("unknown KVP operation"));
        }
        self.host_operations += 1;
        if pool >= store::POOLS {
            return Ok(status::INVALID_ARGUMENT);
        }
        match header.operation {
            kvp_operation::GET => self.host_get(pool, body),
            kvp_operation::SET => self.host_set(env, pool, body),
            kvp_operation::DELETE => self.host_delete(env, pool, body),
            kvp_operation::ENUMERATE => self.host_enumerate(pool, body),
            // IP address injection (GET/SET_IP_INFO): no network here.
            _ => Ok(status::NOT_SUPPORTED),
        }
    }
}

impl DriverService for KvpService {
    const IDS: ChannelIds = IDS;

    fn start(&mut self, env: &mut dyn Env) {
        self.load(env);
    }

    fn serve_client(
        &mut self,
        env: &mut dyn Env,
        channel: Channel,
        message: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, Refusal> {
        serve::kvp(channel, message, reply, |_, request| {
            Ok(self.serve(env, &request))
        })
    }
}

/// The component: the channel loop around [`KvpService`].
pub type Kvp = IcDriver<KvpService>;

#[cfg(test)]
mod tests;
