//! Never built: this package only pins the seL4 kernel source (see Cargo.toml).
