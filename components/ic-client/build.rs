fn main() {
    sysdesc::emit_ids_for_build_script("client");
    // With a notify end `timesync_event` (timesync ticks after each host
    // sample) the client prints periodically; without it, at start and at
    // shutdown only.
    println!("cargo::rustc-check-cfg=cfg(timesync_event)");
    let out_dir = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let ids = std::fs::read_to_string(out_dir.join("ids.rs")).expect("ids.rs was just written");
    if ids.contains("pub const TIMESYNC_EVENT: Channel") {
        println!("cargo::rustc-cfg=timesync_event");
    }
}
