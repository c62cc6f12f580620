#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]
// The screen model, the rendering band and the event log are on the heap.
#[cfg(target_os = "none")]
use sel4_heap as _;
#[cfg(target_os = "none")]
sel4_runtime::component_main!(terminal::Terminal);
#[cfg(not(target_os = "none"))]
hosted_runtime::component_main!(terminal::Terminal);
