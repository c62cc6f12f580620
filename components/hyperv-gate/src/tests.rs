//! The gate against a fake kernel that records every invocation.
extern crate std;

use super::*;
use component_api::Env;
use env_double::EnvDouble;
use hyperv_defs::{call_code, SynicPageMsr};
use std::collections::BTreeMap;
use std::vec::Vec;

const SYNIC_PAGES_GPA: u64 = 0x20_0000;
const HYPERCALL_PAGES_GPA: u64 = 0x30_0000;
const VECTOR: u8 = 0x50;

#[derive(Default)]
struct FakeKernel {
    msrs: BTreeMap<u32, u64>,
    writes: Vec<(u32, u64, Option<usize>)>,
    hypercalls: Vec<(u64, CallArg, CallArg)>,
    acks: usize,
    refuse: Option<KernelError>,
}

impl KernelHypervisor for FakeKernel {
    fn read_msr(&mut self, msr: u32) -> Result<u64, KernelError> {
        match self.refuse {
            Some(error) => Err(error),
            None => Ok(self.msrs.get(&msr).copied().unwrap_or(0)),
        }
    }
    fn write_msr(&mut self, msr: u32, value: u64, page: Option<usize>) -> Result<(), KernelError> {
        if let Some(error) = self.refuse {
            return Err(error);
        }
        self.writes.push((msr, value, page));
        self.msrs.insert(msr, value);
        Ok(())
    }
    fn hypercall(
        &mut self,
        control: u64,
        input: CallArg,
        output: CallArg,
    ) -> Result<u64, KernelError> {
        if let Some(error) = self.refuse {
            return Err(error);
        }
        self.hypercalls.push((control, input, output));
        Ok(0)
    }
    fn ack_interrupt(&mut self) {
        self.acks += 1;
    }
}

struct Fixture {
    synic_pages: Region,
    hypercall_pages: Region,
}

fn fixture() -> Fixture {
    Fixture {
        synic_pages: Region::leaked(8192).with_guest_physical(SYNIC_PAGES_GPA),
        hypercall_pages: Region::leaked(12288).with_guest_physical(HYPERCALL_PAGES_GPA),
    }
}

fn gate_with(fixture: &Fixture, vector: Option<u8>) -> Gate<FakeKernel> {
    // A private map without a GPA is in the list too, as the component
    // passes all its maps.
    let private = Region::leaked(4096);
    let map = GpaMap::new(&[private, fixture.synic_pages, fixture.hypercall_pages]).unwrap();
    assert_eq!(map.len(), 2);
    Gate::new(FakeKernel::default(), map, vector)
}

fn address(region: &Region, offset: usize) -> usize {
    region.as_ptr() as usize + offset
}

fn write(gate: &mut Gate<FakeKernel>, msr: u32, value: u64) -> Reply {
    gate.handle(Request::MsrWrite { msr, value })
}

fn read(gate: &mut Gate<FakeKernel>, msr: u32) -> Reply {
    gate.handle(Request::MsrRead { msr })
}

#[test]
fn gpas_translate_to_own_pages_within_the_maps_only() {
    let f = fixture();
    let map = GpaMap::new(&[f.synic_pages, f.hypercall_pages]).unwrap();
    assert_eq!(
        map.translate(SYNIC_PAGES_GPA),
        Some(address(&f.synic_pages, 0))
    );
    assert_eq!(
        map.translate(SYNIC_PAGES_GPA + 4096 + 24),
        Some(address(&f.synic_pages, 4096 + 24))
    );
    assert_eq!(
        map.translate(HYPERCALL_PAGES_GPA + 8192),
        Some(address(&f.hypercall_pages, 8192))
    );
    // The page after each region, the page before, and far away.
    assert_eq!(map.translate(SYNIC_PAGES_GPA + 8192), None);
    assert_eq!(map.translate(HYPERCALL_PAGES_GPA + 12288), None);
    assert_eq!(map.translate(SYNIC_PAGES_GPA - 1), None);
    assert_eq!(map.translate(0), None);
    assert_eq!(map.translate(u64::MAX), None);
}

