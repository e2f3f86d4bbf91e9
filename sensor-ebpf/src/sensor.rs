use core::mem::size_of;

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    helpers::generated::bpf_ktime_get_ns,
    macros::{classifier, map, xdp},
    maps::{Array, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use sensor_common::{
    CLOCK_CONFIG, Counters, DEFAULT_ESTABLISHED_SIZE, DEFAULT_FLOW_SLOTS, DEFAULT_FLOW_TABLE_SIZE,
    DEFAULT_SCAN_SOURCES, DIR_EGRESS, DIR_INGRESS, FlowKey, FlowSlot, FlowValue, HOST_BITMAP_WORDS,
    KEY_FLAG_FRAGMENT, KEY_FLAG_L4_TRUNCATED, PORT_BITMAP_WORDS, PROBE_AGGREGATES, ProbeAggregate,
    REASON_HOSTS, REASON_PORTS, SCAN_EVENT_RING_BYTES, SCAN_TIME_SHIFT, ScanEvent, ScanState,
    SensorConfig, SourceKey, counter, epoch_table, probe, tcp,
};

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[map]
static FLOWS_0: LruPerCpuHashMap<FlowKey, FlowValue> =
    LruPerCpuHashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, BPF_F_NO_COMMON_LRU);
#[map]
static FLOWS_1: LruPerCpuHashMap<FlowKey, FlowValue> =
    LruPerCpuHashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, BPF_F_NO_COMMON_LRU);
/// Per-CPU flow slots in front of each flow table (see `FlowSlot`).
#[map]
static FLOW_SLOTS_0: PerCpuArray<FlowSlot> = PerCpuArray::with_max_entries(DEFAULT_FLOW_SLOTS, 0);
#[map]
static FLOW_SLOTS_1: PerCpuArray<FlowSlot> = PerCpuArray::with_max_entries(DEFAULT_FLOW_SLOTS, 0);
#[map]
static PROBE_AGGREGATES_0: PerCpuArray<ProbeAggregate> =
    PerCpuArray::with_max_entries(PROBE_AGGREGATES, 0);
#[map]
static PROBE_AGGREGATES_1: PerCpuArray<ProbeAggregate> =
    PerCpuArray::with_max_entries(PROBE_AGGREGATES, 0);
/// Memory-mapped, so the agent changes `epoch` and `now_ns` with single atomic stores.
#[map]
static CONFIG: Array<SensorConfig> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[map]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);
/// Shared (not per-CPU) so that a scan spread over CPUs adds up in one place.
#[map]
static SCAN_STATE: LruHashMap<SourceKey, ScanState> =
    LruHashMap::with_max_entries(DEFAULT_SCAN_SOURCES, 0);
/// Conversations known to have been answered (canonical key -> last seen): their packets are never
/// probes, even right after the flow tables were swapped and drained.
#[map]
static ESTABLISHED: LruHashMap<FlowKey, u64> =
    LruHashMap::with_max_entries(DEFAULT_ESTABLISHED_SIZE, 0);
