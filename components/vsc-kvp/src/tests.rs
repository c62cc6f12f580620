extern crate std;
use super::*;
use component_api::Component;
use env_double::EnvDouble;
use ic_channel::testing::*;
use ic_channel::MAX_BAD_IN_A_ROW;
use std::string::String;
use std::vec;
use std::vec::Vec;
use vmbus_protocol::ic::IcMessageHeader;
use zerocopy::{FromZeros, IntoBytes};

/// A fresh `store` region of the size the description gives it.
const STORE_REGION_BYTES: usize = 12288;

/// The driver open, with a fresh `store` region (its second region).
fn opened() -> (EnvDouble, TestHost, Kvp) {
    open_driver_with(|env| {
        assert_eq!(env.add_region(STORE_REGION_BYTES, true), regions::STORE);
    })
}

fn started(offered: &[(u16, u16)]) -> (EnvDouble, TestHost, Kvp) {
    let (mut env, mut host, mut component) = opened();
    negotiate(&mut component, &mut env, &mut host, &[(3, 0)], offered);
    (env, host, component)
}

fn utf16(text: &str) -> Vec<u8> {
    let mut bytes: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
    bytes.extend_from_slice(&[0, 0]);
    bytes
}

fn string_of(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .take_while(|&unit| unit != 0)
        .collect();
    String::from_utf16(&units).unwrap()
}

fn pair(key: &[u8], value: &[u8]) -> KvpValue {
    let mut pair = KvpValue::new_zeroed();
    pair.value_type = value_type::STRING.into();
    pair.key_size = (key.len() as u32).into();
    pair.value_size = (value.len() as u32).into();
    pair.key[..key.len()].copy_from_slice(key);
    pair.value[..value.len()].copy_from_slice(value);
    pair
}

fn get_set(operation: u8, pool: u8, value: KvpValue) -> Vec<u8> {
    let mut body = KvpGetSetMessage::new_zeroed();
    body.header.operation = operation;
    body.header.pool = pool;
    body.value = value;
    ic_request(ic::message_type::KVP, (5, 0), body.as_bytes())
}

fn enumerate(pool: u8, index: u32) -> Vec<u8> {
    let mut body = KvpEnumerateMessage::new_zeroed();
    body.header.operation = kvp_operation::ENUMERATE;
    body.header.pool = pool;
    body.index = index.into();
    ic_request(ic::message_type::KVP, (5, 0), body.as_bytes())
}

fn delete(pool: u8, key: &str) -> Vec<u8> {
    let mut body = KvpDeleteMessage::new_zeroed();
    body.header.operation = kvp_operation::DELETE;
    body.header.pool = pool;
    let key = utf16(key);
    body.key_size = (key.len() as u32).into();
    body.key[..key.len()].copy_from_slice(&key);
    ic_request(ic::message_type::KVP, (5, 0), body.as_bytes())
}

/// Send one request and return the answer's header and body.
fn exchange(
    host: &mut TestHost,
    component: &mut Kvp,
    env: &mut EnvDouble,
    request: &[u8],
) -> Option<(IcMessageHeader, Vec<u8>)> {
    host.send(request);
    notify_synic(component, env);
    host.receive_ic()
}

fn client(component: &mut Kvp, env: &mut EnvDouble, request: Request) -> Reply {
    let message = env_double::encode_request::<vmbus_ipc::kvp::Kvp>(&request);
    let mut reply = [0u8; component_api::MAX_MESSAGE];
    let len = component
        .protected(env, channels::CLIENT, &message, &mut reply)
        .unwrap();
    env_double::decode_reply::<vmbus_ipc::kvp::Kvp>(&reply[..len])
}

fn key(text: &str) -> Key {
    Key::try_from(text).unwrap()
}
fn value(text: &str) -> Value {
    Value::try_from(text).unwrap()
}

/// The driver started again over `store` (kept from an earlier run, as
/// a restart keeps regions), in a fresh environment, open and negotiated.
fn restarted_over(store: component_api::Region) -> (EnvDouble, TestHost, Kvp) {
    let (mut env, mut host, mut component) = open_driver_with(|env| {
        assert_eq!(env.add_region_over(store), regions::STORE);
    });
    negotiate(&mut component, &mut env, &mut host, &[(3, 0)], &[(5, 0)]);
    (env, host, component)
}

