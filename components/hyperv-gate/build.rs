//! For the seL4 component: the generated ids of component `hyperv`
//! (`$OUT_DIR/ids.rs`, with `VECTOR_IRQS`: its `[[irq]] vector = N`). The
//! description is the one being built (`SYSTEM_DESCRIPTION`), else the
//! usual search list (system.toml, tests/systems/*.toml), else the
//! top-level `system-hyperv.toml`, the image this component is for: the
//! seL4 clippy run builds every component without naming a description.
//! Hosted (unit tests) nothing is generated: the library needs no ids.
use std::path::{Path, PathBuf};

const COMPONENT: &str = "hyperv";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    let root = sysdesc::find_workspace_root(&manifest_dir).expect("a system.toml above the crate");
    println!("cargo:rerun-if-env-changed=SYSTEM_DESCRIPTION");
    println!(
        "cargo:rerun-if-changed={}",
        root.join("tests").join("systems").display()
    );
    let mut list = sysdesc::description_search_list(&root);
    list.push(root.join("system-hyperv.toml"));
    for path in &list {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let Some(path) = list.iter().find(|path| has_component(path)) else {
        let names: Vec<String> = list.iter().map(|p| p.display().to_string()).collect();
        panic!(
            "\ncomponent `{COMPONENT}` is in none of the system descriptions: {}\n",
            names.join(", ")
        );
    };
    let ids = sysdesc::ids_from_descriptions(std::slice::from_ref(path), COMPONENT)
        .unwrap_or_else(|message| panic!("\n{message}\n"));
    write_if_changed(&out_dir.join("ids.rs"), &ids);
}

fn has_component(path: &Path) -> bool {
    path.is_file()
        && sysdesc::describe_file(path).is_ok_and(|d| d.layout.component_index(COMPONENT).is_some())
}

fn write_if_changed(path: &Path, text: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}