#[test]
fn a_page_only_partly_in_a_map_does_not_translate() {
    let partial = Region::leaked(6144).with_guest_physical(SYNIC_PAGES_GPA);
    let map = GpaMap::new(&[partial]).unwrap();
    assert!(map.translate(SYNIC_PAGES_GPA + 100).is_some());
    // The hypervisor could touch the second page up to its end.
    assert_eq!(map.translate(SYNIC_PAGES_GPA + 4096), None);
}

#[test]
fn a_read_only_map_does_not_translate() {
    let mut env = EnvDouble::new();
    let name = env.add_region_with(4096, false, Some(SYNIC_PAGES_GPA));
    let map = GpaMap::new(&[env.region(name)]).unwrap();
    assert_eq!(map.len(), 1);
    assert_eq!(map.translate(SYNIC_PAGES_GPA), None);
}

#[test]
fn overlapping_misaligned_or_too_many_maps_are_refused() {
    let a = Region::leaked(8192).with_guest_physical(0x4000);
    let b = Region::leaked(4096).with_guest_physical(0x5000);
    assert_eq!(GpaMap::new(&[a, b]).unwrap_err(), MapError::Overlap);
    let c = Region::leaked(4096).with_guest_physical(0x5008);
    assert_eq!(GpaMap::new(&[c]).unwrap_err(), MapError::Misaligned);
    let many: Vec<Region> = (0..=MAX_TRANSLATED_REGIONS as u64)
        .map(|i| Region::leaked(4096).with_guest_physical(0x10_0000 + i * 0x1000))
        .collect();
    assert_eq!(GpaMap::new(&many).unwrap_err(), MapError::TooMany);
}

#[test]
fn synic_page_msrs_carry_the_gates_own_page() {
    let f = fixture();
    let mut gate = gate_with(&f, None);
    let simp = SynicPageMsr::new(SYNIC_PAGES_GPA, true).0;
    let siefp = SynicPageMsr::new(SYNIC_PAGES_GPA + 4096, true).0;
    let tsc = SynicPageMsr::new(HYPERCALL_PAGES_GPA + 4096, true).0;
    assert_eq!(write(&mut gate, msr::SIMP, simp), Reply::Done);
    assert_eq!(write(&mut gate, msr::SIEFP, siefp), Reply::Done);
    assert_eq!(write(&mut gate, REFERENCE_TSC_MSR, tsc), Reply::Done);
    assert_eq!(
        gate.kernel().writes,
        [
            (msr::SIMP, simp, Some(address(&f.synic_pages, 0))),
            (msr::SIEFP, siefp, Some(address(&f.synic_pages, 4096))),
            (
                REFERENCE_TSC_MSR,
                tsc,
                Some(address(&f.hypercall_pages, 4096))
            ),
        ]
    );
    // Reads pass through (the kernel knows the value).
    assert_eq!(read(&mut gate, msr::SIMP), Reply::Value(simp));
    assert_eq!(gate.counters.refused_gpas, 0);
}

#[test]
fn an_enabled_page_outside_the_maps_is_refused_and_counted() {
    let f = fixture();
    let mut gate = gate_with(&f, None);
    for (number, gpa) in [
        (msr::SIMP, SYNIC_PAGES_GPA + 8192),
        (msr::SIEFP, 0x1000),
        (REFERENCE_TSC_MSR, 0x7fff_f000),
        (msr::HYPERCALL, HYPERCALL_PAGES_GPA + 12288),
    ] {
        assert_eq!(
            write(&mut gate, number, gpa | 1),
            Reply::GeneralProtection,
            "{number:#x}"
        );
    }
    assert_eq!(gate.counters.refused_gpas, 4);
    assert!(gate.kernel().writes.is_empty());
}

