//! Loading, configuring, attaching and detaching the eBPF programs, and draining their maps.

use std::{mem::size_of, os::fd::AsFd, time::Duration};

use aya::{
    Ebpf,
    maps::{Map, MapData, PerCpuArray, RingBuf},
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        tc::{self, TcAttachOptions},
        xdp::XdpLinkId,
    },
};
use sensor_common::{
    CLOCK_CONFIG, CLOCK_KERNEL, Counters, FIRST_EPOCH, FlowKey, ScanEvent, SensorConfig, counter,
    epoch_table, names, next_epoch,
};
use tracing::{info, warn};

use crate::{
    error::SensorError,
    programs::{ifindex, load_programs, take},
    records::{FlowTotals, ProbeTotals},
    scan::bits_threshold,
    sys::{GracePeriod, MappedConfig},
    tables,
};

/// How often the agent advances the programs' clock: the resolution of flow timestamps.
pub const CLOCK_TICK: Duration = Duration::from_millis(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeChoice {
    /// Native (driver) mode, falling back to generic if the driver refuses.
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TcModeChoice {
    /// TCX links on kernels that have them (6.6+), else a clsact qdisc filter over netlink.
    Auto,
    Tcx,
    Clsact,
}

#[derive(Clone, Debug)]
pub struct SensorOptions {
    pub ifaces: Vec<String>,
    pub xdp_mode: XdpModeChoice,
    pub tc_mode: TcModeChoice,
    pub flow_table_size: u32,
    pub scan_window: Duration,
    pub port_threshold: u32,
    pub host_threshold: u32,
    /// Read the kernel clock for every packet instead of the agent-maintained clock.
    pub precise_timestamps: bool,
}

/// How one interface ended up attached.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    pub xdp_mode: &'static str,
    pub tc_mode: &'static str,
}

pub struct Sensor {
    // Dropping `bpf` detaches every program (links are closed, netlink filters removed). The maps
    // taken out of it stay alive (we own their fds) so they can be drained after detaching.
    bpf: Option<Ebpf>,
    flows: [MapData; 2],
    flow_slots: [MapData; 2],
    probe_aggregates: [MapData; 2],
    flow_slot_count: u32,
    config: MappedConfig,
    counters: PerCpuArray<MapData, Counters>,
    grace: GracePeriod,
    cfg: SensorConfig,
    nr_cpus: usize,
    pub attachments: Vec<Attachment>,
    /// Flow entries drained so far per table (for eviction accounting).
    drained_entries: u64,
    pub batched_drain: bool,
}

/// One export interval's worth of flows.
pub struct DrainResult {
    /// Bare SYNs summed per source (their flow slots were taken).
    pub probes: Vec<ProbeTotals>,
    pub entries: usize,
}

impl Sensor {
    /// Loads the programs and maps, writes the configuration and attaches to every interface.
    /// On any error, everything attached so far is detached (by dropping) before returning.
    pub fn start(opts: &SensorOptions) -> Result<Self, SensorError> {
        for iface in &opts.ifaces {
            if ifindex(iface).is_none() {
                return Err(SensorError::UnknownInterface(iface.clone()));
            }
        }
        crate::preflight::check()?;

        let missing = crate::check::missing_features()?;
        if !missing.is_empty() {
            return Err(SensorError::UnsupportedKernel(format!(
                "this kernel lacks {} (see `picket-sensor check`)",
                missing.join(", ")
            )));
        }
        info!(
            tc_egress = crate::check::tc_path(),
            "kernel has every map and program type the sensor needs"
        );
        let flow_slot_count = sensor_common::DEFAULT_FLOW_SLOTS;
        let mut bpf = load_programs(opts.flow_table_size)?;

        let flows = [
            map_data(take(&mut bpf, names::FLOWS[0])?),
            map_data(take(&mut bpf, names::FLOWS[1])?),
        ];
        let flow_slots = [
            array_data(take(&mut bpf, names::FLOW_SLOTS[0])?),
            array_data(take(&mut bpf, names::FLOW_SLOTS[1])?),
        ];
        let probe_aggregates = [
            array_data(take(&mut bpf, names::PROBE_AGGREGATES[0])?),
            array_data(take(&mut bpf, names::PROBE_AGGREGATES[1])?),
        ];
        let counters: PerCpuArray<MapData, Counters> =
            PerCpuArray::try_from(take(&mut bpf, names::COUNTERS)?)
                .map_err(SensorError::map("COUNTERS"))?;
        let cfg = SensorConfig {
            window_ns: opts.scan_window.as_nanos() as u64,
            epoch: FIRST_EPOCH,
            port_bits_threshold: bits_threshold(opts.port_threshold),
            host_bits_threshold: bits_threshold(opts.host_threshold),
            clock: if opts.precise_timestamps {
                CLOCK_KERNEL
            } else {
                CLOCK_CONFIG
            },
            now_ns: crate::records::Clock::monotonic_ns(),
            slot_mask: flow_slot_count - 1,
            _pad: 0,
        };
        let Map::Array(config_map) = take(&mut bpf, names::CONFIG)? else {
            return Err(SensorError::Kernel("CONFIG is not an array map".into()));
        };
        let config = MappedConfig::new(config_map.fd().as_fd(), cfg)
            .map_err(|e| SensorError::Kernel(format!("mapping the CONFIG array: {e}")))?;
        let grace = GracePeriod::new()
            .map_err(|e| SensorError::Kernel(format!("creating the grace-period map: {e}")))?;
        let nr_cpus =
            aya::util::nr_cpus().map_err(|(p, e)| SensorError::Kernel(format!("{p}: {e}")))?;

        let mut sensor = Sensor {
            bpf: Some(bpf),
            flows,
            flow_slots,
            probe_aggregates,
            flow_slot_count,
            config,
            counters,
            grace,
            cfg,
            nr_cpus,
            attachments: Vec::new(),
            drained_entries: 0,
            batched_drain: true,
        };
        for iface in &opts.ifaces {
            let a = sensor.attach(iface, opts)?;
            info!(iface = %a.iface, ifindex = a.ifindex, xdp_mode = a.xdp_mode, tc_mode = a.tc_mode, "attached");
            sensor.attachments.push(a);
        }
        Ok(sensor)
    }

    fn attach(&mut self, iface: &str, opts: &SensorOptions) -> Result<Attachment, SensorError> {
        let idx = ifindex(iface).ok_or_else(|| SensorError::UnknownInterface(iface.into()))?;
        let xdp: &mut Xdp = self
            .bpf_mut()
            .program_mut(names::XDP_PROGRAM)
            .expect("loaded above")
            .try_into()
            .expect("XDP program");
        let attach = |xdp: &mut Xdp, mode| -> Result<XdpLinkId, aya::programs::ProgramError> {
            xdp.attach_to_if_index(idx, mode)
        };
        let xdp_mode = match opts.xdp_mode {
            XdpModeChoice::Native => {
                attach(xdp, XdpMode::Driver)
                    .map_err(|e| SensorError::attach(iface, "XDP (native)", e))?;
                "native"
            }
            XdpModeChoice::Generic => {
                attach(xdp, XdpMode::Skb)
                    .map_err(|e| SensorError::attach(iface, "XDP (generic)", e))?;
                "generic"
            }
            XdpModeChoice::Auto => match attach(xdp, XdpMode::Driver) {
                Ok(_) => "native",
                Err(e) => {
                    warn!(iface, error = %e, "native XDP refused by the driver; falling back to generic (skb) XDP, which is slower");
                    attach(xdp, XdpMode::Skb)
                        .map_err(|e| SensorError::attach(iface, "XDP (generic)", e))?;
                    "generic"
                }
            },
        };

        let tcp: &mut SchedClassifier = self
            .bpf_mut()
            .program_mut(names::TC_PROGRAM)
            .expect("loaded above")
            .try_into()
            .expect("tc program");
        let use_tcx = match opts.tc_mode {
            TcModeChoice::Tcx => true,
            TcModeChoice::Clsact => false,
            TcModeChoice::Auto => aya::util::KernelVersion::current()
                .map(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
                .unwrap_or(false),
        };
        let tc_mode = if use_tcx {
            match tcp.attach_with_options(
                iface,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(aya::programs::LinkOrder::default()),
            ) {
                Ok(_) => "tcx",
                Err(e) if opts.tc_mode == TcModeChoice::Auto => {
                    warn!(iface, error = %e, "TCX attach failed; falling back to a clsact qdisc filter");
                    attach_clsact(tcp, iface)?;
                    "clsact"
                }
                Err(e) => return Err(SensorError::attach(iface, "tc egress (TCX)", e)),
            }
        } else {
            attach_clsact(tcp, iface)?;
            "clsact"
        };
        Ok(Attachment {
            iface: iface.into(),
            ifindex: idx,
            xdp_mode,
            tc_mode,
        })
    }

    /// Switches the programs to the other flow table, waits until no program can still be
    /// writing the old one, drains it completely and hands its flows to `each` (a flow may come
    /// more than once, from the table and from a flow slot: the counts add up).
    pub fn drain(
        &mut self,
        mut each: impl FnMut(&FlowKey, &FlowTotals),
    ) -> Result<DrainResult, SensorError> {
        // The next epoch switches the table and is the new generation of its flow slots, so
        // those left from its last turn are free; one store, seen whole by every packet.
        let old_epoch = self.cfg.epoch;
        let old = epoch_table(old_epoch);
        self.cfg.epoch = next_epoch(old_epoch);
        self.config.store_epoch(self.cfg.epoch);
        self.grace
            .wait()
            .map_err(|e| SensorError::Kernel(format!("waiting for an RCU grace period: {e}")))?;

        let (entries, batched) =
            tables::drain_flow_table(self.flows[old].fd().as_fd(), self.nr_cpus, &mut each)
                .map_err(|e| SensorError::Kernel(format!("draining flow table {old}: {e}")))?;
        self.batched_drain = batched;
        let slots = tables::read_flow_slots(
            self.flow_slots[old].fd().as_fd(),
            self.flow_slot_count,
            self.nr_cpus,
            old_epoch,
            &mut each,
        )
        .map_err(|e| SensorError::Kernel(format!("reading flow slots {old}: {e}")))?;
        self.drained_entries += entries as u64;
        let probes = tables::read_probe_aggregates(
            self.probe_aggregates[old].fd().as_fd(),
            self.nr_cpus,
            old_epoch,
        )
        .map_err(|e| SensorError::Kernel(format!("reading probe aggregates {old}: {e}")))?;
        Ok(DrainResult {
            probes,
            entries: entries + slots,
        })
    }

    /// Advances the clock the programs read (with `CLOCK_CONFIG`): call it every `CLOCK_TICK`.
    pub fn tick_clock(&mut self) -> Result<(), SensorError> {
        if self.cfg.clock == CLOCK_CONFIG {
            self.cfg.now_ns = crate::records::Clock::monotonic_ns();
            self.config.store_now(self.cfg.now_ns);
        }
        Ok(())
    }

    /// Kernel counters summed over CPUs, by name, plus derived ones.
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>, SensorError> {
        let mut out = Vec::with_capacity(counter::COUNT as usize + 1);
        let per_cpu = self
            .counters
            .get(&0, 0)
            .map_err(SensorError::map("COUNTERS"))?;
        for (i, name) in counter::NAMES.iter().enumerate() {
            out.push((*name, per_cpu.iter().map(|c| c.v[i]).sum::<u64>()));
        }
        let inserts: u64 =
            out[counter::FLOW_INSERTS_0 as usize].1 + out[counter::FLOW_INSERTS_1 as usize].1;
        // Entries created but never drained were evicted by the LRU (or are still in the active
        // table; the final drain at exit makes this exact).
        out.push(("flow_entries_drained", self.drained_entries));
        out.push((
            "flow_entries_evicted_or_pending",
            inserts.saturating_sub(self.drained_entries),
        ));
        Ok(out)
    }

    fn bpf_mut(&mut self) -> &mut Ebpf {
        self.bpf
            .as_mut()
            .expect("programs are only detached at shutdown")
    }

    pub fn scan_events(&mut self) -> Result<RingBuf<MapData>, SensorError> {
        RingBuf::try_from(take(self.bpf_mut(), names::SCAN_EVENTS)?)
            .map_err(SensorError::map("SCAN_EVENTS"))
    }

    /// Detaches every program from every interface (also done on drop); the maps stay readable.
    /// Waits until no program can still be running, so a drain afterwards sees everything.
    pub fn detach_programs(&mut self) {
        if self.bpf.take().is_some() {
            if let Err(e) = self.grace.wait() {
                warn!(error = %e, "waiting for running programs to finish failed");
            }
            info!(interfaces = self.attachments.len(), "detached");
        }
    }
}

pub fn parse_scan_event(bytes: &[u8]) -> Option<ScanEvent> {
    if bytes.len() < size_of::<ScanEvent>() {
        return None;
    }
    // SAFETY: ScanEvent is Pod and the buffer is long enough.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

fn array_data(m: Map) -> MapData {
    match m {
        Map::PerCpuArray(d) => d,
        other => panic!("flow slots have an unexpected map type: {other:?}"),
    }
}

fn map_data(m: Map) -> MapData {
    match m {
        Map::PerCpuLruHashMap(d) | Map::PerCpuHashMap(d) | Map::LruHashMap(d) | Map::HashMap(d) => {
            d
        }
        other => panic!("flow table has an unexpected map type: {other:?}"),
    }
}

fn attach_clsact(tcp: &mut SchedClassifier, iface: &str) -> Result<(), SensorError> {
    // EEXIST just means the qdisc is already there (ours from before, or someone else's).
    if let Err(e) = tc::qdisc_add_clsact(iface) {
        let exists =
            matches!(&e, tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST));
        if !exists {
            return Err(SensorError::attach(iface, "clsact qdisc", e));
        }
    }
    // A filter of ours left by a killed sensor would double-count egress: remove it first.
    if tc::qdisc_detach_program(iface, TcAttachType::Egress, names::TC_PROGRAM).is_ok() {
        warn!(
            iface,
            "removed a stale picket tc filter left by an earlier run"
        );
    }
    tcp.attach_with_options(
        iface,
        TcAttachType::Egress,
        TcAttachOptions::Netlink(Default::default()),
    )
    .map_err(|e| SensorError::attach(iface, "tc egress (clsact)", e))?;
    Ok(())
}
