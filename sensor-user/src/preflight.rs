//! Checks made before touching the kernel, so that a missing capability or an old kernel gets a
//! sentence naming it rather than an EPERM or a verifier dump.

use crate::error::SensorError;

/// Capability numbers (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Minimum kernel: BPF ring buffer (5.8). Batched map ops (5.6) and TCX (6.6) are optional.
pub const MIN_KERNEL: (u32, u32) = (5, 8);

/// Effective capability mask of this process, from /proc/self/status.
pub fn effective_caps() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

/// Names of the capabilities missing from `caps` for loading and attaching the sensor.
pub fn missing_caps(caps: u64) -> Vec<&'static str> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    let mut missing = Vec::new();
    // CAP_SYS_ADMIN covers CAP_BPF and CAP_PERFMON (pre-5.8 kernels only know it).
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    missing
}

pub fn kernel_release() -> Option<(u32, u32)> {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut it = r.trim().split(['.', '-']);
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

pub fn check() -> Result<(), SensorError> {
    if let Some(caps) = effective_caps() {
        let missing = missing_caps(caps);
        if !missing.is_empty() {
            return Err(SensorError::MissingCapabilities {
                missing: missing.join(", "),
            });
        }
    }
    if let Some(v) = kernel_release()
        && v < MIN_KERNEL
    {
        return Err(SensorError::UnsupportedKernel(format!(
            "Linux {}.{} lacks the BPF ring buffer; Picket needs {}.{} or newer",
            v.0, v.1, MIN_KERNEL.0, MIN_KERNEL.1
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_everything() {
        assert!(missing_caps(u64::MAX).is_empty());
    }

    #[test]
    fn names_each_missing_capability() {
        assert_eq!(
            missing_caps(0),
            vec!["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]
        );
        let bpf_perfmon = (1 << CAP_BPF) | (1 << CAP_PERFMON);
        assert_eq!(missing_caps(bpf_perfmon), vec!["CAP_NET_ADMIN"]);
        let sys_admin_only = 1 << CAP_SYS_ADMIN;
        assert_eq!(missing_caps(sys_admin_only), vec!["CAP_NET_ADMIN"]);
    }
}
