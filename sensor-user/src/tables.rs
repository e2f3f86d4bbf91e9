//! Reading the kernel's flow tables: the per-CPU LRU hash (drained with lookup-and-delete), the
//! per-CPU flow slots in front of it and the per-source probe aggregates (both read whole and
//! filtered by generation). Used by the agent and by the test harness alike.

use std::{collections::HashMap, io, mem::size_of, os::fd::BorrowedFd};

use sensor_common::{FlowKey, FlowSlot, FlowValue, ProbeAggregate};

use crate::{
    records::{FlowMap, FlowTotals, ProbeTotals},
    sys,
};

/// Bytes of one CPU's copy of a per-CPU map value (the kernel rounds each up to 8).
fn per_cpu_stride<T>() -> usize {
    size_of::<T>().div_ceil(8) * 8
}

/// Reads a `T` out of a byte buffer filled by the kernel.
///
/// # Safety
/// `T` must be plain old data (repr(C), integers only) and `bytes` at least `size_of::<T>()` long.
unsafe fn read_pod<T>(bytes: &[u8]) -> T {
    assert!(bytes.len() >= size_of::<T>());
    // SAFETY: per the contract; read_unaligned handles the buffer's alignment.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) }
}

/// Entries per BPF_MAP_LOOKUP_AND_DELETE_BATCH call.
pub const DRAIN_BATCH: usize = 4096;

/// Empties a quiescent flow hash table, handing each flow (per-CPU values summed) to `each`.
/// Returns (entries drained, whether the batch command was available).
pub fn drain_flow_table(
    fd: BorrowedFd<'_>,
    nr_cpus: usize,
    each: impl FnMut(&FlowKey, &FlowTotals),
) -> io::Result<(usize, bool)> {
    let d = sys::drain_map(
        fd,
        size_of::<FlowKey>(),
        per_cpu_stride::<FlowValue>() * nr_cpus,
        DRAIN_BATCH,
        per_cpu_sum(nr_cpus, each),
    )?;
    Ok((d.count, d.batched))
}

/// What a drain does with each raw flow-table entry: sums its per-CPU values into one flow.
pub fn per_cpu_sum(
    nr_cpus: usize,
    mut each: impl FnMut(&FlowKey, &FlowTotals),
) -> impl FnMut(&[u8], &[u8]) {
    let stride = per_cpu_stride::<FlowValue>();
    move |k, v| {
        // SAFETY: FlowKey and FlowValue are Pod; the kernel filled whole entries.
        let key: FlowKey = unsafe { read_pod(k) };
        let mut t = FlowTotals::default();
        for cpu in v.chunks_exact(stride).take(nr_cpus) {
            t.add(&unsafe { read_pod::<FlowValue>(cpu) });
        }
        each(&key, &t);
    }
}

/// A sink for [`drain_flow_table`] and [`read_flow_slots`] that merges flows into a map by key.
pub fn into_map(out: &mut FlowMap<FlowTotals>) -> impl FnMut(&FlowKey, &FlowTotals) + '_ {
    |k, t| out.entry(*k).or_default().merge(t)
}

/// Hands the flow slots of generation `generation` to `each`. The array is not cleared: the
/// programs treat slots of other generations as free. Returns the number of live slots.
pub fn read_flow_slots(
    fd: BorrowedFd<'_>,
    entries: u32,
    nr_cpus: usize,
    generation: u32,
    mut each: impl FnMut(&FlowKey, &FlowTotals),
) -> io::Result<usize> {
    let stride = per_cpu_stride::<FlowSlot>();
    let values = sys::read_array(fd, entries, stride * nr_cpus)?;
    let mut live = 0;
    for slot in values.chunks_exact(stride) {
        // SAFETY: FlowSlot is Pod; each chunk is one CPU's copy of one slot.
        let s: FlowSlot = unsafe { read_pod(slot) };
        if s.generation == generation && s.value.packets > 0 {
            // `opened_by_syn` in the value says whether a bare SYN opened it.
            let mut t = FlowTotals::default();
            t.add(&s.value);
            each(&s.key, &t);
            live += 1;
        }
    }
    Ok(live)
}

/// Reads the per-source probe aggregates of generation `generation`, summed over CPUs.
pub fn read_probe_aggregates(
    fd: BorrowedFd<'_>,
    nr_cpus: usize,
    generation: u32,
) -> io::Result<Vec<ProbeTotals>> {
    let stride = per_cpu_stride::<ProbeAggregate>();
    let values = sys::read_array(fd, sensor_common::PROBE_AGGREGATES, stride * nr_cpus)?;
    let mut by_source: HashMap<(u32, [u8; 16]), ProbeTotals> = HashMap::new();
    for slot in values.chunks_exact(stride) {
        // SAFETY: ProbeAggregate is Pod; each chunk is one CPU's copy of one entry.
        let g: ProbeAggregate = unsafe { read_pod(slot) };
        if g.generation != generation || g.packets == 0 {
            continue;
        }
        let t = by_source
            .entry((g.ifindex, g.src_addr))
            .or_insert(ProbeTotals {
                ifindex: g.ifindex,
                src_addr: g.src_addr,
                ip_version: g.ip_version,
                first_seen_ns: g.first_seen_ns,
                ..ProbeTotals::default()
            });
        t.packets += g.packets;
        t.bytes += g.bytes;
        t.first_seen_ns = t.first_seen_ns.min(g.first_seen_ns);
        t.last_seen_ns = t.last_seen_ns.max(g.last_seen_ns);
        t.directions |= g.directions;
    }
    let mut v: Vec<ProbeTotals> = by_source.into_values().collect();
    v.sort_by_key(|t| (t.first_seen_ns, t.ifindex, t.src_addr));
    Ok(v)
}
