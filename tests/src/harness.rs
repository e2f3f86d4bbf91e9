//! Running the real eBPF programs without attaching them (BPF_PROG_TEST_RUN), for the program
//! tests and the per-packet benchmarks (test code: it is not part of the sensor): crafted frames in, flow table / counters / events out.
//! Time comes from the configuration (`CLOCK_CONFIG`), so window logic is tested without sleeping.

use std::{collections::HashMap, os::fd::AsFd, time::Duration};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, PerCpuValues, RingBuf},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use sensor_common::{Counters, FlowKey, FlowValue, ScanEvent, SensorConfig, counter, names};

use sensor_user::{
    programs::{EBPF_OBJECT, PEER_OBJECT},
    records::{FlowMap, FlowTotals},
    tables,
};

pub struct Harness {
    bpf: Ebpf,
    config: Array<MapData, SensorConfig>,
    counters: PerCpuArray<MapData, Counters>,
    events: RingBuf<MapData>,
    pub cfg: SensorConfig,
    nr_cpus: usize,
}

impl Harness {
    /// Loads (not attaches) both programs with the given flow-table size.
    pub fn load(flow_table_size: u32) -> anyhow::Result<Self> {
        let mut bpf = EbpfLoader::new()
            .map_max_entries(names::FLOWS[0], flow_table_size)
            .map_max_entries(names::FLOWS[1], flow_table_size)
            .load(EBPF_OBJECT)?;
        let p: &mut Xdp = bpf
            .program_mut(names::XDP_PROGRAM)
            .expect("xdp program")
            .try_into()?;
        p.load()?;
        let p: &mut SchedClassifier = bpf
            .program_mut(names::TC_PROGRAM)
            .expect("tc program")
            .try_into()?;
        p.load()?;
        let config = Array::try_from(bpf.take_map(names::CONFIG).expect("CONFIG"))?;
        let counters = PerCpuArray::try_from(bpf.take_map(names::COUNTERS).expect("COUNTERS"))?;
        let events = RingBuf::try_from(bpf.take_map(names::SCAN_EVENTS).expect("SCAN_EVENTS"))?;
        let mut h = Harness {
            bpf,
            config,
            counters,
            events,
            cfg: SensorConfig {
                window_ns: 60_000_000_000,
                port_bits_threshold: 19,
                host_bits_threshold: 23,
                clock: sensor_common::CLOCK_CONFIG,
                now_ns: 1_000_000_000,
                epoch: sensor_common::FIRST_EPOCH,
                slot_mask: sensor_common::DEFAULT_FLOW_SLOTS - 1,
                _pad: 0,
            },
            nr_cpus: aya::util::nr_cpus().map_err(|(p, e)| anyhow::anyhow!("{p}: {e}"))?,
        };
        h.apply()?;
        Ok(h)
    }

    pub fn apply(&mut self) -> anyhow::Result<()> {
        self.config.set(0, self.cfg, 0)?;
        Ok(())
    }

    pub fn set_now(&mut self, ns: u64) -> anyhow::Result<()> {
        self.cfg.now_ns = ns;
        self.apply()
    }

