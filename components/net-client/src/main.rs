#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]
// smoltcp keeps its sockets' buffers on the heap.
#[cfg(target_os = "none")]
use sel4_heap as _;
#[cfg(target_os = "none")]
sel4_runtime::component_main!(net_client::Web);
#[cfg(not(target_os = "none"))]
hosted_runtime::component_main!(net_client::Web);