#[test]
fn disabling_a_page_msr_needs_no_page_of_ours() {
    let f = fixture();
    let mut gate = gate_with(&f, None);
    assert_eq!(write(&mut gate, msr::SIMP, 0), Reply::Done);
    assert_eq!(
        write(&mut gate, msr::SIEFP, SYNIC_PAGES_GPA + 4096),
        Reply::Done
    );
    assert_eq!(
        gate.kernel().writes,
        [
            (msr::SIMP, 0, None),
            (
                msr::SIEFP,
                SYNIC_PAGES_GPA + 4096,
                Some(address(&f.synic_pages, 4096))
            )
        ]
    );
    assert_eq!(gate.counters.refused_gpas, 0);
}

#[test]
fn the_hypercall_msr_enables_the_kernels_page_and_reads_back_synics() {
    let f = fixture();
    let mut gate = gate_with(&f, None);
    // Before synic enables it: disabled whatever the kernel has.
    gate.kernel.msrs.insert(msr::HYPERCALL, 0xabc_d000 | 1);
    assert_eq!(read(&mut gate, msr::HYPERCALL), Reply::Value(0));
    let value = (HYPERCALL_PAGES_GPA + 8192) | 1;
    assert_eq!(write(&mut gate, msr::HYPERCALL, value), Reply::Done);
    // Passed on without a page: the kernel uses its own.
    assert_eq!(gate.kernel().writes, [(msr::HYPERCALL, value, None)]);
    // The kernel reports its own page's address; synic sees its own.
    gate.kernel.msrs.insert(msr::HYPERCALL, 0xabc_d000 | 1);
    assert_eq!(read(&mut gate, msr::HYPERCALL), Reply::Value(value));
    // The kernel's own page is not enabled: neither is synic's.
    gate.kernel.msrs.insert(msr::HYPERCALL, 0);
    assert_eq!(read(&mut gate, msr::HYPERCALL), Reply::Value(value & !1));
    // A write the kernel refuses is not kept.
    gate.kernel.refuse = Some(KernelError::NoHyperV);
    assert_eq!(
        write(&mut gate, msr::HYPERCALL, 0),
        Reply::GeneralProtection
    );
    gate.kernel.refuse = None;
    gate.kernel.msrs.insert(msr::HYPERCALL, 1);
    assert_eq!(read(&mut gate, msr::HYPERCALL), Reply::Value(value));
}

#[test]
fn sint_vectors_become_the_irqs_vector_and_read_back_as_synics() {
    let f = fixture();
    let mut gate = gate_with(&f, Some(VECTOR));
    let sint2 = msr::SINT0 + 2;
    let synics = SintMsr::new(0x30, false, true).0;
    assert_eq!(write(&mut gate, sint2, synics), Reply::Done);
    // Auto-EOI off: the kernel sends the APIC its EOI itself.
    assert_eq!(
        gate.kernel().writes,
        [(sint2, SintMsr::new(VECTOR, false, false).0, None)]
    );
    assert_eq!(read(&mut gate, sint2), Reply::Value(synics));
    let masked = SintMsr::new(0x31, true, false).0;
    assert_eq!(write(&mut gate, msr::SINT15, masked), Reply::Done);
    assert_eq!(
        gate.kernel().msrs[&msr::SINT15],
        SintMsr::new(VECTOR, true, false).0
    );
    assert_eq!(read(&mut gate, msr::SINT15), Reply::Value(masked));
    assert_eq!(gate.counters.vectors_rewritten, 2);
    // A SINT synic never wrote reads as the kernel has it.
    gate.kernel.msrs.insert(msr::SINT0, 0x1_0000);
    assert_eq!(read(&mut gate, msr::SINT0), Reply::Value(0x1_0000));
}

#[test]
fn without_an_irq_vector_sints_pass_unchanged() {
    let f = fixture();
    for vector in [None, Some(15)] {
        let mut gate = gate_with(&f, vector);
        let value = SintMsr::new(0x30, false, true).0;
        assert_eq!(write(&mut gate, msr::SINT0 + 2, value), Reply::Done);
        assert_eq!(gate.kernel().writes, [(msr::SINT0 + 2, value, None)]);
        assert_eq!(gate.counters.vectors_rewritten, 0);
    }
}

