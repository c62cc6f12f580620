//! A test double of [`component_api::Env`] for unit tests of a component's
//! logic in one process: it records what the component did (notifications,
//! calls, console text, restarts, power-off), answers protected calls with
//! handlers the test installs, and backs regions with private memory that
//! the test can read and write too (optionally double mapped, optionally
//! with a guest physical address).
//!
//! Component-level tests with real processes use the hosted harness under
//! `tests/`; this double is for fast, deterministic tests beside the code.

use component_api::{
    CallError, Channel, Child, Env, IoPortName, Protocol, Region, RegionAddress, RegionName,
    SupervisorError,
};
use std::collections::HashMap;

/// A request of protocol `P` as it travels (for tests that call a
/// component's `protected` directly).
pub fn encode_request<P: Protocol>(request: &P::Request) -> Vec<u8> {
    let mut buffer = [0u8; component_api::MAX_MESSAGE];
    let used = component_api::protocol::encode::<P, P::Request>(&mut buffer, request)
        .expect("the request fits a message");
    buffer[..used].to_vec()
}

/// A reply of protocol `P` as a component's `protected` wrote it.
pub fn decode_reply<P: Protocol>(reply: &[u8]) -> P::Reply {
    component_api::protocol::decode::<P, P::Reply>(reply).expect("a well-formed reply")
}

type CallHandler = Box<dyn FnMut(&[u8], &mut [u8]) -> Result<usize, CallError>>;

struct Backing {
    // Kept alive for the regions that point into it.
    _memory: Vec<u64>,
    region: Region,
    /// Granted by address only: the component may not map it.
    address_only: bool,
}

#[derive(Default)]
pub struct EnvDouble {
    regions: Vec<Backing>,
    handlers: HashMap<u8, CallHandler>,
    ioports: HashMap<(u8, u16), u32>,
    /// Every notification sent, in order.
    pub notified: Vec<Channel>,
    /// Every protected call made: channel and message bytes.
    pub calls: Vec<(Channel, Vec<u8>)>,
    /// Everything printed to the console.
    pub console: String,
    pub irq_acks: Vec<Channel>,
    /// Every IRQ raised (`Env::irq_raise`), refused or not.
    pub irq_raises: Vec<Channel>,
    /// `irq_raise` answers false (a kernel that refuses the raise).
    pub refuse_irq_raise: bool,
    pub restarted: Vec<Child>,
    pub stopped: Vec<Child>,
    pub powered_off: Option<u8>,
    /// What `now_ns` returns; tests advance it.
    pub now_ns: u64,
    /// IO-port writes, in order: (range, offset, width, value).
    pub ioport_writes: Vec<(IoPortName, u16, u8, u32)>,
    /// What `time_stamp_counter` returns; tests set and advance it.
    pub time_stamp_counter: Option<component_api::TimeStampCounter>,
}

impl EnvDouble {
    pub fn new() -> EnvDouble {
        EnvDouble::default()
    }

    /// Add a region of `len` bytes (a multiple of 8); its `RegionName` is
    /// its position, so add them in the order the component's generated
    /// ids number them.
    pub fn add_region(&mut self, len: usize, writable: bool) -> RegionName {
        self.add_region_with(len, writable, None)
    }

    /// A region that is host visible at `guest_physical`. (Double mapping
    /// needs real page tables: test that with the hosted runtime.)
    pub fn add_region_with(
        &mut self,
        len: usize,
        writable: bool,
        guest_physical: Option<u64>,
    ) -> RegionName {
        assert!(
            len.is_multiple_of(8),
            "region length must be a multiple of 8"
        );
        let mut memory = vec![0u64; len / 8];
        // SAFETY: the memory lives as long as the double (moved into it
        // below without reallocation: a Vec's heap buffer does not move).
        let mut region =
            unsafe { Region::new(memory.as_mut_ptr() as *mut u8, len, writable, false) };
        if let Some(gpa) = guest_physical {
            region = region.with_guest_physical(gpa);
        }
        self.regions.push(Backing {
            _memory: memory,
            region,
            address_only: false,
        });
        RegionName((self.regions.len() - 1) as u8)
    }

    /// Give the component a region over memory the test owns, for memory
    /// another party (a simulated host) must see at the same addresses.
    /// Numbered like [`EnvDouble::add_region`]; the test keeps the memory
    /// alive for as long as the double (it promised so to `Region::new`).
    pub fn add_region_over(&mut self, region: Region) -> RegionName {
        self.regions.push(Backing {
            _memory: Vec::new(),
            region,
            address_only: false,
        });
        RegionName((self.regions.len() - 1) as u8)
    }

    /// A host-visible region granted by address only (`rights =
    /// "address"`): the component learns `guest_physical` and `len` from
    /// `region_address`, and `region` panics for it. The memory exists for
    /// the test (`test_view`), which plays whoever does map it.
    pub fn add_region_address_only(&mut self, len: usize, guest_physical: u64) -> RegionName {
        let name = self.add_region_with(len, true, Some(guest_physical));
        self.regions[name.0 as usize].address_only = true;
        name
    }

    /// [`EnvDouble::add_region_over`] granted by address only: the
    /// component learns the region's guest physical address and size, and
    /// `region` panics for it.
    pub fn add_region_address_over(&mut self, region: Region) -> RegionName {
        let name = self.add_region_over(region);
        self.regions[name.0 as usize].address_only = true;
        name
    }

