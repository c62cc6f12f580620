//! The generated ids (channels, regions and REGION_NAMES, children,
//! DEVICES); the bus manager finds each VSC's ring region by its map name
//! (`<driver>_ring`) in REGION_NAMES.
fn main() {
    sysdesc::emit_ids_for_build_script("vmbus");
}