    /// Runs the XDP program on `frame` `repeat` times; returns its return value and the average
    /// time per run as measured by the kernel.
    pub fn run_xdp(&self, frame: &[u8], repeat: u32) -> anyhow::Result<(u32, Duration)> {
        let p: &Xdp = self
            .bpf
            .program(names::XDP_PROGRAM)
            .expect("xdp")
            .try_into()?;
        let r = p.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })?;
        Ok((r.return_value, r.duration))
    }

    /// The XDP program's fd (for raw test runs, links and run statistics).
    pub fn xdp_fd(&self) -> anyhow::Result<std::os::fd::BorrowedFd<'_>> {
        let p: &Xdp = self
            .bpf
            .program(names::XDP_PROGRAM)
            .expect("xdp")
            .try_into()?;
        Ok(p.fd()?.as_fd())
    }

    /// Runs the tc program on `frame` once (as egress).
    pub fn run_tc(&self, frame: &[u8]) -> anyhow::Result<u32> {
        let p: &SchedClassifier = self
            .bpf
            .program(names::TC_PROGRAM)
            .expect("tc")
            .try_into()?;
        let r = p.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: 1,
            ..TestRunOptions::default()
        })?;
        Ok(r.return_value)
    }

    fn table(&self, i: usize) -> &MapData {
        match self.bpf.map(names::FLOWS[i]).expect("flow table") {
            aya::maps::Map::PerCpuLruHashMap(d) => d,
            other => panic!("unexpected flow table type {other:?}"),
        }
    }

    /// Drains both flow tables (the programs are not attached: nothing races with us).
    /// The fd of flow table `i` (0 or 1), for the drain benchmark.
    pub fn flow_table_fd(&self, i: usize) -> std::os::fd::BorrowedFd<'_> {
        self.table(i).fd().as_fd()
    }

    pub fn nr_cpus(&self) -> usize {
        self.nr_cpus
    }

    pub fn take_flows(&self) -> anyhow::Result<FlowMap<FlowTotals>> {
        let mut out = FlowMap::default();
        for i in 0..2 {
            tables::drain_flow_table(
                self.table(i).fd().as_fd(),
                self.nr_cpus,
                tables::into_map(&mut out),
            )?;
        }
        let slots = self.active_array(names::FLOW_SLOTS);
        tables::read_flow_slots(
            slots.fd().as_fd(),
            sensor_common::DEFAULT_FLOW_SLOTS,
            self.nr_cpus,
            self.cfg.epoch,
            tables::into_map(&mut out),
        )?;
        Ok(out)
    }

    /// The active table's one of a pair of per-CPU arrays (flow slots or aggregates).
    fn active_array(&self, pair: [&str; 2]) -> &MapData {
        let name = pair[sensor_common::epoch_table(self.cfg.epoch)];
        match self.bpf.map(name).unwrap_or_else(|| panic!("map {name}")) {
            aya::maps::Map::PerCpuArray(d) => d,
            other => panic!("{name}: unexpected map type {other:?}"),
        }
    }

    /// The per-source probe aggregates of the active table.
    pub fn take_probe_aggregates(&self) -> anyhow::Result<Vec<sensor_user::records::ProbeTotals>> {
        let aggs = self.active_array(names::PROBE_AGGREGATES);
        Ok(tables::read_probe_aggregates(
            aggs.fd().as_fd(),
            self.nr_cpus,
            self.cfg.epoch,
        )?)
    }

    /// Frees every flow slot (the next generation) while staying on the same table: two epochs
    /// on (the agent goes one, which also switches tables).
    pub fn next_generation(&mut self) -> anyhow::Result<()> {
        self.cfg.epoch = sensor_common::next_epoch(sensor_common::next_epoch(self.cfg.epoch));
        self.apply()
    }

    /// Inserts `n` synthetic flows into the active table (for benchmarks at a given fill level).
    pub fn prefill(&mut self, n: u32) -> anyhow::Result<()> {
        let table = names::FLOWS[sensor_common::epoch_table(self.cfg.epoch)];
        prefill(self.bpf.map_mut(table).expect("table"), n, self.nr_cpus)
    }

    pub fn counter(&self, idx: u32) -> anyhow::Result<u64> {
        Ok(self
            .counters
            .get(&0, 0)?
            .iter()
            .map(|c| c.v[idx as usize])
            .sum())
    }

    pub fn counters(&self) -> anyhow::Result<HashMap<&'static str, u64>> {
        let mut m = HashMap::new();
        for i in 0..counter::COUNT {
            m.insert(counter::NAMES[i as usize], self.counter(i)?);
        }
        Ok(m)
    }

    /// The per-source scan state map: (entries now, most entries, bytes of key + value).
    pub fn scan_state_usage(&self) -> anyhow::Result<(usize, u32, u32)> {
        let map = self.bpf.map(names::SCAN_STATE).expect("SCAN_STATE");
        let m: aya::maps::HashMap<_, sensor_common::SourceKey, sensor_common::ScanState> =
            aya::maps::HashMap::try_from(map)?;
        let entries = m.keys().filter(|k| k.is_ok()).count();
        let info = match map {
            aya::maps::Map::LruHashMap(d) => d.info()?,
            other => anyhow::bail!("SCAN_STATE: unexpected map type {other:?}"),
        };
        Ok((
            entries,
            info.max_entries(),
            info.key_size() + info.value_size(),
        ))
    }

    pub fn scan_events(&mut self) -> Vec<ScanEvent> {
        let mut v = Vec::new();
        while let Some(item) = self.events.next() {
            if let Some(e) = sensor_user::sensor::parse_scan_event(&item) {
                v.push(e);
            }
        }
        v
    }
}

