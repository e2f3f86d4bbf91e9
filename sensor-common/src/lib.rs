//! Types shared by Picket's eBPF programs (sensor-ebpf) and the user-space agent (sensor-user).
//!
//! Every type here crosses the kernel/user boundary through a BPF map or the ring buffer, so each is
//! `#[repr(C)]` with explicit padding fields (never implicit holes, whose content the verifier and
//! the `Pod` contract cannot vouch for) and integers instead of `bool`. The tests at the bottom pin
//! every size so the two sides cannot drift apart.
#![no_std]

/// Names of the maps and programs in the eBPF object, used by the loader.
pub mod names {
    pub const XDP_PROGRAM: &str = "picket_xdp";
    pub const TC_PROGRAM: &str = "picket_tc_egress";
    pub const FLOWS: [&str; 2] = ["FLOWS_0", "FLOWS_1"];
    pub const FLOW_SLOTS: [&str; 2] = ["FLOW_SLOTS_0", "FLOW_SLOTS_1"];
    pub const PROBE_AGGREGATES: [&str; 2] = ["PROBE_AGGREGATES_0", "PROBE_AGGREGATES_1"];
    pub const CONFIG: &str = "CONFIG";
    pub const COUNTERS: &str = "COUNTERS";
    pub const SCAN_STATE: &str = "SCAN_STATE";
    pub const ESTABLISHED: &str = "ESTABLISHED";
    pub const SCAN_EVENTS: &str = "SCAN_EVENTS";
}

/// Default number of flow entries in each of the two flow tables.
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 262_144;
/// Slots per CPU for first SYNs (power of two): see [`FlowSlot`].
pub const DEFAULT_FLOW_SLOTS: u32 = 16_384;
/// Per-source aggregates per CPU for bare SYNs whose flow slot was taken (power of two).
pub const PROBE_AGGREGATES: u32 = 256;
/// Default number of tracked sources for scan detection.
pub const DEFAULT_SCAN_SOURCES: u32 = 65_536;
/// Default number of conversations remembered as answered (not probes).
pub const DEFAULT_ESTABLISHED_SIZE: u32 = 262_144;
/// Ring-buffer size for scan events (bytes, power of two).
pub const SCAN_EVENT_RING_BYTES: u32 = 256 * 1024;

/// Words of the per-source destination-port bitmap (hashed ports, linear counting): 128 bits.
pub const PORT_BITMAP_WORDS: usize = 2;
/// Words of the per-source destination-host bitmap: 128 bits.
pub const HOST_BITMAP_WORDS: usize = 2;
/// Bits in each of those bitmaps.
pub const SCAN_BITMAP_BITS: u32 = 128;
/// The scan state keeps its window start as kernel time shifted right by this (units of
/// 2^20 ns, about 1.05 ms), in 32 bits: it wraps after about 52 days.
pub const SCAN_TIME_SHIFT: u32 = 20;

/// Direction bits stored in [`FlowValue::directions`].
pub const DIR_INGRESS: u8 = 1;
pub const DIR_EGRESS: u8 = 2;

/// Flags stored in [`FlowKey::flags`].
/// The packet was a non-first IP fragment: ports are unknown and zero.
pub const KEY_FLAG_FRAGMENT: u8 = 1;
/// The transport header was cut short: ports are unknown and zero.
pub const KEY_FLAG_L4_TRUNCATED: u8 = 2;

/// TCP flag bits as on the wire (byte 13 of the TCP header).
pub mod tcp {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
}

/// Identity of a unidirectional flow as seen on one interface.
///
/// Addresses are 16 bytes: IPv6 as is, IPv4 as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), so
/// one key type serves both families. For ICMP/ICMPv6, `src_port` holds the type and `dst_port` the
/// code, as NetFlow does.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowKey {
    pub ifindex: u32,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    /// IANA protocol number.
    pub protocol: u8,
    /// 4 or 6.
    pub ip_version: u8,
    /// `KEY_FLAG_*`.
    pub flags: u8,
    pub _pad: u8,
}

/// Hashes the key's 44 bytes as six words (equality compares the same bytes): the derived
/// impl hashes field by field, which the agent's flow maps measurably paid for.
impl core::hash::Hash for FlowKey {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        let w = self.words();
        for pair in w.chunks_exact(2) {
            state.write_u64(pair[0] as u64 | (pair[1] as u64) << 32);
        }
        state.write_u32(w[10]);
    }
}

