//! Hosted only: this component exists to test the hosted runtime.
hosted_runtime::component_main!(hostedtest_supervisor::Supervisor);