/// Builds test frames. Addresses are given as text; everything else as numbers.
pub mod frame {
    use std::net::IpAddr;

    pub use sensor_common::tcp::{ACK, FIN, PSH, RST, SYN, URG};

    #[derive(Clone, Debug, Default)]
    pub struct Frame {
        /// (TPID, VLAN id) tags, outermost first.
        pub tags: Vec<(u16, u16)>,
        /// IPv4 options bytes (multiple of 4).
        pub ip_options: Vec<u8>,
        /// IPv4: (more fragments, offset in 8-byte units).
        pub fragment: Option<(bool, u16)>,
        /// IPv6 extension headers before the transport: (type, total length in bytes).
        pub ext: Vec<(u8, usize)>,
        /// Cut the frame to this length after building it.
        pub truncate: Option<usize>,
    }

    fn l4(proto: u8, sport: u16, dport: u16, flags: u8, payload: usize) -> Vec<u8> {
        let mut v = Vec::new();
        match proto {
            6 => {
                v.extend_from_slice(&sport.to_be_bytes());
                v.extend_from_slice(&dport.to_be_bytes());
                v.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
            }
            17 => {
                v.extend_from_slice(&sport.to_be_bytes());
                v.extend_from_slice(&dport.to_be_bytes());
                v.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
                v.extend_from_slice(&[0, 0]);
            }
            // ICMP / ICMPv6: sport = type, dport = code.
            _ => v.extend_from_slice(&[sport as u8, dport as u8, 0, 0, 0, 1, 0, 1]),
        }
        v.extend(std::iter::repeat_n(0x5a, payload));
        v
    }

    impl Frame {
        #[allow(
            clippy::too_many_arguments,
            reason = "a frame is described by its header fields"
        )]
        pub fn build(
            &self,
            src: &str,
            dst: &str,
            proto: u8,
            sport: u16,
            dport: u16,
            flags: u8,
            payload: usize,
        ) -> Vec<u8> {
            let src: IpAddr = src.parse().expect("src");
            let dst: IpAddr = dst.parse().expect("dst");
            let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
            for (tpid, vid) in &self.tags {
                f.extend_from_slice(&tpid.to_be_bytes());
                f.extend_from_slice(&vid.to_be_bytes());
            }
            let body = l4(proto, sport, dport, flags, payload);
            match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    f.extend_from_slice(&[0x08, 0x00]);
                    let ihl = 5 + self.ip_options.len() / 4;
                    let body = if matches!(self.fragment, Some((_, off)) if off > 0) {
                        vec![0x5a; 8 + payload]
                    } else {
                        body
                    };
                    let total = (ihl * 4 + body.len()) as u16;
                    let frag = match self.fragment {
                        Some((mf, off)) => ((mf as u16) << 13) | off,
                        None => 0x4000,
                    };
                    f.push(0x40 | ihl as u8);
                    f.push(0);
                    f.extend_from_slice(&total.to_be_bytes());
                    f.extend_from_slice(&[0, 1]);
                    f.extend_from_slice(&frag.to_be_bytes());
                    f.extend_from_slice(&[64, proto, 0, 0]);
                    f.extend_from_slice(&s.octets());
                    f.extend_from_slice(&d.octets());
                    f.extend_from_slice(&self.ip_options);
                    f.extend_from_slice(&body);
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    f.extend_from_slice(&[0x86, 0xdd]);
                    let mut ext = Vec::new();
                    let mut next = proto;
                    // Build from the innermost header outwards so each knows its successor.
                    for (ty, len) in self.ext.iter().rev() {
                        let mut h = vec![next, 0];
                        match *ty {
                            44 => {
                                h.extend_from_slice(&[0, 0, 0, 0, 0, 7]);
                            }
                            51 => {
                                h[1] = (len / 4 - 2) as u8;
                                h.resize(*len, 0);
                            }
                            _ => {
                                h[1] = (len / 8 - 1) as u8;
                                h.resize(*len, 0);
                            }
                        }
                        h.extend_from_slice(&ext);
                        ext = h;
                        next = *ty;
                    }
                    let plen = (ext.len() + body.len()) as u16;
                    f.extend_from_slice(&[0x60, 0, 0, 0]);
                    f.extend_from_slice(&plen.to_be_bytes());
                    f.push(next);
                    f.push(64);
                    f.extend_from_slice(&s.octets());
                    f.extend_from_slice(&d.octets());
                    f.extend_from_slice(&ext);
                    f.extend_from_slice(&body);
                }
                _ => panic!("mixed address families"),
            }
            if let Some(n) = self.truncate {
                f.truncate(n);
            }
            f
        }
    }

    /// A plain Ethernet + IPv4/IPv6 frame.
    pub fn ip(
        src: &str,
        dst: &str,
        proto: u8,
        sport: u16,
        dport: u16,
        flags: u8,
        payload: usize,
    ) -> Vec<u8> {
        Frame::default().build(src, dst, proto, sport, dport, flags, payload)
    }

    /// An ARP request (non-IP).
    pub fn arp() -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&[
            0x02, 0, 0, 0, 0, 1, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2,
        ]);
        f
    }
}

