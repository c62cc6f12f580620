//! The simulated host as an seL4 protection domain.
//!
//! Guest memory is every host-visible region, which the description maps
//! into this component (sysdesc adds those maps for the `simulated_host`),
//! each at the guest physical address the root task reports for it.
//! `synic`'s hypervisor calls arrive on the `guest` call channel and the
//! synic interrupt leaves on the `interrupt` notify channel
//! ([`hvsim::pd::HostPd`]).
//!
//! Time: the host only runs when something happens, so the description
//! gives it a clock: the `ticker` component notifies its `tick` channel 20
//! times a second. Any notification steps the simulator, as does each call:
//! heartbeat requests, time samples, delayed replies and the operator
//! script ([`hvsim::script::Script`], chosen by build.rs) advance with time.
//!
//! Trusts: nothing from the guest (the simulator validates everything).
//! Writes: the host-visible regions, the interrupt notification and
//! console lines.

use alloc::vec::Vec;
use component_api::{println, Channel, ChannelSet, Component, Env, Refusal, Region};
use hvsim::pd::{HostPd, RegionMemory};
use hvsim::script::ScriptRunner;

include!(concat!(env!("OUT_DIR"), "/ids.rs"));
// `SCRIPT`: the operator script for the description being built (build.rs).
include!(concat!(env!("OUT_DIR"), "/script.rs"));

// The simulator's heap (GPADL tables, queued messages, packet copies).
use sel4_heap as _;

pub struct SimulatedHost {
    host: HostPd<RegionMemory>,
    script: ScriptRunner,
}

impl SimulatedHost {
    fn run_script(&mut self, env: &mut dyn Env) {
        let now = env.now_ns();
        for line in self.script.run(&mut self.host.sim, now) {
            println!(env, "{}", line);
        }
        // The script's requests may have raised the interrupt.
        self.host.step(env);
    }
}

impl Component for SimulatedHost {
    fn init(env: &mut dyn Env) -> Self {
        let regions: Vec<Region> = REGION_NAMES
            .iter()
            .map(|(name, _)| env.region(*name))
            .collect();
        let memory = match RegionMemory::new(&regions) {
            Ok(memory) => memory,
            Err(_) => panic!("host-visible regions overlap"),
        };
        let visible = regions
            .iter()
            .filter(|r| r.guest_physical().is_some())
            .count();
        println!(
            env,
            "simulated Hyper-V host: {} host-visible regions, {} devices, VMBus {}.{} to {}.{}",
            visible,
            SCRIPT.devices.len(),
            SCRIPT.min_version.major(),
            SCRIPT.min_version.minor(),
            SCRIPT.max_version.major(),
            SCRIPT.max_version.minor()
        );
        SimulatedHost {
            host: HostPd::new(memory, SCRIPT.server_config(), channels::INTERRUPT),
            script: ScriptRunner::new(SCRIPT),
        }
    }

    /// A tick (or any notification): run the host.
    fn notified(&mut self, env: &mut dyn Env, _channels: ChannelSet) {
        self.host.step(env);
        self.run_script(env);
    }

    fn protected(
        &mut self,
        env: &mut dyn Env,
        channel: Channel,
        message: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, Refusal> {
        if channel != channels::GUEST {
            return Err(Refusal::NOT_SERVED);
        }
        let length = self.host.call(env, message, reply)?;
        self.run_script(env);
        Ok(length)
    }
}
