//! The eBPF object built by `build.rs` from sensor-ebpf, embedded in the agent, and loading it:
//! its maps created and both programs through this kernel's verifier, nothing attached. Also
//! interface names and indexes.

use std::ffi::CString;

use aya::{
    Ebpf, EbpfLoader,
    maps::Map,
    programs::{SchedClassifier, Xdp},
};
use sensor_common::names;

use crate::error::SensorError;

/// The eBPF object built by build.rs from sensor-ebpf.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/picket-ebpf"));

/// The benchmarks' reference program (sensor-ebpf/src/peer.rs, a textbook XDP flow counter),
/// built with the sensor's: the tests' harness (`tests/src/harness.rs`) loads it; the agent
/// never does.
pub static PEER_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/picket-peer-ebpf"));

pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

pub fn ifname(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buffer of IF_NAMESIZE as required.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated string into buf.
    Some(
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

pub(crate) fn take(bpf: &mut Ebpf, name: &'static str) -> Result<Map, SensorError> {
    bpf.take_map(name).ok_or(SensorError::MissingInObject(name))
}

/// Creates the maps and loads both programs (this kernel's verifier decides), attaching nothing.
pub fn load_programs(flow_table_size: u32) -> Result<Ebpf, SensorError> {
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(names::FLOWS[0], flow_table_size);
    loader.map_max_entries(names::FLOWS[1], flow_table_size);
    let mut bpf = loader.load(EBPF_OBJECT).map_err(SensorError::from_load)?;
    let xdp: &mut Xdp = bpf
        .program_mut(names::XDP_PROGRAM)
        .ok_or(SensorError::MissingInObject(names::XDP_PROGRAM))?
        .try_into()
        .map_err(|e| SensorError::Kernel(format!("{e}")))?;
    xdp.load()
        .map_err(|e| SensorError::from_prog_load(names::XDP_PROGRAM, e))?;
    let tc: &mut SchedClassifier = bpf
        .program_mut(names::TC_PROGRAM)
        .ok_or(SensorError::MissingInObject(names::TC_PROGRAM))?
        .try_into()
        .map_err(|e| SensorError::Kernel(format!("{e}")))?;
    tc.load()
        .map_err(|e| SensorError::from_prog_load(names::TC_PROGRAM, e))?;
    Ok(bpf)
}
