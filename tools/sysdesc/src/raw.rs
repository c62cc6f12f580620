//! The description as written, every value with its span. Unknown keys,
//! wrong types and missing keys are rejected here by serde.

use crate::{Diagnostic, Source};
use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

pub type Text = Spanned<String>;
pub type Number = Spanned<i64>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSystem {
    pub version: Number,
    #[serde(default)]
    pub component: Vec<Spanned<RawComponent>>,
    #[serde(default)]
    pub region: Vec<Spanned<RawRegion>>,
    #[serde(default)]
    pub map: Vec<Spanned<RawMap>>,
    #[serde(default)]
    pub channel: Vec<Spanned<RawChannel>>,
    #[serde(default)]
    pub irq: Vec<Spanned<RawIrq>>,
    #[serde(default)]
    pub ioport: Vec<Spanned<RawIoPort>>,
    #[serde(default)]
    pub device: Vec<Spanned<RawDevice>>,
    #[serde(default)]
    pub protocol: Vec<Spanned<RawProtocol>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProtocol {
    pub name: Text,
    /// The Rust type implementing `component_api::Protocol`.
    pub rust: Text,
    /// Operation name -> the components that may call it.
    #[serde(default)]
    pub allow: BTreeMap<String, Spanned<Vec<Text>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDevice {
    pub class: Text,
    pub instance: Option<Text>,
    pub driver: Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawComponent {
    pub name: Text,
    pub package: Text,
    pub priority: Number,
    pub supervisor: Option<Text>,
    pub stack_pages: Option<Number>,
    pub power_off: Option<Spanned<bool>>,
    pub hypervisor: Option<Spanned<bool>>,
    pub simulated_host: Option<Spanned<bool>>,
    /// The protocols this component's code serves.
    #[serde(default)]
    pub serves: Vec<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegion {
    pub name: Text,
    pub size: Number,
    pub host_visible: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMap {
    pub component: Text,
    pub region: Text,
    pub rights: Text,
    pub double: Option<Spanned<bool>>,
    pub name: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChannel {
    pub notify: Option<Spanned<Vec<Text>>>,
    pub call: Option<Spanned<RawCall>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCall {
    pub client: Text,
    pub server: Text,
    pub protocol: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIrq {
    pub component: Text,
    pub name: Text,
    pub irq: Number,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIoPort {
    pub component: Text,
    pub name: Text,
    pub base: Number,
    pub size: Number,
}

pub fn parse(source: &Source<'_>) -> Result<RawSystem, Diagnostic> {
    toml::from_str::<RawSystem>(source.text).map_err(|error| {
        let offset = error.span().map(|s| s.start).unwrap_or(0);
        // toml's message is one line; the position is ours to add.
        let message = error.message().trim().replace('\n', " ");
        source.diagnostic(offset, message)
    })
}