#[test]
fn direct_mode_timer_vectors_are_rewritten_message_mode_ones_not() {
    let f = fixture();
    let mut gate = gate_with(&f, Some(VECTOR));
    let timer1 = msr::STIMER0_CONFIG + 2;
    let direct = StimerConfig::ENABLE | StimerConfig::DIRECT_MODE | (0x40 << 4);
    assert_eq!(write(&mut gate, timer1, direct), Reply::Done);
    assert_eq!(
        gate.kernel().msrs[&timer1],
        StimerConfig::ENABLE | StimerConfig::DIRECT_MODE | (u64::from(VECTOR) << 4)
    );
    assert_eq!(read(&mut gate, timer1), Reply::Value(direct));
    let message = StimerConfig::ENABLE | (3 << StimerConfig::SINT_SHIFT);
    assert_eq!(write(&mut gate, msr::STIMER0_CONFIG, message), Reply::Done);
    assert_eq!(gate.kernel().msrs[&msr::STIMER0_CONFIG], message);
    // The count MSR between configs is not a config.
    assert_eq!(write(&mut gate, msr::STIMER0_COUNT, 0x40 << 4), Reply::Done);
    assert_eq!(gate.kernel().msrs[&msr::STIMER0_COUNT], 0x40 << 4);
    assert_eq!(gate.counters.vectors_rewritten, 1);
}

#[test]
fn end_of_interrupt_acks_the_irq_and_only_with_one() {
    let f = fixture();
    let mut gate = gate_with(&f, Some(VECTOR));
    assert_eq!(gate.handle(Request::EndOfInterrupt), Reply::Done);
    assert_eq!(write(&mut gate, APIC_EOI_MSR, 0), Reply::Done);
    gate.interrupt();
    assert_eq!(gate.kernel().acks, 3);
    assert_eq!(gate.counters.interrupts_acked, 3);
    // The kernel already sent the APIC its EOI: nothing is written.
    assert!(gate.kernel().writes.is_empty());
    let mut without = gate_with(&f, None);
    assert_eq!(without.handle(Request::EndOfInterrupt), Reply::Done);
    assert_eq!(without.kernel().acks, 0);
}

#[test]
fn apic_msrs_and_an_enabled_vp_assist_page_are_refused() {
    let f = fixture();
    let mut gate = gate_with(&f, Some(VECTOR));
    assert_eq!(
        write(&mut gate, APIC_ICR_MSR, 0x30),
        Reply::GeneralProtection
    );
    assert_eq!(write(&mut gate, APIC_TPR_MSR, 0), Reply::GeneralProtection);
    assert_eq!(read(&mut gate, APIC_EOI_MSR), Reply::GeneralProtection);
    assert_eq!(
        write(&mut gate, VP_ASSIST_PAGE_MSR, SYNIC_PAGES_GPA | 1),
        Reply::GeneralProtection
    );
    assert_eq!(gate.counters.refused_msrs, 4);
    assert_eq!(write(&mut gate, VP_ASSIST_PAGE_MSR, 0), Reply::Done);
    assert_eq!(gate.kernel().writes, [(VP_ASSIST_PAGE_MSR, 0, None)]);
}

