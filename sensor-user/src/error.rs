//! The sensor library's one error type: each variant says what failed and what to do about it.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SensorError {
    #[error("unknown network interface `{0}` (see `ip link` for the interfaces of this host)")]
    UnknownInterface(String),
    #[error(
        "missing capabilities: {missing} (run as root, or grant them, e.g. AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_PERFMON in a systemd unit)"
    )]
    MissingCapabilities { missing: String },
    #[error("unsupported kernel: {0}")]
    UnsupportedKernel(String),
    #[error("the embedded eBPF object lacks `{0}` (a build problem: rebuild picket-sensor)")]
    MissingInObject(&'static str),
    #[error("the kernel refused to load the eBPF object: {0}")]
    Load(String),
    #[error(
        "the kernel verifier rejected `{program}`: {reason}\n(full verifier log follows)\n{log}"
    )]
    Verifier {
        program: &'static str,
        reason: String,
        log: String,
    },
    #[error("attaching {what} to `{iface}` failed: {reason}")]
    Attach {
        iface: String,
        what: &'static str,
        reason: String,
    },
    #[error("map `{map}`: {reason}")]
    Map { map: &'static str, reason: String },
    #[error("{0}")]
    Kernel(String),
}

impl SensorError {
    pub fn from_load(e: aya::EbpfError) -> Self {
        let text = e.to_string();
        let mut full = text.clone();
        let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
        while let Some(s) = src {
            full.push_str(": ");
            full.push_str(&s.to_string());
            src = s.source();
        }
        if full.contains("RINGBUF") || full.contains("ring") && full.contains("Invalid argument") {
            return SensorError::UnsupportedKernel(format!(
                "creating the BPF ring buffer failed ({full}); Picket needs Linux 5.8 or newer"
            ));
        }
        SensorError::Load(full)
    }

    pub fn from_prog_load(program: &'static str, e: aya::programs::ProgramError) -> Self {
        match e {
            aya::programs::ProgramError::LoadError {
                io_error,
                verifier_log,
            } => SensorError::Verifier {
                program,
                reason: io_error.to_string(),
                log: verifier_log.to_string(),
            },
            other => SensorError::Load(format!("{program}: {other}")),
        }
    }

    pub fn attach(iface: &str, what: &'static str, e: impl std::fmt::Display) -> Self {
        SensorError::Attach {
            iface: iface.into(),
            what,
            reason: e.to_string(),
        }
    }

    pub fn map(map: &'static str) -> impl Fn(aya::maps::MapError) -> Self {
        move |e| SensorError::Map {
            map,
            reason: e.to_string(),
        }
    }
}