impl FlowKey {
    /// The key as 11 words (it is 44 bytes, 4-byte aligned, without holes).
    #[inline(always)]
    pub fn words(&self) -> &[u32; 11] {
        // SAFETY: repr(C), size 44 and alignment 4 are asserted in the tests below.
        unsafe { &*(self as *const FlowKey).cast::<[u32; 11]>() }
    }

    /// Copies `src` into `self` word by word: a plain struct assignment compiles to a call of a
    /// byte-by-byte `memmove` on BPF (tens of instructions per byte).
    #[inline(always)]
    pub fn copy_from(&mut self, src: &FlowKey) {
        // SAFETY: as in `words`.
        let d = unsafe { &mut *(self as *mut FlowKey).cast::<[u32; 11]>() };
        let s = src.words();
        d[0] = s[0];
        d[1] = s[1];
        d[2] = s[2];
        d[3] = s[3];
        d[4] = s[4];
        d[5] = s[5];
        d[6] = s[6];
        d[7] = s[7];
        d[8] = s[8];
        d[9] = s[9];
        d[10] = s[10];
    }

    /// Hash choosing a key's flow slot; shared so that user space and tests agree with the
    /// kernel. FNV-style mixing per word: a few instructions each, no helper call.
    #[inline(always)]
    pub fn slot_hash(&self) -> u32 {
        let w = self.words();
        let mut h: u32 = 0x811c_9dc5;
        let mut i = 0;
        while i < 11 {
            h = (h ^ w[i]).wrapping_mul(0x0100_0193).rotate_left(5);
            i += 1;
        }
        h.wrapping_mul(0x9E37_79B1)
    }
}

/// Counters of one flow, per CPU (the table is a per-CPU LRU hash: no atomics on the hot path).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    pub packets: u64,
    /// IP-layer bytes (IP header + payload), as NetFlow and cloud flow logs count.
    pub bytes: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the first and last packet.
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// OR of the TCP flags of every packet.
    pub tcp_flags: u8,
    /// `DIR_INGRESS` / `DIR_EGRESS` bits: which hook(s) saw it.
    pub directions: u8,
    /// 1 if the flow's first packet was a bare SYN: this direction initiated the conversation.
    pub opened_by_syn: u8,
    // Two scalars, not `[u8; 5]`: zeroing an array becomes a byte-loop memset call in BPF.
    pub _pad1: u8,
    pub _pad4: u32,
}

/// Bare SYNs of one source already flagged as scanning (a scan event in the current window)
/// whose flow slot was taken by another live flow, summed without per-flow detail: under a
/// fast scan the slots fill, and one small, hot record per scanner costs a fraction of a flow-table insert per probe (which on a VM also means a cold page per probe).
/// Exported as a `kind: "probes"` record, so that packet and byte totals stay exact.
/// The slot is chosen by a hash of the source; when another live source holds it, the SYN falls
/// back to a flow-table insert.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ProbeAggregate {
    pub src_addr: [u8; 16],
    pub ifindex: u32,
    pub generation: u32,
    pub packets: u64,
    pub bytes: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub directions: u8,
    pub ip_version: u8,
    pub _pad: [u8; 6],
}

impl ProbeAggregate {
    /// Index of a source's aggregate (shared with user space and tests).
    #[inline(always)]
    pub fn index_of(addr: &[u8; 16]) -> u32 {
        let w = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
        ((w(0) ^ w(4) ^ w(8) ^ w(12)).wrapping_mul(0x9E37_79B1) >> 24) & (PROBE_AGGREGATES - 1)
    }
}