#[test]
fn acknowledged_pairs_survive_a_restart_of_the_driver() {
    let (mut env, mut host, mut component) = started(&[(5, 0)]);
    assert!(!env.console.contains("store"), "a fresh store says nothing");
    let request = get_set(
        kvp_operation::SET,
        POOL_EXTERNAL,
        pair(&utf16("HostName"), &utf16("hv-7")),
    );
    let (header, _) = exchange(&mut host, &mut component, &mut env, &request).unwrap();
    assert_eq!(header.status.get(), status::OK);
    let set = |key: &str, value: &str| Request::Set {
        pool: POOL_GUEST,
        key: self::key(key),
        value: self::value(value),
    };
    for (key, value) in [("GuestA", "1"), ("GuestB", "2"), ("GuestA", "3")] {
        assert_eq!(
            client(&mut component, &mut env, set(key, value)),
            Reply::Done
        );
    }
    let request = Request::Delete {
        pool: POOL_GUEST,
        key: key("GuestB"),
    };
    assert_eq!(client(&mut component, &mut env, request), Reply::Done);
    let store = env.test_view(regions::STORE);

    // A new driver (fresh memory) over the same region, as after a
    // restart. The old environment stays alive (shadowed): it owns the
    // region's memory.
    let (mut env, mut host, mut component) = restarted_over(store);
    assert!(
        env.console
            .contains("store: 2 pairs restored (generation 5)"),
        "{}",
        env.console
    );
    let get = |pool: u8, key: &str| Request::Get {
        pool,
        key: self::key(key),
    };
    assert_eq!(
        client(&mut component, &mut env, get(POOL_EXTERNAL, "HostName")),
        Reply::Value(value("hv-7"))
    );
    assert_eq!(
        client(&mut component, &mut env, get(POOL_GUEST, "GuestA")),
        Reply::Value(value("3"))
    );
    assert_eq!(
        client(&mut component, &mut env, get(POOL_GUEST, "GuestB")),
        Reply::NotFound
    );
    // The host sees them too, and a host DELETE is saved as well.
    let (header, body) = exchange(
        &mut host,
        &mut component,
        &mut env,
        &enumerate(POOL_GUEST, 0),
    )
    .unwrap();
    assert_eq!(header.status.get(), status::OK);
    let answer: KvpEnumerateMessage = read_body(&body).unwrap();
    assert_eq!(string_of(&answer.value.key), "GuestA");
    let (header, _) = exchange(
        &mut host,
        &mut component,
        &mut env,
        &delete(POOL_EXTERNAL, "HostName"),
    )
    .unwrap();
    assert_eq!(header.status.get(), status::OK);
    let (mut env, _, mut component) = restarted_over(store);
    assert_eq!(
        client(&mut component, &mut env, get(POOL_EXTERNAL, "HostName")),
        Reply::NotFound
    );
    assert_eq!(component.service.store.count(POOL_GUEST), 1);
}

#[test]
fn a_corrupted_store_is_reported_once_and_the_driver_starts_empty_and_works() {
    let (mut env, _, mut component) = started(&[(5, 0)]);
    let request = Request::Set {
        pool: POOL_GUEST,
        key: key("Lost"),
        value: value("to corruption"),
    };
    assert_eq!(client(&mut component, &mut env, request), Reply::Done);
    let store = env.test_view(regions::STORE);
    // Garbage over both slots' headers and entries.
    let garbage: Vec<u8> = (0..store.len()).map(|i| (i * 7 + 3) as u8).collect();
    store.write(0, &garbage).unwrap();
    let (mut env, mut host, mut component) = restarted_over(store);
    let lines: Vec<&str> = env
        .console
        .lines()
        .filter(|line| line.contains("store"))
        .collect();
    assert_eq!(lines, ["store rejected (bad magic): starting empty"]);
    assert_eq!(component.service.store.used(), 0);
    // It serves, and saves again, as a fresh store would.
    let request = get_set(
        kvp_operation::SET,
        POOL_EXTERNAL,
        pair(&utf16("After"), &utf16("corruption")),
    );
    let (header, _) = exchange(&mut host, &mut component, &mut env, &request).unwrap();
    assert_eq!(header.status.get(), status::OK);
    let (mut env, _, mut component) = restarted_over(store);
    let request = Request::Get {
        pool: POOL_EXTERNAL,
        key: key("After"),
    };
    assert_eq!(
        client(&mut component, &mut env, request),
        Reply::Value(value("corruption"))
    );
}

