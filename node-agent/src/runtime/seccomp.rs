//! The default seccomp profile of a task container (unless its service says
//! `seccomp: unconfined`). Written for Shoal, in the spirit of the profiles Docker and
//! containerd apply by default, but as a *deny list*: every syscall is allowed except those
//! below, which fail with `EPERM` (`clone3` with `ENOSYS`, so libc falls back to `clone`, whose
//! flags the filter can see). The list is what those runtimes refuse to a container that was
//! given no capability beyond the default set: kernel and host administration, namespace and
//! mount manipulation, tracing other processes, the kernel keyring, eBPF and perf.
//!
//! Rules with arguments are one comparison each; several rules for one syscall are ORed (runc
//! turns every entry into one libseccomp rule, and splits an entry whose comparisons name the
//! same argument into one rule per comparison, so this module never relies on an AND).
//!
//! Architectures: x86_64 with its 32-bit ABIs (x86, x32), as Docker lists them, so 32-bit
//! binaries meet the same filter instead of being killed as an unknown architecture; aarch64
//! with arm elsewhere.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};

/// `EPERM`.
pub const EPERM: u32 = 1;
/// `ENOSYS`.
pub const ENOSYS: u32 = 38;

/// The namespace flags of `clone` (`CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS |
/// CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET`): a container that may not
/// `unshare` may not make namespaces through `clone` either.
pub const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// The `personality` values allowed: `PER_LINUX`, `PER_LINUX32`, `UNAME26`,
/// `PER_LINUX32 | UNAME26`, and `0xffffffff` (query the current persona).
pub const SAFE_PERSONAS: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// Syscalls refused with `EPERM`, by group.
pub const DENIED: &[(&str, &[&str])] = &[
    // Process accounting, reboot, swap and kernel modules: the host's, not a container's.
    (
        "host administration",
        &[
            "acct",
            "reboot",
            "swapon",
            "swapoff",
            "create_module",
            "init_module",
            "finit_module",
            "delete_module",
            "get_kernel_syms",
            "query_module",
            "kexec_load",
            "kexec_file_load",
        ],
    ),
    // The clock is shared with the host and every other container.
    ("clock", &["clock_adjtime", "clock_settime", "settimeofday"]),
    // Mounts and namespaces: the container's view of the system is fixed at start.
    (
        "mounts and namespaces",
        &[
            "mount",
            "umount",
            "umount2",
            "move_mount",
            "open_tree",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "pivot_root",
            "setns",
            "unshare",
        ],
    ),
    // Opening files by handle bypasses path-based checks (the "shocker" escape).
    ("file handles", &["name_to_handle_at", "open_by_handle_at"]),
    // The kernel keyring is not namespaced.
    ("keyring", &["add_key", "request_key", "keyctl"]),
    // Reading and writing other processes' memory, tracing them, comparing their kernel
    // objects.
    (
        "tracing",
        &["ptrace", "process_vm_readv", "process_vm_writev", "kcmp"],
    ),
    // eBPF, perf events and userfaultfd: large kernel attack surface, host-wide data.
    (
        "kernel attack surface",
        &["bpf", "perf_event_open", "userfaultfd"],
    ),
    // Obsolete or host-wide interfaces.
    (
        "obsolete and host-wide",
        &[
            "lookup_dcookie",
            "nfsservctl",
            "quotactl",
            "sysfs",
            "_sysctl",
            "uselib",
            "ustat",
            "syslog",
        ],
    ),
    // Direct port I/O and 8086 mode (x86).
    ("x86 hardware", &["iopl", "ioperm", "vm86", "vm86old"]),
];

fn rule(names: &[&str], errno: u32, arg: Option<LinuxSeccompArg>) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names.iter().map(|n| n.to_string()).collect());
    s.set_action(LinuxSeccompAction::ScmpActErrno);
    s.set_errno_ret(Some(errno));
    s.set_args(arg.map(|a| vec![a]));
    s
}

fn arg0(op: LinuxSeccompOperator, value: u64, value_two: Option<u64>) -> LinuxSeccompArg {
    let a = LinuxSeccompArgBuilder::default()
        .index(0usize)
        .op(op)
        .value(value);
    match value_two {
        Some(v2) => a.value_two(v2),
        None => a,
    }
    .build()
    .expect("every field of a seccomp argument is set")
}

/// `arg0 & (1 << bit) != 0`.
fn bit_set(bit: u32) -> LinuxSeccompArg {
    arg0(
        LinuxSeccompOperator::ScmpCmpMaskedEq,
        1 << bit,
        Some(1 << bit),
    )
}

/// `arg0` has bit `set` set and bit `clear` clear.
fn bit_set_and_clear(set: u32, clear: u32) -> LinuxSeccompArg {
    arg0(
        LinuxSeccompOperator::ScmpCmpMaskedEq,
        (1 << set) | (1 << clear),
        Some(1 << set),
    )
}

