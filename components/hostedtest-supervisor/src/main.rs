//! Hosted only: this component exists to test the hosted runtime.
#![forbid(unsafe_code)]
hosted_runtime::component_main!(hostedtest_supervisor::Supervisor);