#[test]
fn without_a_usable_store_region_the_driver_still_serves() {
    let (mut env, mut host, mut component) = open_driver_with::<KvpService>(|env| {
        env.add_region(4096, true);
    });
    negotiate(&mut component, &mut env, &mut host, &[(3, 0)], &[(5, 0)]);
    assert!(env
        .console
        .contains("store region unusable (region too small): pairs will not outlive a restart"));
    let request = Request::Set {
        pool: POOL_GUEST,
        key: key("k"),
        value: value("v"),
    };
    assert_eq!(client(&mut component, &mut env, request), Reply::Done);
}

#[test]
fn negotiates_5_0_and_falls_back() {
    for (offered, chosen) in [
        (vec![(3, 0), (4, 0), (5, 0)], Some(((3, 0), (5, 0)))),
        (vec![(3, 0)], Some(((3, 0), (3, 0)))),
        (vec![(1, 0), (2, 0)], None),
    ] {
        let (mut env, mut host, mut component) = opened();
        let framework = [(3, 0), (1, 0)];
        let answer = negotiate(&mut component, &mut env, &mut host, &framework, &offered);
        assert_eq!(answer, chosen);
    }
}

#[test]
fn host_set_then_client_get() {
    let (mut env, mut host, mut component) = started(&[(5, 0)]);
    let request = get_set(
        kvp_operation::SET,
        POOL_EXTERNAL,
        pair(&utf16("VirtualMachineName"), &utf16("vm-ü-1")),
    );
    let (header, _) = exchange(&mut host, &mut component, &mut env, &request).unwrap();
    assert_eq!(header.status.get(), status::OK);
    assert_eq!(
        header.flags(),
        ic::IcFlags::TRANSACTION | ic::IcFlags::RESPONSE
    );
    assert_eq!(
        client(
            &mut component,
            &mut env,
            Request::Get {
                pool: POOL_EXTERNAL,
                key: key("VirtualMachineName")
            }
        ),
        Reply::Value(value("vm-ü-1"))
    );
    assert_eq!(
        client(
            &mut component,
            &mut env,
            Request::Get {
                pool: POOL_GUEST,
                key: key("VirtualMachineName")
            }
        ),
        Reply::NotFound
    );
    assert!(env
        .console
        .contains("host set pool 0 \"VirtualMachineName\" (7 bytes)"));
}

#[test]
fn client_set_then_host_enumerate_and_get() {
    let (mut env, mut host, mut component) = started(&[(5, 0)]);
    for (k, v) in [("first", "1"), ("second", "zwei")] {
        assert_eq!(
            client(
                &mut component,
                &mut env,
                Request::Set {
                    pool: POOL_GUEST,
                    key: key(k),
                    value: value(v)
                }
            ),
            Reply::Done
        );
    }
    for (index, (k, v)) in [("first", "1"), ("second", "zwei")].iter().enumerate() {
        let (header, body) = exchange(
            &mut host,
            &mut component,
            &mut env,
            &enumerate(POOL_GUEST, index as u32),
        )
        .unwrap();
        assert_eq!(header.status.get(), status::OK);
        let answer: KvpEnumerateMessage = read_body(&body).unwrap();
        assert_eq!(answer.index.get(), index as u32);
        assert_eq!(answer.value.value_type.get(), value_type::STRING);
        assert_eq!(answer.value.key_size.get() as usize, utf16(k).len());
        assert_eq!(answer.value.value_size.get() as usize, utf16(v).len());
        assert_eq!(string_of(answer.value.key_bytes().unwrap()), *k);
        assert_eq!(string_of(answer.value.value_bytes().unwrap()), *v);
    }
    let (header, _) = exchange(
        &mut host,
        &mut component,
        &mut env,
        &enumerate(POOL_GUEST, 2),
    )
    .unwrap();
    assert_eq!(header.status.get(), status::NO_MORE_ITEMS);
    // Updating a pair is quiet (adding one was logged) and moves it last.
    let update = Request::Set {
        pool: POOL_GUEST,
        key: key("first"),
        value: value("1"),
    };
    assert_eq!(client(&mut component, &mut env, update), Reply::Done);
    assert_eq!(
        env.console.matches("client set pool 1 \"first\"").count(),
        1
    );
    let (_, body) = exchange(
        &mut host,
        &mut component,
        &mut env,
        &enumerate(POOL_GUEST, 1),
    )
    .unwrap();
    let answer: KvpEnumerateMessage = read_body(&body).unwrap();
    assert_eq!(string_of(answer.value.key_bytes().unwrap()), "first");
    // GET by key, and a key that is not there.
    let (header, body) = exchange(
        &mut host,
        &mut component,
        &mut env,
        &get_set(kvp_operation::GET, POOL_GUEST, pair(&utf16("second"), &[])),
    )
    .unwrap();
    assert_eq!(header.status.get(), status::OK);
    let answer: KvpGetSetMessage = read_body(&body).unwrap();
    assert_eq!(string_of(answer.value.value_bytes().unwrap()), "zwei");
    let (header, _) = exchange(
        &mut host,
        &mut component,
        &mut env,
        &get_set(kvp_operation::GET, POOL_GUEST, pair(&utf16("third"), &[])),
    )
    .unwrap();
    assert_eq!(header.status.get(), status::FAIL);
}

