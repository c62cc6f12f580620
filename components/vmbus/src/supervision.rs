//! Supervision of the VSCs: a fault unbinds, closes and tears down the
//! channel and, once the host holds nothing of it, restarts the VSC (which
//! zeroes its own rings before it opens again), or holds it after repeated
//! faults.

use super::*;

impl Vmbus {
    pub(crate) fn on_fault(&mut self, env: &mut dyn Env, child: Child, fault: Fault) {
        let Some(d) = self.drivers.iter().position(|d| d.wiring.child == child) else {
            println!(env, "fault of a child that drives nothing: {:?}", fault);
            return;
        };
        let now = env.now_ns();
        let driver = &mut self.drivers[d];
        if driver.held || driver.recovering {
            return;
        }
        if driver.fault_times.is_full() {
            driver.fault_times.pop_front();
        }
        let _ = driver.fault_times.push_back(now);
        let hold = driver.fault_times.is_full()
            && driver
                .fault_times
                .front()
                .is_some_and(|first| now.saturating_sub(*first) <= FAULT_WINDOW_NS);
        driver.recovering = true;
        driver.hold_after_recovery = hold;
        driver.faulted_at_ns = Some(now);
        let relid = driver.channel.as_ref().map(|c| c.offer.relid);
        if let Some(channel) = driver.channel.as_mut() {
            channel.want_open = false;
        }
        match relid {
            Some(relid) => println!(
                env,
                "{} faulted ({:?}): recovering relid {}", driver.wiring.name, fault, relid
            ),
            None => println!(env, "{} faulted ({:?})", driver.wiring.name, fault),
        }
        self.status_dirty = true;
        self.reconcile(env, d);
    }

    pub(crate) fn finish_recovery(&mut self, env: &mut dyn Env, d: usize) {
        let unloading = matches!(self.phase, Phase::Unloading { .. } | Phase::Unloaded);
        let driver = &mut self.drivers[d];
        driver.recovering = false;
        if let Some(channel) = driver.channel.as_mut() {
            channel.want_open = false;
            channel.failed = None;
            // The new instance starts with no buffer shared.
            channel.buffers = [BufferRecord::default(); MAX_BUFFERS];
            channel.target_vp = 0;
            channel.retarget_refused = None;
        }
        let name = driver.wiring.name;
        let child = driver.wiring.child;
        if driver.hold_after_recovery {
            driver.held = true;
            driver.faulted_at_ns = None;
            let _ = env.stop(child);
            println!(
                env,
                "{} held stopped: {} faults within {} s",
                name,
                FAULTS_TO_HOLD,
                FAULT_WINDOW_NS / 1_000_000_000
            );
        } else if unloading {
            println!(env, "{} not restarted: the bus is unloading", name);
        } else {
            match env.restart(child) {
                Ok(()) => {
                    let driver = &mut self.drivers[d];
                    driver.restarts = driver.restarts.wrapping_add(1);
                    println!(
                        env,
                        "{} restarted (restart {})", name, self.drivers[d].restarts
                    );
                }
                Err(error) => println!(env, "{} could not be restarted: {:?}", name, error),
            }
        }
        self.status_dirty = true;
    }

    // ---- unload ----
}
