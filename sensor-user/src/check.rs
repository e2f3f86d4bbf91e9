//! What this host's kernel offers the sensor, probed rather than guessed from the version: used by
//! `picket-sensor check` (a report) and by the sensor at start (a refusal naming what is missing,
//! and a log line saying which path it takes).

use std::{fmt, os::fd::AsFd as _};

use aya::{
    maps::MapType,
    programs::{ProgramType, Xdp, XdpMode},
    sys::{is_map_supported, is_program_supported},
};
use sensor_common::names;

use crate::{error::SensorError, preflight, programs, tables};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Needed and present.
    Ok,
    /// Needed and absent: the sensor cannot run.
    Missing,
    /// Present but degraded (slower or less precise), or unknown.
    Warn,
    /// For the record (the path taken, optional features).
    Info,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Missing => "MISSING",
            Status::Warn => "warn",
            Status::Info => "info",
        })
    }
}

#[derive(Debug)]
pub struct Item {
    pub status: Status,
    pub what: String,
}

/// Map types the programs use, with the kernel that brought each.
pub const REQUIRED_MAPS: [(MapType, &str); 6] = [
    (
        MapType::LruPerCpuHash,
        "LRU per-CPU hash (flow tables, Linux 4.10)",
    ),
    (
        MapType::PerCpuArray,
        "per-CPU array (counters, flow slots, Linux 4.6)",
    ),
    (MapType::Array, "array (configuration, Linux 3.19)"),
    (MapType::LruHash, "LRU hash (scan state, Linux 4.10)"),
    (MapType::RingBuf, "ring buffer (scan events, Linux 5.8)"),
    (
        MapType::ArrayOfMaps,
        "array of maps (RCU grace period, Linux 4.12)",
    ),
];

pub const REQUIRED_PROGRAMS: [(ProgramType, &str); 2] = [
    (ProgramType::Xdp, "XDP programs (ingress)"),
    (
        ProgramType::SchedClassifier,
        "tc classifier programs (egress)",
    ),
];

/// The tc egress path `auto` takes on this kernel.
pub fn tc_path() -> &'static str {
    let tcx = aya::util::KernelVersion::current()
        .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
    if tcx { "tcx" } else { "clsact" }
}

/// The required map and program types this kernel lacks (empty when all are there). Probing
/// needs CAP_BPF (or CAP_SYS_ADMIN); an error to probe is reported as such.
pub fn missing_features() -> Result<Vec<&'static str>, SensorError> {
    let mut missing = Vec::new();
    for (t, what) in REQUIRED_MAPS {
        if !is_map_supported(t).map_err(|e| SensorError::Kernel(format!("probing {what}: {e}")))? {
            missing.push(what);
        }
    }
    for (t, what) in REQUIRED_PROGRAMS {
        if !is_program_supported(t)
            .map_err(|e| SensorError::Kernel(format!("probing {what}: {e}")))?
        {
            missing.push(what);
        }
    }
    Ok(missing)
}