#[test]
fn pool_rights_are_enforced_both_ways() {
    let (mut env, mut host, mut component) = started(&[(5, 0)]);
    let (header, _) = exchange(
        &mut host,
        &mut component,
        &mut env,
        &get_set(
            kvp_operation::SET,
            POOL_GUEST,
            pair(&utf16("k"), &utf16("v")),
        ),
    )
    .unwrap();
    assert_eq!(header.status.get(), status::ACCESS_DENIED);
    assert_eq!(
        client(
            &mut component,
            &mut env,
            Request::Set {
                pool: POOL_EXTERNAL,
                key: key("k"),
                value: value("v")
            }
        ),
        Reply::Refused
    );
    assert_eq!(
        client(
            &mut component,
            &mut env,
            Request::Enumerate {
                pool: POOL_GUEST,
                index: 0
            }
        ),
        Reply::NotFound
    );
    // An unknown pool is answered, not stored.
    let (header, _) = exchange(
        &mut host,
        &mut component,
        &mut env,
        &get_set(kvp_operation::SET, 9, pair(&utf16("k"), &utf16("v"))),
    )
    .unwrap();
    assert_eq!(header.status.get(), status::INVALID_ARGUMENT);
    assert_eq!(component.service.store.used(), 0);
}

/// Issue 10, item 6: a Windows host sends a 64-bit integer as REG_QWORD
/// (11); 8 (Linux's REG_U64, Windows' REG_RESOURCE_LIST) is not a number.
#[test]
fn qword_is_registry_type_11_and_8_is_refused() {
    assert_eq!(value_type::U64, 11);
    let (mut env, mut host, mut component) = started(&[(5, 0)]);
    let big = 0x1_0000_0002u64;
    let mut qword = pair(&utf16("big"), &big.to_le_bytes());
    qword.value_type = 11.into();
    let (header, _) = exchange(
        &mut host,
        &mut component,
        &mut env,
        &get_set(kvp_operation::SET, POOL_AUTO_EXTERNAL, qword),
    )
    .unwrap();
    assert_eq!(header.status.get(), status::OK);
    assert_eq!(
        component.service.store.get(POOL_AUTO_EXTERNAL, "big"),
        Some("4294967298")
    );
    let mut linux_u64 = pair(&utf16("other"), &big.to_le_bytes());
    linux_u64.value_type = 8.into();
    let (header, _) = exchange(
        &mut host,
        &mut component,
        &mut env,
        &get_set(kvp_operation::SET, POOL_AUTO_EXTERNAL, linux_u64),
    )
    .unwrap();
    assert_eq!(header.status.get(), status::NOT_SUPPORTED);
    assert_eq!(
        component.service.store.get(POOL_AUTO_EXTERNAL, "other"),
        None
    );
}