/// Settings the agent writes into the `CONFIG` array (one element, memory-mapped) before
/// attaching. Afterwards it changes only two words, each with one atomic store while programs
/// run: `epoch` at every export interval and `now_ns` every few milliseconds.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SensorConfig {
    /// Length of the per-source scan window.
    pub window_ns: u64,
    /// Export interval counter. Its parity is the flow table the programs write into (the agent
    /// drains the other one), and it is the generation of that table's flow slots and probe
    /// aggregates: a slot holding another generation is free. One word, so a program reads the
    /// table and the generation together, in one load, and never mixes two intervals (a mix
    /// once made a packet see a live slot of the old table as free and wipe its counts). Never
    /// 0, the generation of a slot never used.
    pub epoch: u32,
    /// A source is reported once this many bits of its port bitmap are set in a window (the agent
    /// turns a threshold of distinct ports into bits: see `ScanState`). 0 disables.
    pub port_bits_threshold: u32,
    /// The same for its host bitmap.
    pub host_bits_threshold: u32,
    /// `CLOCK_CONFIG`: "now" is `now_ns`, kept fresh by the agent (every few ms) or set by a
    /// test; `CLOCK_KERNEL`: the programs read the kernel clock for every packet. A helper call
    /// per packet costs as much as the whole flow update on some machines, and flow timestamps
    /// need no more than millisecond precision, so the agent uses `CLOCK_CONFIG` by default.
    pub clock: u32,
    pub now_ns: u64,
    /// Number of flow slots minus one (a power of two minus one).
    pub slot_mask: u32,
    pub _pad: u32,
}

/// The flow table (0 or 1) written during `epoch`.
#[inline(always)]
pub const fn epoch_table(epoch: u32) -> usize {
    (epoch & 1) as usize
}

/// The epoch after `epoch`: the other table, skipping 0 (even, so parity is kept) on wrap.
#[inline(always)]
pub const fn next_epoch(epoch: u32) -> u32 {
    match epoch.wrapping_add(1) {
        0 => 2,
        e => e,
    }
}

/// First epoch: table 0, generation 2 (0 marks slots never used).
pub const FIRST_EPOCH: u32 = 2;

/// A per-CPU, direct-mapped slot (index = `FlowKey::slot_hash`) that counts one flow without
/// the flow hash table; a slot of an older generation is free, so a whole array is emptied by
/// bumping `SensorConfig::epoch`.
///
/// Every packet first tries its slot: a hit is an inlined array access instead of a hash-table
/// helper call. A bare SYN claims a free slot and skips the table entirely: under a SYN scan or
/// flood every packet opens a new flow, and a hash-table insert (worse, an LRU insert that
/// evicts) costs many times an update, so the sensor would be slowest exactly under attack and an
/// attacker could flush the table. A flow the table already knows claims its free slot on its
/// next packet. The agent merges slots and table by key, so per-flow counts stay exact. A bare
/// SYN whose slot is taken (`syn_slot_collisions`) goes to the table, or to its source's
/// `ProbeAggregate` when the source is already flagged as scanning.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowSlot {
    pub key: FlowKey,
    pub generation: u32,
    pub value: FlowValue,
}

pub const CLOCK_KERNEL: u32 = 0;
pub const CLOCK_CONFIG: u32 = 1;

/// Key of the per-source scan state: the source address (IPv4-mapped for IPv4).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SourceKey {
    pub addr: [u8; 16],
}

/// Probe kinds counted per source. Indexes into [`ScanState::probes`] and [`ScanEvent::probes`].
pub mod probe {
    pub const SYN: usize = 0;
    pub const FIN: usize = 1;
    pub const NULL: usize = 2;
    pub const XMAS: usize = 3;
    pub const ACK: usize = 4;
    pub const UDP: usize = 5;
    pub const ICMP_ECHO: usize = 6;
    pub const OTHER: usize = 7;
    pub const COUNT: usize = 8;
    pub const NAMES: [&str; COUNT] = [
        "syn",
        "fin",
        "null",
        "xmas",
        "ack",
        "udp",
        "icmp_echo",
        "other",
    ];
}

/// Fan-out state of one source within the current window: 48 bytes, 64 with its key, so a storm
/// of spoofed sources costs at most `DEFAULT_SCAN_SOURCES` x 64 bytes of map values (the map is
/// an LRU: the storm evicts, it never grows the map).
///
/// Distinct ports and hosts are counted by linear counting over hashed 128-bit bitmaps: a bit set
/// for the first time increments `*_set`. Values that share a bit count once, so `*_set` is the
/// exact count until the first collision and an underestimate after it. After n distinct values
/// the expected number of set bits is m(1 - (1 - 1/m)^n) with m = 128; the agent converts its
/// thresholds of distinct values into thresholds of set bits with that formula, and set bits back
/// into an estimate of distinct values (-ln(1 - k/m) / -ln(1 - 1/m)) for the event.
/// Probe counts saturate at 255: they are evidence of the kinds used, not totals (the flow
/// records have those).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ScanState {
    /// Start of the window, as kernel time >> `SCAN_TIME_SHIFT` (wrapping).
    pub window_start: u32,
    pub ports_set: u8,
    pub hosts_set: u8,
    /// 1 once an event was emitted for this window.
    pub reported: u8,
    pub _pad: u8,
    pub port_bits: [u64; PORT_BITMAP_WORDS],
    pub host_bits: [u64; HOST_BITMAP_WORDS],
    pub probes: [u8; probe::COUNT],
}

