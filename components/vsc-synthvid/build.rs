fn main() {
    sysdesc::emit_ids_for_build_script("video");
}