#[test]
fn host_delete_and_numeric_values() {
    let (mut env, mut host, mut component) = started(&[(5, 0)]);
    let mut number = pair(&utf16("count"), &7u32.to_le_bytes());
    number.value_type = value_type::U32.into();
    let (header, _) = exchange(
        &mut host,
        &mut component,
        &mut env,
        &get_set(kvp_operation::SET, POOL_AUTO_EXTERNAL, number),
    )
    .unwrap();
    assert_eq!(header.status.get(), status::OK);
    assert_eq!(
        component.service.store.get(POOL_AUTO_EXTERNAL, "count"),
        Some("7")
    );
    let (header, _) = exchange(
        &mut host,
        &mut component,
        &mut env,
        &delete(POOL_AUTO_EXTERNAL, "count"),
    )
    .unwrap();
    assert_eq!(header.status.get(), status::OK);
    let (header, _) = exchange(
        &mut host,
        &mut component,
        &mut env,
        &delete(POOL_AUTO_EXTERNAL, "count"),
    )
    .unwrap();
    assert_eq!(header.status.get(), status::FAIL);
    // The IP-injection operations are not supported.
    let mut ip = get_set(kvp_operation::GET_IP_INFO, 0, pair(&utf16("k"), &[]));
    ip.truncate(ic::IC_HEADERS_SIZE + 4 + 8);
    let pipe_size = (ip.len() - 8) as u32;
    ip[4..8].copy_from_slice(&pipe_size.to_le_bytes());
    let (header, _) = exchange(&mut host, &mut component, &mut env, &ip).unwrap();
    assert_eq!(header.status.get(), status::NOT_SUPPORTED);
}

#[test]
fn malformed_requests_are_rejected_without_an_answer() {
    let (mut env, mut host, mut component) = started(&[(5, 0)]);
    let mut bad: Vec<Vec<u8>> = Vec::new();
    // Odd key size.
    bad.push(get_set(
        kvp_operation::SET,
        0,
        pair(&[b'a', 0, 0], &utf16("v")),
    ));
    // Key size beyond the key field.
    let mut oversized = pair(&utf16("k"), &utf16("v"));
    oversized.key_size = 514.into();
    bad.push(get_set(kvp_operation::SET, 0, oversized));
    // Value size beyond the value field.
    let mut oversized = pair(&utf16("k"), &utf16("v"));
    oversized.value_size = u32::MAX.into();
    bad.push(get_set(kvp_operation::SET, 0, oversized));
    // An unpaired surrogate.
    bad.push(get_set(
        kvp_operation::SET,
        0,
        pair(&[0x00, 0xdc, 0, 0], &utf16("v")),
    ));
    // A numeric value shorter than its type.
    let mut short_number = pair(&utf16("n"), &[1, 2]);
    short_number.value_type = value_type::U64.into();
    bad.push(get_set(kvp_operation::SET, 0, short_number));
    // A body cut short, no KVP header at all, and an unknown operation.
    let mut cut = get_set(kvp_operation::SET, 0, pair(&utf16("k"), &utf16("v")));
    cut.truncate(600);
    let pipe_size = (cut.len() - 8) as u32;
    cut[4..8].copy_from_slice(&pipe_size.to_le_bytes());
    bad.push(cut);
    bad.push(ic_request(ic::message_type::KVP, (5, 0), &[1, 0]));
    bad.push(get_set(42, 0, pair(&utf16("k"), &utf16("v"))));
    // Four at a time: a KVP message is a fifth of the ring.
    for batch in bad.chunks(4) {
        for request in batch {
            host.send(request);
        }
        notify_synic(&mut component, &mut env);
    }
    assert!(host.receive().is_none());
    assert_eq!(component.channel.stats().rejected, bad.len() as u32);
    assert!(bad.len() as u32 <= MAX_BAD_IN_A_ROW);
    for reason in [
        "odd UTF-16 size",
        "key size beyond the key field",
        "value size beyond the value field",
        "invalid UTF-16",
        "value shorter than its type",
        "body shorter than its message",
        "no KVP header",
        "unknown KVP operation",
    ] {
        assert!(env.console.contains(reason), "{reason}: {}", env.console);
    }
    assert_eq!(component.service.store.used(), 0);
    // The channel still works.
    let request = get_set(kvp_operation::SET, 0, pair(&utf16("k"), &utf16("v")));
    let (header, _) = exchange(&mut host, &mut component, &mut env, &request).unwrap();
    assert_eq!(header.status.get(), status::OK);
}