#[test]
fn slow_hypercalls_carry_own_pages_fast_ones_raw_values() {
    let f = fixture();
    let mut gate = gate_with(&f, None);
    let post = HypercallControl::simple(call_code::POST_MESSAGE, false).0;
    assert_eq!(
        gate.handle(Request::Hypercall {
            control: post,
            input: HYPERCALL_PAGES_GPA,
            output: 0,
        }),
        Reply::Value(0)
    );
    let slow_with_output = HypercallControl::simple(0x0099, false).0;
    assert_eq!(
        gate.handle(Request::Hypercall {
            control: slow_with_output,
            input: HYPERCALL_PAGES_GPA + 4096,
            output: HYPERCALL_PAGES_GPA + 8192,
        }),
        Reply::Value(0)
    );
    let signal = HypercallControl::simple(call_code::SIGNAL_EVENT, true).0;
    assert_eq!(
        gate.handle(Request::Hypercall {
            control: signal,
            input: 0x1234_5678,
            output: 0xdead_beef,
        }),
        Reply::Value(0)
    );
    assert_eq!(
        gate.kernel().hypercalls,
        [
            (
                post,
                CallArg::Page(address(&f.hypercall_pages, 0)),
                CallArg::None
            ),
            (
                slow_with_output,
                CallArg::Page(address(&f.hypercall_pages, 4096)),
                CallArg::Page(address(&f.hypercall_pages, 8192))
            ),
            (
                signal,
                CallArg::Fast(0x1234_5678),
                CallArg::Fast(0xdead_beef)
            ),
        ]
    );
}

#[test]
fn slow_hypercall_gpas_outside_the_maps_are_refused_and_counted() {
    let f = fixture();
    let mut gate = gate_with(&f, None);
    let post = HypercallControl::simple(call_code::POST_MESSAGE, false).0;
    for (input, output) in [
        (HYPERCALL_PAGES_GPA + 12288, 0),
        (HYPERCALL_PAGES_GPA, 0x9000),
        (0x9000, HYPERCALL_PAGES_GPA + 4096),
        // Inside the maps but not page aligned: the kernel takes pages.
        (HYPERCALL_PAGES_GPA + 16, 0),
        (HYPERCALL_PAGES_GPA, HYPERCALL_PAGES_GPA + 4096 + 8),
    ] {
        assert_eq!(
            gate.handle(Request::Hypercall {
                control: post,
                input,
                output,
            }),
            Reply::GeneralProtection
        );
    }
    assert_eq!(gate.counters.refused_gpas, 5);
    assert!(gate.kernel().hypercalls.is_empty());
}

#[test]
fn kernel_refusals_are_general_protection_and_counted() {
    let f = fixture();
    let mut gate = gate_with(&f, None);
    for error in [
        KernelError::NotGranted,
        KernelError::NoHyperV,
        KernelError::OutOfRange,
        KernelError::BadPage,
        KernelError::Kernel(7),
    ] {
        gate.kernel.refuse = Some(error);
        assert_eq!(read(&mut gate, msr::GUEST_OS_ID), Reply::GeneralProtection);
        assert_eq!(
            write(&mut gate, msr::SIMP, SYNIC_PAGES_GPA | 1),
            Reply::GeneralProtection
        );
        assert_eq!(
            gate.handle(Request::Hypercall {
                control: HypercallControl::simple(call_code::SIGNAL_EVENT, true).0,
                input: 1,
                output: 0,
            }),
            Reply::GeneralProtection
        );
    }
    assert_eq!(gate.counters.kernel_refusals, 15);
    assert_eq!(gate.counters.refused_gpas, 0);
    assert_eq!(
        gate.first_kernel_refusal,
        Some((
            Request::MsrRead {
                msr: msr::GUEST_OS_ID
            },
            KernelError::NotGranted
        ))
    );
}

#[test]
fn requests_and_replies_travel_encoded() {
    let f = fixture();
    let mut gate = gate_with(&f, None);
    gate.kernel.msrs.insert(msr::SCONTROL, 1);
    let message =
        env_double::encode_request::<Hypervisor>(&Request::MsrRead { msr: msr::SCONTROL });
    let mut reply = [0u8; 64];
    let length = gate.serve(&message, &mut reply).unwrap();
    assert_eq!(
        env_double::decode_reply::<Hypervisor>(&reply[..length]),
        Reply::Value(1)
    );
    assert!(gate.serve(&[0xff; 3], &mut reply).is_err());
    assert_eq!(gate.counters.calls, 1);
}