/// Per-CPU scratch space for building a fresh `ScanState`: the programs' stack is nearly full
/// (Linux 6.1 refuses a combined stack over 512 bytes).
#[map]
static SCRATCH: PerCpuArray<ScanState> = PerCpuArray::with_max_entries(1, 0);
#[map]
static SCAN_EVENTS: RingBuf = RingBuf::with_byte_size(SCAN_EVENT_RING_BYTES, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
const BPF_NOEXIST: u64 = 1;
/// Per-CPU LRU lists: an insert that must evict takes no global lock and scans only its CPU's list.
const BPF_F_NO_COMMON_LRU: u32 = 2;
const BPF_F_MMAPABLE: u32 = 1 << 10;
const EEXIST: i32 = 17;
/// IPv6 extension headers followed before giving up (ports then stay zero, counted).
const MAX_IPV6_EXT: usize = 6;

#[xdp]
pub fn picket_xdp(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    handle(ctx.data(), ctx.data_end(), ifindex, DIR_INGRESS, 1, 0);
    xdp_action::XDP_PASS
}

#[classifier]
pub fn picket_tc_egress(ctx: TcContext) -> i32 {
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel passed us; reading its fields is allowed.
    let (ifindex, len, gso_segs) = unsafe {
        let skb = &*ctx.skb.skb;
        (skb.ifindex, skb.len, skb.gso_segs)
    };
    // Headers may sit in paged data on egress: make up to 128 bytes linear when they are not.
    let want = if len < 128 { len } else { 128 };
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        let _ = ctx.pull_data(want);
    }
    let segs = if gso_segs > 1 { gso_segs } else { 1 };
    handle(ctx.data(), ctx.data_end(), ifindex, DIR_EGRESS, segs, len);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn count(idx: u32, n: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(0) {
        // SAFETY: per-CPU entry, only this CPU writes it while we run (no preemption in BPF);
        // `idx` is always a constant below COUNT.
        unsafe { (*p).v[idx as usize] += n };
    }
}

/// Pointer to a `T` at `off` bytes into the packet, if the whole `T` lies before `end`.
#[inline(always)]
fn ptr_at<T>(start: usize, end: usize, off: usize) -> Option<*const T> {
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

#[inline(always)]
fn load_u8(start: usize, end: usize, off: usize) -> Option<u8> {
    // SAFETY: bounds checked by ptr_at.
    ptr_at::<u8>(start, end, off).map(|p| unsafe { *p })
}

#[inline(always)]
fn load_be16(start: usize, end: usize, off: usize) -> Option<u16> {
    // SAFETY: bounds checked by ptr_at; unaligned read of plain bytes.
    ptr_at::<[u8; 2]>(start, end, off).map(|p| u16::from_be_bytes(unsafe { *p }))
}

struct Packet {
    key: FlowKey,
    /// IP-layer bytes of this (first) segment.
    ip_bytes: u64,
    /// Length of the IP + transport headers, replicated per GSO segment.
    hdr_len: u64,
    /// Offset of the IP header from the start of the frame.
    l3_off: u64,
    tcp_flags: u8,
    /// TCP payload is empty (for bare-ACK probes).
    tcp_no_payload: bool,
}

#[inline(always)]
fn handle(start: usize, end: usize, ifindex: u32, dir: u8, segs: u32, skb_len: u32) {
    count(counter::SEEN, 1);
    count(
        if dir == DIR_INGRESS {
            counter::INGRESS
        } else {
            counter::EGRESS
        },
        1,
    );
    let Some(pkt) = parse(start, end, ifindex) else {
        return;
    };
    count(counter::PARSED, 1);
    let (packets, bytes) = if segs > 1 {
        // A GSO super-packet stands for `segs` packets on the wire, each with its own headers.
        count(counter::GSO_SEGMENTS, (segs - 1) as u64);
        let payload_and_hdr = (skb_len as u64).saturating_sub(pkt.l3_off);
        (
            segs as u64,
            payload_and_hdr + (segs as u64 - 1) * pkt.hdr_len,
        )
    } else {
        (1, pkt.ip_bytes)
    };
    let Some(cfg) = CONFIG.get(0) else {
        return;
    };
    // The agent stores these two words while programs run: each is read exactly once, so one
    // packet sees one epoch (table and slot generation together) and one time.
    // SAFETY: aligned fields of the map value; the helper is a plain call.
    let epoch = unsafe { core::ptr::read_volatile(&cfg.epoch) };
    let now = if cfg.clock == CLOCK_CONFIG {
        unsafe { core::ptr::read_volatile(&cfg.now_ns) }
    } else {
        unsafe { bpf_ktime_get_ns() }
    };
    // A SYN without ACK opens a conversation and never answers one.
    let syn_only = pkt.key.protocol == IPPROTO_TCP
        && pkt.tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN
        && pkt.key.flags == 0;
    let m = Meter {
        dir,
        now,
        packets,
        bytes,
        epoch,
    };
    // Two copies of the same code, each naming its own maps, so the verifier can inline lookups.
    let new_flow = if epoch_table(epoch) == 0 {
        let slots = Slots {
            flows: &FLOW_SLOTS_0,
            aggregates: &PROBE_AGGREGATES_0,
        };
        record(
            &FLOWS_0,
            &slots,
            counter::FLOW_INSERTS_0,
            cfg,
            &pkt,
            syn_only,
            &m,
        )
    } else {
        let slots = Slots {
            flows: &FLOW_SLOTS_1,
            aggregates: &PROBE_AGGREGATES_1,
        };
        record(
            &FLOWS_1,
            &slots,
            counter::FLOW_INSERTS_1,
            cfg,
            &pkt,
            syn_only,
            &m,
        )
    };
    if new_flow {
        // A SYN-ACK answers by definition (the SYN it answers sits in a flow slot, maybe of
        // another CPU); a bare SYN never answers, so it skips the lookup, which matters under a
        // SYN scan where every packet is a new flow.
        let syn_ack = pkt.key.protocol == IPPROTO_TCP
            && pkt.tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN | tcp::ACK;
        let reverse_seen = syn_ack
            || !syn_only
                && if epoch_table(epoch) == 0 {
                    reverse_exists(&FLOWS_0, &pkt)
                } else {
                    reverse_exists(&FLOWS_1, &pkt)
                };
        first_packet(cfg, &pkt, reverse_seen, now);
    }
}

/// What one packet (or GSO super-packet) adds to its flow.
struct Meter {
    dir: u8,
    now: u64,
    packets: u64,
    bytes: u64,
    /// The epoch this packet counts in (generation of the slots it may touch).
    epoch: u32,
}

#[inline(always)]
fn same_key(a: &FlowKey, b: &FlowKey) -> bool {
    let (x, y) = (a.words(), b.words());
    let mut diff = 0u32;
    let mut i = 0;
    while i < 11 {
        diff |= x[i] ^ y[i];
        i += 1;
    }
    diff == 0
}

#[inline(always)]
fn add_to(v: &mut FlowValue, pkt: &Packet, m: &Meter) {
    v.packets += m.packets;
    v.bytes += m.bytes;
    v.last_seen_ns = m.now;
    v.tcp_flags |= pkt.tcp_flags;
    v.directions |= m.dir;
}

/// The value of a flow whose first packet this is.
#[inline(always)]
fn first_value(pkt: &Packet, m: &Meter, opened_by_syn: bool) -> FlowValue {
    FlowValue {
        packets: m.packets,
        bytes: m.bytes,
        first_seen_ns: m.now,
        last_seen_ns: m.now,
        tcp_flags: pkt.tcp_flags,
        directions: m.dir,
        opened_by_syn: opened_by_syn as u8,
        _pad1: 0,
        _pad4: 0,
    }
}

/// Takes `s` (a slot of an older generation: free) for `pkt`'s flow, holding `value`.
#[inline(always)]
fn claim(s: &mut FlowSlot, m: &Meter, pkt: &Packet, value: FlowValue) {
    s.key.copy_from(&pkt.key);
    s.generation = m.epoch;
    s.value = value;
}

/// The per-CPU arrays of one table: flow slots and per-source probe aggregates.
struct Slots<'a> {
    flows: &'a PerCpuArray<FlowSlot>,
    aggregates: &'a PerCpuArray<ProbeAggregate>,
}

#[inline(always)]
fn flagged_scanner(src: &[u8; 16]) -> bool {
    match SCAN_STATE.get_ptr(SourceKey { addr: *src }) {
        // SAFETY: map value pointer, read only.
        Some(st) => unsafe { (*st).reported != 0 },
        None => false,
    }
}

/// Adds a bare SYN to its source's probe aggregate; false when another live source holds it.
#[inline(always)]
fn probe_aggregate(aggs: &PerCpuArray<ProbeAggregate>, pkt: &Packet, m: &Meter) -> bool {
    let Some(g) = aggs.get_ptr_mut(ProbeAggregate::index_of(&pkt.key.src_addr)) else {
        return false;
    };
    // SAFETY: this CPU's copy; programs do not preempt each other on one CPU.
    let g = unsafe { &mut *g };
    if g.generation == m.epoch {
        if g.src_addr != pkt.key.src_addr || g.ifindex != pkt.key.ifindex {
            return false;
        }
        g.packets += m.packets;
        g.bytes += m.bytes;
        g.last_seen_ns = m.now;
        g.directions |= m.dir;
        return true;
    }
    g.src_addr = pkt.key.src_addr;
    g.ifindex = pkt.key.ifindex;
    g.generation = m.epoch;
    g.packets = m.packets;
    g.bytes = m.bytes;
    g.first_seen_ns = m.now;
    g.last_seen_ns = m.now;
    g.directions = m.dir;
    g.ip_version = pkt.key.ip_version;
    true
}

/// Adds the packet to the flow table (or a bare SYN to its flow slot or its source's probe
/// aggregate); returns true if it created the entry (a first contact).
#[inline(always)]
fn record(
    table: &LruPerCpuHashMap<FlowKey, FlowValue>,
    slots: &Slots<'_>,
    inserts_counter: u32,
    cfg: &SensorConfig,
    pkt: &Packet,
    syn_only: bool,
    m: &Meter,
) -> bool {
    // Every flow first tries its slot on this CPU (index = hash of the key; a slot of another
    // generation is free): a hit is an inlined array access instead of a hash-table helper call.
    // Slots hold bare SYNs (which skip the table entirely: under a scan, probing a big hash
    // table at a random key is the expensive part) and flows the table already knows, claimed
    // on their next packet. The agent merges slots and table by key, so counts stay exact, and
    // every flow not opened by a bare SYN is in the table for the reverse lookups.
    let idx = pkt.key.slot_hash() & cfg.slot_mask;
    let mut free_slot = None;
    if let Some(s) = slots.flows.get_ptr_mut(idx) {
        // SAFETY: this CPU's copy of the slot; programs do not preempt each other on one CPU.
        let s = unsafe { &mut *s };
        if s.generation == m.epoch {
            if same_key(&s.key, &pkt.key) {
                add_to(&mut s.value, pkt, m);
                return false;
            }
        } else {
            free_slot = Some(s);
        }
    }
    if syn_only {
        if let Some(s) = free_slot {
            claim(s, m, pkt, first_value(pkt, m, true));
            count(counter::SYN_SLOT_CLAIMS, 1);
            return true;
        }
        count(counter::SYN_SLOT_COLLISIONS, 1);
        // Sum it per source only for a source already flagged as scanning in this window: a
        // busy but benign client keeps exact per-flow records (its SYN in the table below).
        if flagged_scanner(&pkt.key.src_addr) && probe_aggregate(slots.aggregates, pkt, m) {
            count(counter::PROBES_AGGREGATED, 1);
            return true;
        }
    }
    if let Some(v) = table.get_ptr_mut(&pkt.key) {
        // SAFETY: per-CPU value of this CPU.
        add_to(unsafe { &mut *v }, pkt, m);
        // Known flow, free slot: its next packets take the fast path.
        // (It starts empty: this packet is counted in the table.)
        if let Some(s) = free_slot {
            let empty = FlowValue {
                first_seen_ns: m.now,
                last_seen_ns: m.now,
                ..FlowValue::default()
            };
            claim(s, m, pkt, empty);
        }
        return false;
    }
    match table.insert(&pkt.key, &first_value(pkt, m, syn_only), BPF_NOEXIST) {
        Ok(()) => {
            count(inserts_counter, 1);
            return true;
        }
        Err(e) if e == -EEXIST => {
            // Another CPU created it between our lookup and insert: add to our CPU's share.
            if let Some(v) = table.get_ptr_mut(&pkt.key) {
                // SAFETY: per-CPU value of this CPU.
                let v = unsafe { &mut *v };
                if v.first_seen_ns == 0 {
                    v.first_seen_ns = m.now;
                }
                add_to(v, pkt, m);
                return false;
            }
        }
        Err(_) => {}
    }
    count(counter::FLOW_INSERT_FAILED, m.packets);
    count(counter::FLOW_INSERT_FAILED_BYTES, m.bytes);
    false
}

#[inline(always)]
fn reverse_key(k: &FlowKey) -> FlowKey {
    FlowKey {
        ifindex: k.ifindex,
        src_addr: k.dst_addr,
        dst_addr: k.src_addr,
        src_port: k.dst_port,
        dst_port: k.src_port,
        protocol: k.protocol,
        ip_version: k.ip_version,
        flags: k.flags,
        _pad: 0,
    }
}

#[inline(always)]
fn reverse_exists(table: &LruPerCpuHashMap<FlowKey, FlowValue>, pkt: &Packet) -> bool {
    // ICMP replies have a different type than their request: no reverse key to find.
    if pkt.key.protocol != IPPROTO_TCP && pkt.key.protocol != IPPROTO_UDP {
        return false;
    }
    table.get_ptr(reverse_key(&pkt.key)).is_some()
}

/// One key for both directions of a conversation: the endpoint that sorts first is `src`.
#[inline(always)]
fn canonical_key(k: &FlowKey) -> FlowKey {
    let mut swap = false;
    let mut decided = false;
    let mut i = 0;
    while i < 16 {
        if !decided && k.src_addr[i] != k.dst_addr[i] {
            swap = k.src_addr[i] > k.dst_addr[i];
            decided = true;
        }
        i += 1;
    }
    if !decided {
        swap = k.src_port > k.dst_port;
    }
    let mut c = if swap { reverse_key(k) } else { *k };
    c.flags = 0;
    c
}

/// Probe kind of the first packet of a new flow, or None when it cannot be a probe.
#[inline(always)]
fn probe_kind(pkt: &Packet) -> Option<usize> {
    match pkt.key.protocol {
        IPPROTO_TCP => {
            let f =
                pkt.tcp_flags & (tcp::FIN | tcp::SYN | tcp::RST | tcp::PSH | tcp::ACK | tcp::URG);
            if f & tcp::SYN != 0 && f & tcp::ACK == 0 {
                Some(probe::SYN)
            } else if f == 0 {
                Some(probe::NULL)
            } else if f & (tcp::FIN | tcp::PSH | tcp::URG) == tcp::FIN | tcp::PSH | tcp::URG
                && f & (tcp::SYN | tcp::ACK) == 0
            {
                Some(probe::XMAS)
            } else if f == tcp::FIN {
                Some(probe::FIN)
            } else if f == tcp::ACK && pkt.tcp_no_payload {
                Some(probe::ACK)
            } else {
                None
            }
        }
        IPPROTO_UDP => Some(probe::UDP),
        // Echo request: ICMP type 8, ICMPv6 type 128 (type is in src_port).
        IPPROTO_ICMP if pkt.key.src_port == 8 => Some(probe::ICMP_ECHO),
        IPPROTO_ICMPV6 if pkt.key.src_port == 128 => Some(probe::ICMP_ECHO),
        _ => None,
    }
}

/// Scan accounting for the first packet of a flow in this interval.
#[inline(always)]
fn first_packet(cfg: &SensorConfig, pkt: &Packet, reverse_seen: bool, now: u64) {
    if pkt.key.flags & KEY_FLAG_FRAGMENT != 0 {
        return;
    }
    if reverse_seen {
        // An answer: remember the conversation so its later packets never count as probes.
        let _ = ESTABLISHED.insert(canonical_key(&pkt.key), now, 0);
        return;
    }
    let Some(kind) = probe_kind(pkt) else {
        return;
    };
    // ACK and UDP are probes only for conversations never answered (a SYN, FIN, NULL or Xmas
    // opening a flow is a probe by itself; nothing legitimate starts that way but a SYN).
    if (kind == probe::ACK || kind == probe::UDP)
        && ESTABLISHED.get_ptr(canonical_key(&pkt.key)).is_some()
    {
        return;
    }
    count(counter::PROBES, 1);
    scan_update(cfg, pkt, kind, now);
}

#[inline(always)]
fn hash_u32(x: u32) -> u32 {
    x.wrapping_mul(0x9E37_79B1)
}

#[inline(always)]
fn fold_addr(a: &[u8; 16]) -> u32 {
    let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    w(0) ^ w(4) ^ w(8) ^ w(12).rotate_left(7)
}

#[inline(always)]
fn reset_window(st: &mut ScanState, now_units: u32) {
    // Field by field, in place: a whole ScanState built on the stack would not fit it.
    st.window_start = now_units;
    st.ports_set = 0;
    st.hosts_set = 0;
    st.reported = 0;
    st.port_bits = [0; PORT_BITMAP_WORDS];
    st.host_bits = [0; HOST_BITMAP_WORDS];
    st.probes = [0; probe::COUNT];
}

#[inline(always)]
fn scan_update(cfg: &SensorConfig, pkt: &Packet, kind: usize, now: u64) {
    let src = SourceKey {
        addr: pkt.key.src_addr,
    };
    let now_units = (now >> SCAN_TIME_SHIFT) as u32;
    let mut st = SCAN_STATE.get_ptr_mut(&src);
    if st.is_none() {
        let Some(fresh) = SCRATCH.get_ptr_mut(0) else {
            return;
        };
        // SAFETY: this CPU's scratch slot.
        let fresh = unsafe { &mut *fresh };
        reset_window(fresh, now_units);
        // EEXIST (another CPU raced us) is fine: the lookup below finds its entry. Other failures
        // leave `st` empty and are counted below.
        let _ = SCAN_STATE.insert(&src, &*fresh, BPF_NOEXIST);
        st = SCAN_STATE.get_ptr_mut(&src);
    }
    let Some(st) = st else {
        count(counter::SCAN_STATE_INSERT_FAILED, 1);
        return;
    };
    // SAFETY: map value pointer; concurrent CPUs may race on it, which can lose an increment
    // (an undercount of fan-out) but never corrupt memory.
    let st = unsafe { &mut *st };
    let mut age_units = now_units.wrapping_sub(st.window_start) as u64;
    if age_units << SCAN_TIME_SHIFT >= cfg.window_ns {
        reset_window(st, now_units);
        age_units = 0;
    }
    let ph = hash_u32(pkt.key.dst_port as u32 + 1) >> 25; // 7 bits
    let pw = (ph >> 6) as usize & (PORT_BITMAP_WORDS - 1);
    let pm = 1u64 << (ph & 63);
    if st.port_bits[pw] & pm == 0 {
        st.port_bits[pw] |= pm;
        st.ports_set += 1;
    }
    let hh = hash_u32(fold_addr(&pkt.key.dst_addr)) >> 25; // 7 bits
    let hw = (hh >> 6) as usize & (HOST_BITMAP_WORDS - 1);
    let hm = 1u64 << (hh & 63);
    if st.host_bits[hw] & hm == 0 {
        st.host_bits[hw] |= hm;
        st.hosts_set += 1;
    }
    if kind < probe::COUNT && st.probes[kind] != u8::MAX {
        st.probes[kind] += 1;
    }

    if st.reported != 0 {
        return;
    }
    let mut reason = 0u8;
    if cfg.port_bits_threshold != 0 && st.ports_set as u32 >= cfg.port_bits_threshold {
        reason |= REASON_PORTS;
    }
    if cfg.host_bits_threshold != 0 && st.hosts_set as u32 >= cfg.host_bits_threshold {
        reason |= REASON_HOSTS;
    }
    if reason == 0 {
        return;
    }
    st.reported = 1;
    match SCAN_EVENTS.reserve::<ScanEvent>(0) {
        Some(mut entry) => {
            // Field by field, straight into the ring.
            let ev = entry.as_mut_ptr();
            // SAFETY: `ev` points at a reserved, writable ScanEvent-sized record.
            unsafe {
                (*ev).src_addr = pkt.key.src_addr;
                (*ev).last_dst = pkt.key.dst_addr;
                (*ev).window_start_ns =
                    ((now >> SCAN_TIME_SHIFT).saturating_sub(age_units)) << SCAN_TIME_SHIFT;
                (*ev).last_seen_ns = now;
                (*ev).port_bits_set = st.ports_set as u32;
                (*ev).host_bits_set = st.hosts_set as u32;
                let mut i = 0;
                while i < probe::COUNT {
                    (*ev).probes[i] = st.probes[i] as u32;
                    i += 1;
                }
                (*ev).ifindex = pkt.key.ifindex;
                (*ev).last_dst_port = pkt.key.dst_port;
                (*ev).ip_version = pkt.key.ip_version;
                (*ev).reason = reason;
            }
            entry.submit(0);
            count(counter::SCAN_EVENTS, 1);
        }
        None => {
            // Ring full: count it and let the next probe of this source try again.
            st.reported = 0;
            count(counter::SCAN_EVENTS_DROPPED, 1);
        }
    }
}

#[inline(always)]
fn parse(start: usize, end: usize, ifindex: u32) -> Option<Packet> {
    let Some(mut proto) = load_be16(start, end, 12) else {
        count(counter::UNPARSED_TRUNCATED_L2, 1);
        return None;
    };
    let mut off = ETH_HLEN;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        count(counter::VLAN_TAGGED, 1);
        // Up to two tags (QinQ): outer 802.1ad or 802.1Q, inner 802.1Q.
        let Some(p) = load_be16(start, end, off + 2) else {
            count(counter::UNPARSED_TRUNCATED_L2, 1);
            return None;
        };
        proto = p;
        off += 4;
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            let Some(p) = load_be16(start, end, off + 2) else {
                count(counter::UNPARSED_TRUNCATED_L2, 1);
                return None;
            };
            proto = p;
            off += 4;
        }
    }
    let l3_off = off;
    let mut key = FlowKey {
        ifindex,
        ..FlowKey::default()
    };
    let ip_bytes: u64;
    let l4_off: usize;
    let mut l4_proto: u8;
    let mut has_ports = true;
    if proto == ETH_P_IPV4 {
        let Some(vihl) = load_u8(start, end, off) else {
            count(counter::UNPARSED_TRUNCATED_L3, 1);
            return None;
        };
        let ihl = ((vihl & 0x0f) as usize) * 4;
        if vihl >> 4 != 4 || ihl < 20 {
            count(counter::UNPARSED_BAD_L3, 1);
            return None;
        }
        let Some(h) = ptr_at::<[u8; 20]>(start, end, off) else {
            count(counter::UNPARSED_TRUNCATED_L3, 1);
            return None;
        };
        // SAFETY: bounds checked.
        let h = unsafe { &*h };
        ip_bytes = u16::from_be_bytes([h[2], h[3]]) as u64;
        let frag = u16::from_be_bytes([h[6], h[7]]);
        l4_proto = h[9];
        key.src_addr = sensor_common::v4_mapped([h[12], h[13], h[14], h[15]]);
        key.dst_addr = sensor_common::v4_mapped([h[16], h[17], h[18], h[19]]);
        key.ip_version = 4;
        if frag & 0x3fff != 0 {
            // More-fragments set or a non-zero offset.
            count(counter::FRAGMENTS, 1);
            if frag & 0x1fff != 0 {
                has_ports = false;
                key.flags |= KEY_FLAG_FRAGMENT;
            }
        }
        l4_off = off + ihl;
    } else if proto == ETH_P_IPV6 {
        let Some(h) = ptr_at::<[u8; 40]>(start, end, off) else {
            count(counter::UNPARSED_TRUNCATED_L3, 1);
            return None;
        };
        // SAFETY: bounds checked.
        let h = unsafe { &*h };
        if h[0] >> 4 != 6 {
            count(counter::UNPARSED_BAD_L3, 1);
            return None;
        }
        ip_bytes = u16::from_be_bytes([h[4], h[5]]) as u64 + 40;
        l4_proto = h[6];
        let mut s = [0u8; 16];
        let mut d = [0u8; 16];
        s.copy_from_slice(&h[8..24]);
        d.copy_from_slice(&h[24..40]);
        key.src_addr = s;
        key.dst_addr = d;
        key.ip_version = 6;
        let mut o = off + 40;
        let mut i = 0;
        let mut done = false;
        while i < MAX_IPV6_EXT {
            if l4_proto != 0 && l4_proto != 43 && l4_proto != 60 && l4_proto != 44 && l4_proto != 51
            {
                done = true;
                break;
            }
            // Every extension header we follow is at least 8 bytes: one bounds check, one pointer
            // (two derived pointers would lose the verifier's range tracking).
            let Some(e) = ptr_at::<[u8; 8]>(start, end, o) else {
                has_ports = false;
                key.flags |= KEY_FLAG_L4_TRUNCATED;
                done = true;
                break;
            };
            // SAFETY: bounds checked.
            let e = unsafe { &*e };
            let this = l4_proto;
            l4_proto = e[0];
            if this == 44 {
                // Fragment header: 8 bytes; ports only in the first fragment.
                count(counter::FRAGMENTS, 1);
                o += 8;
                if u16::from_be_bytes([e[2], e[3]]) & 0xfff8 != 0 {
                    has_ports = false;
                    key.flags |= KEY_FLAG_FRAGMENT;
                    done = true;
                    break;
                }
            } else if this == 51 {
                // Authentication header: (len + 2) * 4 bytes.
                o += (e[1] as usize + 2) * 4;
            } else {
                // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
                o += (e[1] as usize + 1) * 8;
            }
            // Keep the offset provably bounded for the verifier.
            if o > 512 {
                has_ports = false;
                done = true;
                count(counter::IPV6_EXT_TOO_DEEP, 1);
                break;
            }
            i += 1;
        }
        if !done {
            has_ports = false;
            count(counter::IPV6_EXT_TOO_DEEP, 1);
        }
        l4_off = o;
    } else {
        count(counter::UNPARSED_NON_IP, 1);
        return None;
    }
    key.protocol = l4_proto;
    let mut pkt = Packet {
        key,
        ip_bytes,
        hdr_len: (l4_off - l3_off) as u64,
        l3_off: l3_off as u64,
        tcp_flags: 0,
        tcp_no_payload: false,
    };
    if !has_ports || l4_off > 600 {
        return Some(pkt);
    }
    match l4_proto {
        IPPROTO_TCP => {
            let Some(t) = ptr_at::<[u8; 20]>(start, end, l4_off) else {
                l4_truncated(&mut pkt);
                return Some(pkt);
            };
            // SAFETY: bounds checked.
            let t = unsafe { &*t };
            pkt.key.src_port = u16::from_be_bytes([t[0], t[1]]);
            pkt.key.dst_port = u16::from_be_bytes([t[2], t[3]]);
            pkt.tcp_flags = t[13];
            let doff = ((t[12] >> 4) as u64) * 4;
            pkt.hdr_len += doff;
            pkt.tcp_no_payload = (l4_off - l3_off) as u64 + doff >= ip_bytes;
        }
        IPPROTO_UDP => {
            let Some(u) = ptr_at::<[u8; 8]>(start, end, l4_off) else {
                l4_truncated(&mut pkt);
                return Some(pkt);
            };
            // SAFETY: bounds checked.
            let u = unsafe { &*u };
            pkt.key.src_port = u16::from_be_bytes([u[0], u[1]]);
            pkt.key.dst_port = u16::from_be_bytes([u[2], u[3]]);
            pkt.hdr_len += 8;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let Some(c) = ptr_at::<[u8; 2]>(start, end, l4_off) else {
                l4_truncated(&mut pkt);
                return Some(pkt);
            };
            // SAFETY: bounds checked.
            let c = unsafe { &*c };
            pkt.key.src_port = c[0] as u16;
            pkt.key.dst_port = c[1] as u16;
            pkt.hdr_len += 8;
        }
        _ => {}
    }
    Some(pkt)
}

#[inline(always)]
fn l4_truncated(pkt: &mut Packet) {
    count(counter::L4_TRUNCATED, 1);
    pkt.key.flags |= KEY_FLAG_L4_TRUNCATED;
}
