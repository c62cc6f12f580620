/*
 * seL4 5.0.0 kernel configuration for this project (x86_64, pc99, QEMU).
 *
 * Normally produced by a Kconfig front end that the sel4-sys crate does not
 * ship. `cargo xtask build` writes this file over the source tree's
 * include/plat/pc99/autoconf.h (the include path finds that one first) and
 * sel4-bindings' build script evaluates the interface XML's conditions
 * against it, so invocation labels always match the kernel we build.
 *
 * Left off on purpose: X2APIC, IOMMU, HUGE_PAGE, SUPPORT_PCID, VTX (QEMU's
 * TCG qemu64 CPU lacks them), FSGSBASE_INST (needs a CPU model with it),
 * HARDWARE_DEBUG_API, SMP.
 */
#define AUTOCONF_INCLUDED
#define CONFIG_ARCH_X86 1
#define CONFIG_ARCH_X86_64 1
#define CONFIG_PLAT_PC99 1
#define CONFIG_WORD_SIZE 64
#define CONFIG_HAVE_FPU 1
#define CONFIG_DEBUG_BUILD 1
#define CONFIG_PRINTING 1
#define CONFIG_FASTPATH 1
#define CONFIG_MAX_NUM_NODES 1
#define CONFIG_NUM_PRIORITIES 256
#define CONFIG_NUM_DOMAINS 1
#define CONFIG_ROOT_CNODE_SIZE_BITS 14
#define CONFIG_TIMER_TICK_MS 2
#define CONFIG_TIME_SLICE 5
#define CONFIG_RETYPE_FAN_OUT_LIMIT 256
#define CONFIG_MAX_NUM_WORK_UNITS_PER_PREEMPTION 100
#define CONFIG_MAX_NUM_BOOTINFO_UNTYPED_CAPS 166
#define CONFIG_CACHE_LN_SZ 64
#define CONFIG_KERNEL_STACK_BITS 12
#define CONFIG_FPU_MAX_RESTORES_SINCE_SWITCH 64
#define CONFIG_IRQ_IOAPIC 1
#define CONFIG_MAX_NUM_IOAPIC 1
#define CONFIG_XAPIC 1
#define CONFIG_SYSCALL 1
#define CONFIG_FXSAVE 1
#define CONFIG_XSAVE_SIZE 512
#define CONFIG_FSGSBASE_MSR 1
#define CONFIG_MULTIBOOT_GRAPHICS_MODE_NONE 1
