#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]
#[cfg(target_os = "none")]
sel4_runtime::component_main!(vsc_synthvid::Video);
#[cfg(not(target_os = "none"))]
hosted_runtime::component_main!(vsc_synthvid::Video);
