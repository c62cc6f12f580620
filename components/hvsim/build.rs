//! Generated channel and region ids for the seL4 component (from the
//! system description being built); the hosted transport binary needs none.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        sysdesc::emit_ids_for_build_script("hvsim");
    }
}