/// Pins the calling thread to the CPU it runs on. BPF_PROG_TEST_RUN runs the program on the
/// caller's CPU, so a test that expects per-CPU state (flow slots) left by one run to be there
/// for the next must not migrate between runs. (Processes started later inherit the pinning.)
pub fn pin_to_current_cpu() -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(nix::sched::sched_getcpu()?)?;
    // Pid 0: the calling thread.
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    Ok(())
}

/// Inserts `n` synthetic flows (never matching a test frame) into a per-CPU flow table.
fn prefill(map: &mut aya::maps::Map, n: u32, nr_cpus: usize) -> anyhow::Result<()> {
    let mut m: aya::maps::PerCpuHashMap<&mut MapData, FlowKey, FlowValue> =
        aya::maps::PerCpuHashMap::try_from(map)?;
    let v = FlowValue {
        packets: 1,
        bytes: 60,
        first_seen_ns: 1,
        last_seen_ns: 1,
        ..FlowValue::default()
    };
    for i in 0..n {
        let mut k = FlowKey {
            ifindex: 999,
            protocol: 6,
            ip_version: 4,
            ..FlowKey::default()
        };
        k.src_addr = sensor_common::v4_mapped([172, 16, (i >> 8) as u8, i as u8]);
        k.dst_addr = sensor_common::v4_mapped([172, 17, 0, (i >> 16) as u8]);
        k.src_port = 1024 + (i % 60000) as u16;
        k.dst_port = 443;
        m.insert(k, PerCpuValues::try_from(vec![v; nr_cpus])?, 0)?;
    }
    Ok(())
}

/// The peer program, loaded (not attached), with its table prefilled like the sensor's.
pub struct Peer {
    bpf: Ebpf,
}

impl Peer {
    pub fn load(flow_table_size: u32, fill: u32) -> anyhow::Result<Self> {
        let mut bpf = EbpfLoader::new()
            .map_max_entries("PEER_FLOWS", flow_table_size)
            .load(PEER_OBJECT)?;
        let p: &mut Xdp = bpf
            .program_mut("peer_flow_counter")
            .expect("peer program")
            .try_into()?;
        p.load()?;
        let mut config: Array<&mut MapData, SensorConfig> =
            Array::try_from(bpf.map_mut("PEER_CONFIG").expect("PEER_CONFIG"))?;
        config.set(
            0,
            SensorConfig {
                now_ns: 1_000_000_000,
                ..SensorConfig::default()
            },
            0,
        )?;
        let nr_cpus = aya::util::nr_cpus().map_err(|(p, e)| anyhow::anyhow!("{p}: {e}"))?;
        prefill(
            bpf.map_mut("PEER_FLOWS").expect("PEER_FLOWS"),
            fill,
            nr_cpus,
        )?;
        Ok(Peer { bpf })
    }

    pub fn xdp_fd(&self) -> anyhow::Result<std::os::fd::BorrowedFd<'_>> {
        let p: &Xdp = self
            .bpf
            .program("peer_flow_counter")
            .expect("peer program")
            .try_into()?;
        Ok(p.fd()?.as_fd())
    }
}