#[test]
fn pairs_beyond_the_ipc_limits_or_a_full_store_are_answered_with_errors() {
    let (mut env, mut host, mut component) = started(&[(5, 0)]);
    // 100 two-byte characters: 200 UTF-8 bytes, more than MAX_KEY.
    let long_key = "é".repeat(100);
    let request = get_set(kvp_operation::SET, 0, pair(&utf16(&long_key), &utf16("v")));
    let (header, _) = exchange(&mut host, &mut component, &mut env, &request).unwrap();
    assert_eq!(header.status.get(), status::INVALID_ARGUMENT);
    let empty_key = get_set(kvp_operation::SET, 0, pair(&[0, 0], &utf16("v")));
    let (header, _) = exchange(&mut host, &mut component, &mut env, &empty_key).unwrap();
    assert_eq!(header.status.get(), status::INVALID_ARGUMENT);
    let big_value = "v".repeat(MAX_VALUE);
    let mut last = status::OK;
    for index in 0..10 {
        let name = std::format!("k{index}");
        let request = get_set(
            kvp_operation::SET,
            0,
            pair(&utf16(&name), &utf16(&big_value)),
        );
        last = exchange(&mut host, &mut component, &mut env, &request)
            .unwrap()
            .0
            .status
            .get();
    }
    assert_eq!(last, status::DISK_FULL);
    assert_eq!(
        client(
            &mut component,
            &mut env,
            Request::Get {
                pool: 0,
                key: key("k0")
            }
        ),
        Reply::Value(value(&big_value))
    );
}

#[test]
fn client_delete_and_garbage_calls() {
    let (mut env, _host, mut component) = started(&[(5, 0)]);
    let set = Request::Set {
        pool: POOL_AUTO,
        key: key("a"),
        value: value("b"),
    };
    assert_eq!(client(&mut component, &mut env, set), Reply::Done);
    let delete = Request::Delete {
        pool: POOL_AUTO,
        key: key("a"),
    };
    assert_eq!(
        client(&mut component, &mut env, delete.clone()),
        Reply::Done
    );
    assert_eq!(client(&mut component, &mut env, delete), Reply::NotFound);
    let mut reply = [0u8; 16];
    assert_eq!(
        component.protected(&mut env, channels::CLIENT, &[7, 7, 7], &mut reply),
        Err(Refusal::WRONG_PROTOCOL)
    );
    assert_eq!(
        component.protected(&mut env, channels::VMBUS.channel(), &[0], &mut reply),
        Err(Refusal::NOT_SERVED)
    );
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    /// Size fields worth trying: around the array bounds, odd, huge.
    fn size() -> impl Strategy<Value = u32> {
        prop_oneof![
            0u32..16,
            500u32..530,
            2040u32..2060,
            Just(u32::MAX),
            any::<u32>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(192))]

        /// Whatever KVP message the host sends, the driver answers it or
        /// rejects it, never panics, and keeps its store within bounds.
        #[test]
        fn any_kvp_message_is_answered_or_rejected(
            operation in 0u8..8,
            pool in 0u8..6,
            key_size in size(),
            value_size in size(),
            value_kind in prop_oneof![Just(1u32), Just(4), Just(11), any::<u32>()],
            key in proptest::collection::vec(any::<u8>(), 0..64),
            value in proptest::collection::vec(any::<u8>(), 0..64),
            index in 0u32..4,
            cut in 0usize..2700,
        ) {
            let (mut env, mut host, mut component) = started(&[(5, 0)]);
            let mut body = KvpEnumerateMessage::new_zeroed();
            body.header.operation = operation;
            body.header.pool = pool;
            body.index = index.into();
            body.value.value_type = value_kind.into();
            body.value.key_size = key_size.into();
            body.value.value_size = value_size.into();
            body.value.key[..key.len()].copy_from_slice(&key);
            body.value.value[..value.len()].copy_from_slice(&value);
            let bytes = body.as_bytes();
            let request = ic_request(ic::message_type::KVP, (5, 0), &bytes[..cut.min(bytes.len())]);
            let rejected = component.channel.stats().rejected;
            host.send(&request);
            notify_synic(&mut component, &mut env);
            let answered = host.receive_ic().is_some();
            prop_assert!(answered != (component.channel.stats().rejected == rejected + 1));
            prop_assert!(component.service.store.used() <= store::STORE_BYTES);
        }
    }
}