/// One ring-buffer record: a source crossed a fan-out threshold in a window. At most one per source
/// per window.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ScanEvent {
    pub src_addr: [u8; 16],
    pub last_dst: [u8; 16],
    /// The window's start, to the scan state's unit (`SCAN_TIME_SHIFT`).
    pub window_start_ns: u64,
    pub last_seen_ns: u64,
    /// Bits set in the source's port and host bitmaps (see `ScanState`).
    pub port_bits_set: u32,
    pub host_bits_set: u32,
    /// Probes of each kind in the window (each saturates at 255).
    pub probes: [u32; probe::COUNT],
    pub ifindex: u32,
    pub last_dst_port: u16,
    pub ip_version: u8,
    /// Bit 0: port threshold crossed; bit 1: host threshold crossed.
    pub reason: u8,
}

pub const REASON_PORTS: u8 = 1;
pub const REASON_HOSTS: u8 = 2;

/// All counters of one CPU: the single entry of the `COUNTERS` per-CPU array. One entry (not
/// one per counter) so that a packet's counter updates share one map lookup and a few cache lines.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    pub v: [u64; counter::COUNT as usize],
}

/// Per-CPU counters (indexes into `Counters::v`). Every packet the
/// programs see ends in exactly one of `PARSED` or an `UNPARSED_*` slot, so
/// `SEEN == PARSED + sum(UNPARSED_*)`; every parsed packet either lands in a flow entry or in
/// `FLOW_INSERT_FAILED`.
pub mod counter {
    pub const SEEN: u32 = 0;
    pub const PARSED: u32 = 1;
    pub const UNPARSED_NON_IP: u32 = 2;
    pub const UNPARSED_TRUNCATED_L2: u32 = 3;
    pub const UNPARSED_TRUNCATED_L3: u32 = 4;
    pub const UNPARSED_BAD_L3: u32 = 5;
    /// Parsed, with ports left zero.
    pub const FRAGMENTS: u32 = 6;
    pub const L4_TRUNCATED: u32 = 7;
    pub const IPV6_EXT_TOO_DEEP: u32 = 8;
    pub const VLAN_TAGGED: u32 = 9;
    /// Parsed packets (and their bytes) that could not be put into the flow table.
    pub const FLOW_INSERT_FAILED: u32 = 10;
    pub const FLOW_INSERT_FAILED_BYTES: u32 = 11;
    /// Successful new-entry inserts per flow table; minus the entries drained, gives evictions.
    pub const FLOW_INSERTS_0: u32 = 12;
    pub const FLOW_INSERTS_1: u32 = 13;
    pub const SCAN_STATE_INSERT_FAILED: u32 = 14;
    pub const SCAN_EVENTS: u32 = 15;
    pub const SCAN_EVENTS_DROPPED: u32 = 16;
    pub const PROBES: u32 = 17;
    pub const INGRESS: u32 = 18;
    pub const EGRESS: u32 = 19;
    pub const GSO_SEGMENTS: u32 = 20;
    /// New flows that a bare SYN opened in a flow slot, and those that found it taken.
    pub const SYN_SLOT_CLAIMS: u32 = 21;
    pub const SYN_SLOT_COLLISIONS: u32 = 22;
    /// Bare SYNs added to a per-source probe aggregate (their flow slot was taken).
    pub const PROBES_AGGREGATED: u32 = 23;
    pub const COUNT: u32 = 24;

