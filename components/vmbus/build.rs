//! The generated ids (channels, regions, children, DEVICES) plus the local
//! names of this component's regions, which the bus manager needs to find
//! each VSC's ring region by its map name (`<driver>_ring`).
use std::path::PathBuf;

fn main() {
    sysdesc::emit_ids_for_build_script("vmbus");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("build.rs"));
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("build.rs"));
    let root = sysdesc::find_workspace_root(&manifest_dir).expect("no system.toml above the crate");
    let mut text = String::from(
        "/// Every region's local name, by `RegionName`.\n#[allow(dead_code)]\npub const REGION_NAMES: &[(component_api::RegionName, &str)] = &[",
    );
    for path in sysdesc::description_search_list(&root) {
        if !path.is_file() {
            continue;
        }
        let Ok(layout) = sysdesc::compile_file(&path) else {
            // emit_ids_for_build_script reports description errors.
            continue;
        };
        if let Some(index) = layout.component_index("vmbus") {
            for (position, map) in layout.components[index].maps.iter().enumerate() {
                text.push_str(&format!(
                    "(component_api::RegionName({position}), {:?}), ",
                    map.name.as_str()
                ));
            }
            break;
        }
    }
    text.push_str("];\n");
    let target = out_dir.join("region_names.rs");
    if std::fs::read_to_string(&target).ok().as_deref() != Some(text.as_str()) {
        std::fs::write(&target, text).expect("cannot write region_names.rs");
    }
}
