fn main() {
    sysdesc::emit_ids_for_build_script("timesync");
    // The description may give timesync a notify end `client_event` to its
    // client (a tick per host sample); without one, clients only ask.
    println!("cargo::rustc-check-cfg=cfg(client_event)");
    let out_dir = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let ids = std::fs::read_to_string(out_dir.join("ids.rs")).expect("ids.rs was just written");
    if ids.contains("pub const CLIENT_EVENT: Channel") {
        println!("cargo::rustc-cfg=client_event");
    }
}