/// The rules refusing every `personality` value outside [`SAFE_PERSONAS`], as ORed single
/// comparisons: a value above 32 bits; with bit 31 clear, any bit outside `0x20008`; with bit
/// 31 set, any clear bit (so only `0xffffffff` passes).
fn personality_rules() -> Vec<LinuxSyscall> {
    let mut rules = vec![rule(
        &["personality"],
        EPERM,
        Some(arg0(LinuxSeccompOperator::ScmpCmpGt, 0xffff_ffff, None)),
    )];
    let allowed_bits: u64 = 0x20008;
    for bit in 0..31 {
        if allowed_bits & (1 << bit) == 0 {
            rules.push(rule(
                &["personality"],
                EPERM,
                Some(bit_set_and_clear(bit, 31)),
            ));
        }
    }
    for bit in 0..31 {
        rules.push(rule(
            &["personality"],
            EPERM,
            Some(bit_set_and_clear(31, bit)),
        ));
    }
    rules
}

/// The default profile.
pub fn default_profile() -> LinuxSeccomp {
    let mut syscalls: Vec<LinuxSyscall> = DENIED
        .iter()
        .map(|(_, names)| rule(names, EPERM, None))
        .collect();
    // clone with any namespace flag, one rule per flag.
    for bit in 0..64 {
        if CLONE_NAMESPACE_FLAGS & (1 << bit) != 0 {
            syscalls.push(rule(&["clone"], EPERM, Some(bit_set(bit))));
        }
    }
    // clone3 passes its flags in memory, where seccomp cannot look: make libc fall back.
    syscalls.push(rule(&["clone3"], ENOSYS, None));
    syscalls.extend(personality_rules());

    let mut p = LinuxSeccomp::default();
    p.set_default_action(LinuxSeccompAction::ScmpActAllow);
    p.set_architectures(Some(architectures()));
    p.set_syscalls(Some(syscalls));
    p
}

fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    }
}

/// Whether the profile refuses `syscall` called with first argument `a0`, evaluated the way
/// the kernel filter would (for tests and for documentation).
pub fn denies(profile: &LinuxSeccomp, syscall: &str, a0: u64) -> Option<u32> {
    for s in profile.syscalls().as_deref().unwrap_or_default() {
        if !s.names().iter().any(|n| n == syscall) {
            continue;
        }
        let matches = match s.args() {
            None => true,
            Some(args) => args.iter().any(|a| {
                let v = a.value();
                match a.op() {
                    LinuxSeccompOperator::ScmpCmpMaskedEq => a0 & v == a.value_two().unwrap_or(0),
                    LinuxSeccompOperator::ScmpCmpEq => a0 == v,
                    LinuxSeccompOperator::ScmpCmpNe => a0 != v,
                    LinuxSeccompOperator::ScmpCmpGt => a0 > v,
                    LinuxSeccompOperator::ScmpCmpGe => a0 >= v,
                    LinuxSeccompOperator::ScmpCmpLt => a0 < v,
                    LinuxSeccompOperator::ScmpCmpLe => a0 <= v,
                }
            }),
        };
        if matches {
            return s.errno_ret();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_profile_allows_by_default_and_refuses_the_listed_syscalls() {
        let p = default_profile();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActAllow);
        assert_eq!(
            p.architectures().as_deref().unwrap()[0],
            Arch::ScmpArchX86_64
        );
        for name in [
            "mount",
            "unshare",
            "setns",
            "ptrace",
            "bpf",
            "keyctl",
            "kexec_load",
            "reboot",
            "open_by_handle_at",
            "userfaultfd",
            "perf_event_open",
            "init_module",
            "syslog",
        ] {
            assert_eq!(denies(&p, name, 0), Some(EPERM), "{name}");
        }
        for name in [
            "read", "write", "openat", "execve", "socket", "chown", "kill",
        ] {
            assert_eq!(denies(&p, name, 0), None, "{name}");
        }
        assert_eq!(denies(&p, "clone3", 0), Some(ENOSYS));
    }

    #[test]
    fn clone_is_refused_only_with_namespace_flags() {
        let p = default_profile();
        // fork (SIGCHLD) and pthread_create's flags pass.
        assert_eq!(denies(&p, "clone", 17), None);
        assert_eq!(denies(&p, "clone", 0x003D_0F00), None);
        for flag in [
            0x0002_0000u64, // CLONE_NEWNS
            0x0200_0000,    // CLONE_NEWCGROUP
            0x0400_0000,    // CLONE_NEWUTS
            0x0800_0000,    // CLONE_NEWIPC
            0x1000_0000,    // CLONE_NEWUSER
            0x2000_0000,    // CLONE_NEWPID
            0x4000_0000,    // CLONE_NEWNET
        ] {
            assert_eq!(denies(&p, "clone", flag | 17), Some(EPERM), "{flag:#x}");
        }
    }

    #[test]
    fn personality_allows_only_the_safe_personas() {
        let p = default_profile();
        for ok in SAFE_PERSONAS {
            assert_eq!(denies(&p, "personality", ok), None, "{ok:#x}");
        }
        for bad in [
            0x1u64,
            0x7,
            0x9,
            0x0040_0000, // READ_IMPLIES_EXEC
            0x0004_0000, // ADDR_NO_RANDOMIZE
            0x8000_0000,
            0xffff_fffe,
            0x1_0000_0000,
            0x1_ffff_ffff,
        ] {
            assert_eq!(denies(&p, "personality", bad), Some(EPERM), "{bad:#x}");
        }
    }
}