/// The whole report of `picket-sensor check`; `ready` is false when anything needed is missing.
pub fn report(ifaces: &[String]) -> (Vec<Item>, bool) {
    let mut items = Vec::new();
    let mut push = |status, what: String| items.push(Item { status, what });
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    match preflight::kernel_release() {
        Some(v) if v >= preflight::MIN_KERNEL => push(
            Status::Ok,
            format!(
                "kernel {release} (minimum {}.{})",
                preflight::MIN_KERNEL.0,
                preflight::MIN_KERNEL.1
            ),
        ),
        Some(_) => push(
            Status::Missing,
            format!(
                "kernel {release}: Picket needs Linux {}.{} or newer (BPF ring buffer)",
                preflight::MIN_KERNEL.0,
                preflight::MIN_KERNEL.1
            ),
        ),
        None => push(
            Status::Warn,
            "kernel release unreadable (/proc not mounted?)".into(),
        ),
    }
    let caps_ok = match preflight::effective_caps() {
        Some(c) => {
            let missing = preflight::missing_caps(c);
            if missing.is_empty() {
                push(
                    Status::Ok,
                    "capabilities: CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN (or CAP_SYS_ADMIN)".into(),
                );
                true
            } else {
                push(
                    Status::Missing,
                    format!("capabilities: {} missing", missing.join(", ")),
                );
                false
            }
        }
        None => {
            push(
                Status::Warn,
                "capabilities unreadable (/proc/self/status)".into(),
            );
            true
        }
    };
    if !caps_ok {
        push(
            Status::Info,
            "kernel features not probed: probing needs the capabilities above".into(),
        );
        let ready = items.iter().all(|i| i.status != Status::Missing);
        return (items, ready);
    }
    for (t, what) in REQUIRED_MAPS {
        match is_map_supported(t) {
            Ok(true) => push(Status::Ok, format!("map type: {what}")),
            Ok(false) => push(Status::Missing, format!("map type: {what}")),
            Err(e) => push(Status::Warn, format!("map type: {what}: probe failed: {e}")),
        }
    }
    for (t, what) in REQUIRED_PROGRAMS {
        match is_program_supported(t) {
            Ok(true) => push(Status::Ok, format!("program type: {what}")),
            Ok(false) => push(Status::Missing, format!("program type: {what}")),
            Err(e) => push(
                Status::Warn,
                format!("program type: {what}: probe failed: {e}"),
            ),
        }
    }
    push(
        Status::Info,
        match tc_path() {
            "tcx" => "tc egress path: TCX link (Linux 6.6+)".into(),
            _ => "tc egress path: clsact qdisc filter (TCX needs Linux 6.6)".into(),
        },
    );
    match std::fs::read_to_string("/proc/sys/net/core/bpf_jit_enable") {
        Ok(s) if s.trim() == "0" => push(
            Status::Warn,
            "BPF JIT disabled (net.core.bpf_jit_enable=0): programs run interpreted, several times slower".into(),
        ),
        Ok(_) => push(Status::Ok, "BPF JIT enabled".into()),
        Err(_) => push(Status::Info, "BPF JIT setting unreadable".into()),
    }
    push(
        Status::Info,
        if std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
            "kernel BTF present (not required)".into()
        } else {
            "kernel BTF absent (not required: the programs use no CO-RE)".into()
        },
    );
    // The real thing: load both programs (the verifier of this kernel decides) with small tables.
    match programs::load_programs(1024) {
        Ok(mut bpf) => {
            push(
                Status::Ok,
                format!(
                    "programs load: the verifier accepts {} and {}",
                    names::XDP_PROGRAM,
                    names::TC_PROGRAM
                ),
            );
            if let Some(aya::maps::Map::PerCpuLruHashMap(m)) = bpf.take_map(names::FLOWS[1]) {
                let mut sink = crate::records::FlowMap::default();
                let nr_cpus = aya::util::nr_cpus().unwrap_or(1);
                match tables::drain_flow_table(m.fd().as_fd(), nr_cpus, tables::into_map(&mut sink))
                {
                    Ok((_, true)) => push(
                        Status::Ok,
                        "flow table drain: batched (BPF_MAP_LOOKUP_AND_DELETE_BATCH)".into(),
                    ),
                    Ok((_, false)) => push(
                        Status::Warn,
                        "flow table drain: entry by entry (no batched lookup-and-delete)".into(),
                    ),
                    Err(e) => push(Status::Warn, format!("flow table drain: probe failed: {e}")),
                }
            }
            for iface in ifaces {
                push_iface(&mut bpf, iface, &mut push);
            }
        }
        Err(e) => push(Status::Missing, format!("programs load: {e}")),
    }
    let ready = items.iter().all(|i| i.status != Status::Missing);
    (items, ready)
}

/// Which XDP mode an interface takes: attached natively for an instant, then detached.
fn push_iface(bpf: &mut aya::Ebpf, iface: &str, push: &mut impl FnMut(Status, String)) {
    let Some(idx) = programs::ifindex(iface) else {
        push(
            Status::Missing,
            format!("interface `{iface}`: no such interface"),
        );
        return;
    };
    let Some(Ok(xdp)) = bpf
        .program_mut(names::XDP_PROGRAM)
        .map(<&mut Xdp>::try_from)
    else {
        return;
    };
    match xdp.attach_to_if_index(idx, XdpMode::Driver) {
        Ok(link) => {
            let _ = xdp.detach(link);
            push(Status::Ok, format!("interface `{iface}`: native XDP"));
        }
        Err(_) => match xdp.attach_to_if_index(idx, XdpMode::Skb) {
            Ok(link) => {
                let _ = xdp.detach(link);
                push(
                    Status::Warn,
                    format!(
                        "interface `{iface}`: generic (skb) XDP only: the driver has no native XDP, so ingress costs more"
                    ),
                );
            }
            Err(e) => push(
                Status::Missing,
                format!("interface `{iface}`: XDP attach refused: {e}"),
            ),
        },
    }
}

/// Prints the report; the exit status is 0 when the sensor can run.
pub fn print(items: &[Item], ready: bool) {
    for i in items {
        println!("{:>7}  {}", i.status.to_string(), i.what);
    }
    println!(
        "\n{}",
        if ready {
            "ready: picket-sensor can run on this host"
        } else {
            "not ready: see MISSING above"
        }
    );
}