    /// The region as the test sees it (always writable by the test).
    pub fn test_view(&self, name: RegionName) -> Region {
        let region = self.regions[name.0 as usize].region;
        // SAFETY: same memory, same lifetime; the test may write it.
        unsafe { Region::new(region.as_ptr(), region.len(), true, region.double_mapped()) }
    }

    /// Answer protected calls on `channel` with `handler`.
    pub fn on_call(
        &mut self,
        channel: impl Into<Channel>,
        handler: impl FnMut(&[u8], &mut [u8]) -> Result<usize, CallError> + 'static,
    ) {
        self.handlers.insert(channel.into().0, Box::new(handler));
    }

    /// Answer calls of protocol `P` on `channel` (a message of another
    /// protocol or version is refused, as a real server would).
    pub fn on_typed_call<P: Protocol>(
        &mut self,
        channel: impl Into<Channel>,
        mut handler: impl FnMut(P::Request) -> P::Reply + 'static,
    ) {
        self.on_call(channel.into(), move |message, reply| {
            let request = component_api::decode_request::<P>(message)
                .map_err(|refusal| CallError::Refused(refusal.0))?;
            let response = handler(request);
            component_api::encode_reply::<P>(reply, &response).map_err(|_| CallError::Encoding)
        });
    }

    /// Set what an IO-port read returns.
    pub fn set_ioport(&mut self, port: IoPortName, offset: u16, value: u32) {
        self.ioports.insert((port.0, offset), value);
    }

    /// The notifications sent on `channel` so far.
    pub fn notifications_on(&self, channel: Channel) -> usize {
        self.notified.iter().filter(|c| **c == channel).count()
    }

    /// The requests of protocol `P` made on `channel`, decoded.
    pub fn calls_on<P: Protocol>(&self, channel: impl Into<Channel>) -> Vec<P::Request> {
        let channel = channel.into();
        self.calls
            .iter()
            .filter(|(c, _)| *c == channel)
            .filter_map(|(_, bytes)| component_api::decode_request::<P>(bytes).ok())
            .collect()
    }
}

impl Env for EnvDouble {
    fn notify(&mut self, channel: Channel) {
        self.notified.push(channel);
    }

    fn ppcall(
        &mut self,
        channel: Channel,
        message: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, CallError> {
        if message.len() > component_api::MAX_MESSAGE {
            return Err(CallError::MessageTooLarge);
        }
        self.calls.push((channel, message.to_vec()));
        match self.handlers.get_mut(&channel.0) {
            Some(handler) => handler(message, reply),
            None => Err(CallError::NotACallChannel),
        }
    }

    fn irq_ack(&mut self, channel: Channel) {
        self.irq_acks.push(channel);
    }

    fn irq_raise(&mut self, channel: Channel) -> bool {
        self.irq_raises.push(channel);
        !self.refuse_irq_raise
    }

    fn region(&self, region: RegionName) -> Region {
        match self.regions.get(region.0 as usize) {
            Some(backing) if backing.address_only => {
                panic!("region {} is granted by address only", region.0)
            }
            Some(backing) => backing.region,
            None => panic!("the test gave the component no region {}", region.0),
        }
    }

    fn region_address(&self, region: RegionName) -> Option<RegionAddress> {
        let region = self.regions.get(region.0 as usize)?.region;
        Some(RegionAddress {
            guest_physical: region.guest_physical()?,
            len: region.len(),
        })
    }

    fn ioport_read(&mut self, port: IoPortName, offset: u16, _width: u8) -> u32 {
        self.ioports.get(&(port.0, offset)).copied().unwrap_or(0)
    }

    fn ioport_write(&mut self, port: IoPortName, offset: u16, width: u8, value: u32) {
        self.ioport_writes.push((port, offset, width, value));
    }

    fn console(&mut self, text: &str) {
        self.console.push_str(text);
    }

    fn restart(&mut self, child: Child) -> Result<(), SupervisorError> {
        self.restarted.push(child);
        Ok(())
    }

    fn stop(&mut self, child: Child) -> Result<(), SupervisorError> {
        self.stopped.push(child);
        Ok(())
    }

    fn power_off(&mut self, code: u8) {
        self.powered_off = Some(code);
    }

    fn now_ns(&mut self) -> u64 {
        self.now_ns
    }

    fn time_stamp_counter(&mut self) -> Option<component_api::TimeStampCounter> {
        self.time_stamp_counter
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use component_api::println;

    struct Increment;
    impl Protocol for Increment {
        const NAME: &'static str = "increment";
        const VERSION: u16 = 1;
        const OPERATIONS: &'static [&'static str] = &["increment"];
        type Request = u32;
        type Reply = u32;
        fn operation(_: &u32) -> usize {
            0
        }
    }

    #[test]
    fn records_and_answers() {
        let mut env = EnvDouble::new();
        let queue = env.add_region(4096, true);
        env.on_typed_call::<Increment>(Channel(2), |x| x + 1);
        let reply = component_api::call::<Increment>(&mut env, Channel(2), &41).unwrap();
        assert_eq!(reply, 42);
        env.notify(Channel(1));
        println!(&mut env, "hello {}", 7);
        assert_eq!(env.console, "hello 7\n");
        assert_eq!(env.notifications_on(Channel(1)), 1);
        env.region(queue).write(0, &[1, 2, 3]).unwrap();
        let mut out = [0u8; 3];
        env.test_view(queue).read(0, &mut out).unwrap();
        assert_eq!(out, [1, 2, 3]);
        assert_eq!(env.calls_on::<Increment>(Channel(2)), vec![41]);
        assert_eq!(
            env.ppcall(Channel(9), &[], &mut []),
            Err(CallError::NotACallChannel)
        );
    }
}