    pub const NAMES: [&str; COUNT as usize] = [
        "packets_seen",
        "packets_parsed",
        "unparsed_non_ip",
        "unparsed_truncated_l2",
        "unparsed_truncated_l3",
        "unparsed_bad_l3",
        "fragments",
        "l4_truncated",
        "ipv6_ext_too_deep",
        "vlan_tagged",
        "flow_insert_failed",
        "flow_insert_failed_bytes",
        "flow_inserts_table0",
        "flow_inserts_table1",
        "scan_state_insert_failed",
        "scan_events",
        "scan_events_dropped",
        "probes",
        "ingress_packets",
        "egress_packets",
        "gso_extra_segments",
        "syn_slot_claims",
        "syn_slot_collisions",
        "probes_aggregated",
    ];
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), contain only integers and integer arrays, and have no
    // implicit padding (their sizes are asserted in the tests below), so any bit pattern is valid.
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for SensorConfig {}
    unsafe impl aya::Pod for SourceKey {}
    unsafe impl aya::Pod for ScanState {}
    unsafe impl aya::Pod for ScanEvent {}
    unsafe impl aya::Pod for FlowSlot {}
    unsafe impl aya::Pod for ProbeAggregate {}
    unsafe impl aya::Pod for Counters {}
}

/// Maps an IPv4 address (network order bytes) into the 16-byte form used in keys.
#[inline(always)]
pub const fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn sizes_are_pinned() {
        assert_eq!(size_of::<FlowKey>(), 44);
        assert_eq!(align_of::<FlowKey>(), 4);
        assert_eq!(size_of::<FlowValue>(), 40);
        assert_eq!(size_of::<SensorConfig>(), 40);
        assert_eq!(size_of::<FlowSlot>(), 88);
        assert_eq!(size_of::<ProbeAggregate>(), 16 + 4 + 4 + 8 * 4 + 1 + 1 + 6);
        assert_eq!(size_of::<SourceKey>(), 16);
        assert_eq!(size_of::<Counters>(), 8 * counter::COUNT as usize);
        assert_eq!(size_of::<ScanState>(), 4 + 1 + 1 + 1 + 1 + 16 + 16 + 8);
        // Per-source kernel state, key included, is at most 64 bytes.
        assert!(size_of::<SourceKey>() + size_of::<ScanState>() <= 64);
        assert_eq!(
            size_of::<ScanEvent>(),
            16 + 16 + 8 + 8 + 4 + 4 + 32 + 4 + 2 + 1 + 1
        );
    }

    #[test]
    fn no_implicit_padding() {
        // Sum of field sizes equals the struct size: nothing the compiler inserted.
        assert_eq!(size_of::<FlowKey>(), 4 + 16 + 16 + 2 + 2 + 1 + 1 + 1 + 1);
        assert_eq!(size_of::<FlowValue>(), 8 * 4 + 1 + 1 + 1 + 5);
        assert_eq!(size_of::<SensorConfig>(), 8 + 4 + 4 + 4 + 4 + 8 + 4 + 4);
        assert_eq!(core::mem::offset_of!(SensorConfig, epoch) % 4, 0);
        assert_eq!(core::mem::offset_of!(SensorConfig, now_ns) % 8, 0);
        assert_eq!(size_of::<FlowSlot>(), 44 + 4 + 40);
        assert_eq!(size_of::<ScanEvent>() % 8, 0);
        assert_eq!(size_of::<ScanState>() % 8, 0);
    }

    #[test]
    fn epochs_alternate_tables_and_never_reach_zero() {
        assert_eq!(epoch_table(FIRST_EPOCH), 0);
        assert_eq!(next_epoch(FIRST_EPOCH), 3);
        assert_eq!(epoch_table(next_epoch(FIRST_EPOCH)), 1);
        assert_eq!(next_epoch(u32::MAX), 2);
        assert_eq!(epoch_table(u32::MAX), 1);
        assert_eq!(epoch_table(next_epoch(u32::MAX)), 0);
    }

    #[test]
    fn counter_names_cover_every_slot() {
        assert_eq!(counter::NAMES.len(), counter::COUNT as usize);
        assert_eq!(
            counter::NAMES[counter::FLOW_INSERT_FAILED as usize],
            "flow_insert_failed"
        );
        assert_eq!(
            counter::NAMES[counter::GSO_SEGMENTS as usize],
            "gso_extra_segments"
        );
    }

    #[test]
    fn v4_mapping() {
        assert_eq!(v4_mapped([10, 0, 0, 1])[10..], [0xff, 0xff, 10, 0, 0, 1]);
    }
}
