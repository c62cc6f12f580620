//! The generated ids: channels, regions, children, the `Caller` enum, the
//! `serve::bus` dispatcher and the `drivers::DRIVERS` table (each VSC's
//! classes, child, caller, event channel, ring region and ring sizes).
fn main() {
    sysdesc::emit_ids_for_build_script("vmbus");
}
