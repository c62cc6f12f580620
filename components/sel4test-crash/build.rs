fn main() {
    if std::env::var_os("SYSTEM_DESCRIPTION").is_none() {
        // Our ids come from the bring-up description, not system.toml.
        std::env::set_var("SYSTEM_DESCRIPTION", "tests/systems/sel4test.toml");
    }
    sysdesc::emit_ids_for_build_script("crasher");
}
