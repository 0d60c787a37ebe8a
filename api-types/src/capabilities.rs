//! Linux capability names as services write them in `capAdd` / `capDrop`: with or without
//! the `CAP_` prefix, in any case, or `ALL`. Pure data; the agent maps the canonical names
//! onto the OCI spec.

/// Every capability of Linux 6.x (`include/uapi/linux/capability.h`), by number.
pub const LINUX_CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The word that stands for every capability.
pub const ALL: &str = "ALL";

/// The canonical form of a capability name (`net_admin` → `CAP_NET_ADMIN`, `all` → `ALL`),
/// or `None` if Linux has no such capability.
pub fn canonical(name: &str) -> Option<String> {
    let upper = name.trim().to_ascii_uppercase();
    if upper == ALL {
        return Some(ALL.to_string());
    }
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    LINUX_CAPABILITIES.contains(&full.as_str()).then_some(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_accepted_with_or_without_the_prefix_in_any_case() {
        assert_eq!(canonical("NET_ADMIN").unwrap(), "CAP_NET_ADMIN");
        assert_eq!(canonical("cap_net_admin").unwrap(), "CAP_NET_ADMIN");
        assert_eq!(canonical("Sys_Ptrace").unwrap(), "CAP_SYS_PTRACE");
        assert_eq!(canonical("all").unwrap(), "ALL");
        assert_eq!(canonical("CAP_ALL"), None);
        assert_eq!(canonical("NET_ADMINS"), None);
        assert_eq!(canonical(""), None);
    }
}
