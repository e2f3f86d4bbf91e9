//! Helpers for Picket's end-to-end tests: network namespaces and veths that each test creates and
//! always tears down, the real `picket-sensor` binary run inside them, threads that open sockets
//! inside a namespace, and an independent packet oracle (tcpdump's pcap files, parsed here).
//!
//! Traffic rules: packets go only to addresses that exist on veths inside namespaces the test made
//! (10.200-254.x.y, fd00:... ) and every generator is bounded in count.

use std::{
    collections::HashMap,
    ffi::OsStr,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::IpAddr,
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod cluster;
pub mod cluster_bench;
pub mod harness;
pub mod mmdb;
pub mod pcap;
pub mod receivers;
pub mod servers;
pub mod stores_bench;

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Panics with a clear message unless we run as root (namespaces, XDP and tc need it).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "this test needs root (network namespaces, XDP, tc): run `cargo xtask test` as root"
        );
    }
}

/// Runs a command to completion and panics with its output if it fails.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    if !out.status.success() {
        panic!(
            "`{cmd} {}` failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like [`sh`], inside a namespace.
pub fn sh_in(ns: &str, cmd: &str, args: &[&str]) -> String {
    let mut a = vec!["netns", "exec", ns, cmd];
    a.extend_from_slice(args);
    sh("ip", &a)
}

/// Two namespaces, `a` (10.N.0.1, fd00:N::1) and `b` (10.N.0.2, fd00:N::2), joined by a veth pair
/// `va` <-> `vb`. Removed on drop, also when the test panics.
pub struct Lab {
    pub a: String,
    pub b: String,
    pub va: String,
    pub vb: String,
    pub subnet: u32,
    pub ip_a: String,
    pub ip_b: String,
    pub ip6_a: String,
    pub ip6_b: String,
}

impl Lab {
    pub fn new() -> Lab {
        require_root();
        let n = NEXT_LAB.fetch_add(1, Ordering::SeqCst);
        let id = (std::process::id() % 1000) * 20 + n;
        let subnet = 200 + (std::process::id() + n) % 50;
        let lab = Lab {
            a: format!("pkt{id}a"),
            b: format!("pkt{id}b"),
            va: format!("pk{id}a"),
            vb: format!("pk{id}b"),
            subnet,
            ip_a: format!("10.{subnet}.{}.1", n % 250),
            ip_b: format!("10.{subnet}.{}.2", n % 250),
            ip6_a: format!("fd00:{subnet}:{n}::1"),
            ip6_b: format!("fd00:{subnet}:{n}::2"),
        };
        // Leftovers of a killed earlier run with the same names would make `add` fail.
        lab.teardown();
        sh("ip", &["netns", "add", &lab.a]);
        sh("ip", &["netns", "add", &lab.b]);
        sh(
            "ip",
            &[
                "link", "add", &lab.va, "netns", &lab.a, "type", "veth", "peer", "name", &lab.vb,
                "netns", &lab.b,
            ],
        );
        for (ns, dev, ip, ip6) in [
            (&lab.a, &lab.va, &lab.ip_a, &lab.ip6_a),
            (&lab.b, &lab.vb, &lab.ip_b, &lab.ip6_b),
        ] {
            sh_in(ns, "ip", &["link", "set", "lo", "up"]);
            sh_in(ns, "ip", &["addr", "add", &format!("{ip}/24"), "dev", dev]);
            sh_in(
                ns,
                "ip",
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{ip6}/64"),
                    "dev",
                    dev,
                    "nodad",
                ],
            );
            sh_in(ns, "ip", &["link", "set", dev, "up"]);
        }
        lab
    }

    /// Turns segmentation offloads off on both ends, so every packet crosses the veth as itself
    /// (what a physical wire would carry) and a capture on one side is an exact oracle.
    pub fn no_offloads(&self) {
        for (ns, dev) in [(&self.a, &self.va), (&self.b, &self.vb)] {
            sh_in(
                ns,
                "ethtool",
                &[
                    "-K", dev, "tso", "off", "gso", "off", "gro", "off", "tx", "off", "rx", "off",
                ],
            );
        }
    }

    fn teardown(&self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`: sockets it opens live there.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    thread::spawn(move || {
        let file = fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
}

/// Where the binaries under test are: `PICKET_BIN_DIR`, else this workspace's target/debug.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("PICKET_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug"));
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not found: build it first (`cargo xtask test` does)",
        p.display()
    );
    p
}

/// A `picket-sensor` running inside a namespace with `--stdout`.
pub struct Sensor {
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
    _dir: TempDir,
}

pub struct TempDir(pub PathBuf);
impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = NEXT_LAB.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("picket-test-{}-{tag}-{n}", std::process::id()));
        fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Parsed output of a sensor run.
pub struct SensorOutput {
    pub flows: Vec<Value>,
    pub scans: Vec<Value>,
    pub stats: Vec<Value>,
    /// Per-source sums of bare SYNs not recorded per flow.
    pub probes: Vec<Value>,
    /// Login events from --auth-log.
    pub auth: Vec<Value>,
    pub stderr: String,
}

impl SensorOutput {
    /// Flow records matching a predicate.
    pub fn flows_where(&self, f: impl Fn(&Value) -> bool) -> Vec<&Value> {
        self.flows.iter().filter(|v| f(v)).collect()
    }

    /// Sum of (packets, bytes, reverse_packets, reverse_bytes) over records between two endpoints
    /// (as initiator `src` -> `dst`) with the given protocol and ports (None = any).
    pub fn totals(
        &self,
        src: &str,
        dst: &str,
        proto: u64,
        sport: Option<u64>,
        dport: Option<u64>,
    ) -> (u64, u64, u64, u64) {
        let mut t = (0, 0, 0, 0);
        for f in &self.flows {
            if f["src_ip"] == src
                && f["dst_ip"] == dst
                && f["protocol"] == proto
                && sport.is_none_or(|p| f["src_port"] == p)
                && dport.is_none_or(|p| f["dst_port"] == p)
            {
                t.0 += f["packets"].as_u64().expect("packets");
                t.1 += f["bytes"].as_u64().expect("bytes");
                t.2 += f["reverse_packets"].as_u64().expect("reverse_packets");
                t.3 += f["reverse_bytes"].as_u64().expect("reverse_bytes");
            }
        }
        t
    }

    /// The last stats line's kernel counter.
    pub fn kernel(&self, name: &str) -> u64 {
        self.stats.last().expect("a stats line")["kernel"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("counter {name}"))
    }
}

impl Sensor {
    /// Starts the sensor in `ns` and waits until it has attached.
    pub fn start(ns: &str, args: &[&str]) -> Sensor {
        Self::start_env(ns, args, &[])
    }

    /// [`Sensor::start`] with extra environment variables for the sensor.
    pub fn start_env(ns: &str, args: &[&str], env: &[(&str, &str)]) -> Sensor {
        Self::spawn(ns, args, env, true)
    }

    /// [`Sensor::start`] as deployed: no `--stdout` (benchmarks measure the agent without it).
    pub fn start_exporting(ns: &str, args: &[&str]) -> Sensor {
        Self::spawn(ns, args, &[], false)
    }

    fn spawn(ns: &str, args: &[&str], env: &[(&str, &str)], stdout_json: bool) -> Sensor {
        let dir = TempDir::new("sensor");
        let stdout = dir.0.join("stdout.jsonl");
        let stderr = dir.0.join("stderr.log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(bin("picket-sensor"))
            .args(stdout_json.then_some("--stdout"))
            .args(args)
            .envs(env.iter().copied());
        cmd.stdout(fs::File::create(&stdout).expect("stdout file"));
        cmd.stderr(fs::File::create(&stderr).expect("stderr file"));
        cmd.stdin(Stdio::null());
        let child = cmd.spawn().expect("spawn picket-sensor");
        let mut s = Sensor {
            child: Some(child),
            stdout,
            stderr,
            _dir: dir,
        };
        // Under emulation (the kernel matrix) loading takes longer: PICKET_SENSOR_START_SECS.
        let secs = std::env::var("PICKET_SENSOR_START_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30);
        s.wait_for_log("sensor running", Duration::from_secs(secs));
        s
    }

    /// What the sensor has logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let t0 = Instant::now();
        loop {
            let log = fs::read_to_string(&self.stderr).unwrap_or_default();
            if log.contains(needle) {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .expect("running")
                .try_wait()
                .expect("try_wait")
            {
                panic!("picket-sensor exited ({status}) before `{needle}`:\n{log}");
            }
            if t0.elapsed() > timeout {
                panic!("picket-sensor did not log `{needle}` within {timeout:?}:\n{log}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGINT, waits for a clean exit and parses what it printed.
    pub fn stop(mut self) -> SensorOutput {
        self.signal_and_wait(nix::sys::signal::Signal::SIGINT)
    }

    pub fn signal_and_wait(&mut self, sig: nix::sys::signal::Signal) -> SensorOutput {
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig)
            .expect("signal sensor");
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                break s;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("picket-sensor did not exit within 30 s of {sig}");
            }
            thread::sleep(Duration::from_millis(20));
        };
        let stderr = fs::read_to_string(&self.stderr).unwrap_or_default();
        assert!(
            status.success(),
            "picket-sensor exited with {status}:\n{stderr}"
        );
        parse_output(&self.stdout, stderr)
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn parse_output(path: &Path, stderr: String) -> SensorOutput {
    let mut out = SensorOutput {
        flows: vec![],
        scans: vec![],
        stats: vec![],
        probes: vec![],
        auth: vec![],
        stderr,
    };
    let f = fs::File::open(path).expect("open sensor stdout");
    for line in BufReader::new(f).lines() {
        let line = line.expect("read line");
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}"));
        match v["kind"].as_str() {
            Some("flow") => out.flows.push(v),
            Some("scan") => out.scans.push(v),
            Some("stats") => out.stats.push(v),
            Some("probes") => out.probes.push(v),
            Some("auth") => out.auth.push(v),
            other => panic!("unexpected kind {other:?} in {line}"),
        }
    }
    out
}

/// A process started in a namespace (tcpdump, nmap, a server...), ended by pid on drop.
pub struct Bg {
    pub child: Child,
    pub stderr_path: Option<PathBuf>,
}

impl Bg {
    pub fn spawn_in(ns: &str, cmd: &str, args: &[&str], stderr_path: Option<&Path>) -> Bg {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, cmd])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        match stderr_path {
            Some(p) => c.stderr(fs::File::create(p).expect("stderr file")),
            None => c.stderr(Stdio::null()),
        };
        Bg {
            child: c.spawn().unwrap_or_else(|e| panic!("spawn {cmd}: {e}")),
            stderr_path: stderr_path.map(Path::to_path_buf),
        }
    }

    pub fn wait_stderr(&self, needle: &str, timeout: Duration) {
        let p = self.stderr_path.as_ref().expect("stderr captured");
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if fs::read_to_string(p).unwrap_or_default().contains(needle) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "`{needle}` not seen within {timeout:?}: {}",
            fs::read_to_string(p).unwrap_or_default()
        );
    }

    /// SIGINT, then wait (bounded).
    pub fn interrupt(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A packet capture with tcpdump on `dev` in `ns`, used as the independent count oracle.
pub struct Capture {
    bg: Bg,
    pub file: PathBuf,
    _dir: TempDir,
}

impl Capture {
    pub fn start(ns: &str, dev: &str) -> Capture {
        let dir = TempDir::new("pcap");
        let file = dir.0.join("cap.pcap");
        let err = dir.0.join("tcpdump.err");
        let bg = Bg::spawn_in(
            ns,
            "tcpdump",
            &[
                "-i",
                dev,
                "-U",
                "--immediate-mode",
                "-n",
                "-s",
                "256",
                "-w",
                file.to_str().expect("utf8"),
            ],
            Some(&err),
        );
        bg.wait_stderr("listening on", Duration::from_secs(10));
        Capture {
            bg,
            file,
            _dir: dir,
        }
    }

    /// Stops the capture and returns per-flow (src, dst, proto, sport, dport) -> (packets, IP bytes).
    pub fn stop(self) -> HashMap<pcap::FlowId, (u64, u64)> {
        // Let the last packets reach the capture buffer before stopping it.
        thread::sleep(Duration::from_millis(200));
        let file = self.file.clone();
        self.bg.interrupt();
        let mut data = Vec::new();
        fs::File::open(&file)
            .expect("open pcap")
            .read_to_end(&mut data)
            .expect("read pcap");
        pcap::flows(&data)
    }
}

/// A real nmap TCP SYN scan from namespace `ns` of `target` (one of the lab's own addresses),
/// bounded: one retry, aggressive timing, no DNS, no ping.
pub fn nmap_syn_scan(ns: &str, target: &str, ports: &[&str]) {
    let mut args = vec!["-sS", "-n", "-Pn", "-T4", "--max-retries", "1"];
    args.extend_from_slice(ports);
    args.push(target);
    sh_in(ns, "nmap", &args);
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip address")
}

/// Whether any XDP program is attached to an interface in `ns`.
pub fn attached_xdp(ns: &str) -> bool {
    let s = sh_in(ns, "ip", &["-d", "link", "show"]);
    s.contains("prog/xdp") || s.contains("xdpgeneric") || s.contains(" xdp ")
}

/// The clsact egress filters on `dev` (tc's own listing).
pub fn tc_filters(ns: &str, dev: &str) -> String {
    sh_in(ns, "tc", &["filter", "show", "dev", dev, "egress"])
}

/// Picket tc programs on `dev`'s egress: clsact filters (tc) plus TCX links (asked of the kernel
/// through aya: Debian's bpftool predates TCX). Kernels before 6.6 have no TCX to ask.
pub fn tc_programs(ns: &str, dev: &str) -> usize {
    let filters = tc_filters(ns, dev).matches("picket_tc_egress").count();
    let d = dev.to_string();
    let tcx = in_netns(ns, move || {
        let has_tcx = aya::util::KernelVersion::current()
            .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
        if !has_tcx {
            return 0;
        }
        let (_, progs) =
            aya::programs::SchedClassifier::query_tcx(&d, aya::programs::TcAttachType::Egress)
                .expect("query tcx");
        progs
            .iter()
            .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("picket_tc")))
            .count()
    })
    .join()
    .expect("query thread");
    filters + tcx
}

// Hand-made frames sent with trafgen (netsniff-ng).

/// Sends `count` copies of one hand-made frame out of `dev` in `ns`, through the qdisc path (so
/// tc egress sees them), with trafgen.
pub fn trafgen(ns: &str, dev: &str, dir: &TempDir, name: &str, frame: &str, count: u64) {
    trafgen_at(ns, dev, dir, name, frame, count, "400000pps");
}

/// [`trafgen`] at a given rate (`"5000pps"`: trafgen takes pps, not kpps).
pub fn trafgen_at(
    ns: &str,
    dev: &str,
    dir: &TempDir,
    name: &str,
    frame: &str,
    count: u64,
    rate: &str,
) {
    let path = dir.0.join(name);
    std::fs::write(&path, format!("{{\n{frame}\n}}\n")).expect("write trafgen conf");
    deep_fifo_for(ns, dev, count);
    let n = count.to_string();
    let conf = path.to_str().expect("utf8");
    let args = [
        "--dev",
        dev,
        "--conf",
        conf,
        "--num",
        &n,
        "--cpus",
        "1",
        "--qdisc-path",
        "--no-sock-mem",
        "--rate",
        rate,
    ];
    sh_in(ns, "trafgen", &args);
    // trafgen is done once every frame is queued: wait until the queue has gone out.
    wait_qdisc_empty(ns, dev, Duration::from_secs(120));
}

/// Waits until the qdiscs of `dev` in `ns` hold no more packets (trafgen returns once every frame
/// is queued, not delivered), at most `timeout`.
pub fn wait_qdisc_empty(ns: &str, dev: &str, timeout: Duration) {
    let t0 = Instant::now();
    loop {
        let j = sh_in(ns, "tc", &["-j", "-s", "qdisc", "show", "dev", dev]);
        let v: Value = serde_json::from_str(&j).expect("tc -j");
        let queued: u64 = v
            .as_array()
            .map(|a| a.iter().filter_map(|q| q["qlen"].as_u64()).sum())
            .unwrap_or(0);
        if queued == 0 {
            return;
        }
        assert!(
            t0.elapsed() < timeout,
            "{queued} packets still queued on {dev} after {timeout:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A veth stops its queue while its peer falls behind; without a qdisc (veth's default) the stack
/// then refuses frames, and trafgen gives up on the first refusal. A deep FIFO makes frames wait
/// instead (tc egress runs before the qdisc, so it still sees each frame once), which keeps the
/// counts exact even when the other tests load both cores.
pub fn deep_fifo(ns: &str, dev: &str) {
    deep_fifo_for(ns, dev, 190_000);
}

/// [`deep_fifo`] able to hold `count` frames: a slow receiver can then never make the queue
/// refuse one (which would end trafgen early), whatever the rate.
pub fn deep_fifo_for(ns: &str, dev: &str, count: u64) {
    let limit = (count + 10_000).to_string();
    sh_in(
        ns,
        "tc",
        &[
            "qdisc", "replace", "dev", dev, "root", "pfifo", "limit", &limit,
        ],
    );
}

pub fn hex_mac(m: &str) -> String {
    m.split(':')
        .map(|b| format!("0x{b}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn hex_ip(a: &str) -> String {
    a.split('.').collect::<Vec<_>>().join(", ")
}

/// Ethernet header bytes (without EtherType) from `src` to `dst`, then the given tags.
pub fn udp4_frame(
    dst_mac: &str,
    src_mac: &str,
    tags: &[(u16, u16)],
    (src, sport): (&str, u16),
    (dst, dport): (&str, u16),
    payload: u16,
) -> String {
    let mut f = format!("  {}, {},\n", hex_mac(dst_mac), hex_mac(src_mac));
    for (tpid, vid) in tags {
        f += &format!("  const16({tpid}), const16({vid}),\n");
    }
    let total = 20 + 8 + payload;
    f += &format!(
        "  0x08, 0x00,\n  0x45, 0x00, const16({total}), const16(1), 0x40, 0x00, 64, 17, csumip({l3}, {l3e}),\n  {},\n  {},\n  const16({sport}), const16({dport}), const16({ul}), const16(0),\n  fill(0x42, {payload})",
        hex_ip(src),
        hex_ip(dst),
        l3 = 14 + 4 * tags.len(),
        l3e = 14 + 4 * tags.len() + 19,
        ul = 8 + payload,
    );
    f
}

/// The MAC address of `dev` in `ns`.
pub fn mac(ns: &str, dev: &str) -> String {
    let j = sh_in(ns, "ip", &["-j", "link", "show", "dev", dev]);
    let v: serde_json::Value = serde_json::from_str(&j).expect("ip -j");
    v[0]["address"].as_str().expect("mac").to_string()
}

/// `picket-sensor` flags that watch `iface` and export every second to the control plane at
/// `url` with the key in `key_file`, spooling into `spool`.
pub fn export_flags(iface: &str, url: &str, key_file: &Path, spool: &Path) -> Vec<String> {
    [
        "--iface",
        iface,
        "--export-interval",
        "1",
        "--controlplane",
        url,
        "--sensor-key-file",
        key_file.to_str().expect("utf8"),
        "--spool-dir",
        spool.to_str().expect("utf8"),
    ]
    .map(String::from)
    .to_vec()
}

/// Borrowed views of owned flags (for `Sensor::start`).
pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A `picket-controlplane serve` running inside a namespace (its loopback is the namespace's own).
pub struct ControlPlane {
    child: Option<Child>,
    pub log: PathBuf,
    /// The namespace it runs in and its REST address there.
    pub ns: String,
    pub http: String,
    /// An admin API token made for the test before the start.
    pub token: String,
}

static NEXT_TOKEN: AtomicU32 = AtomicU32::new(0);

/// An HTTP response: status, headers (lower-case names), body.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {} {}", self.status, self.body))
    }
}

/// Sends one request from inside `ns`, with extra `headers` and a JSON body.
pub fn http_request(
    ns: &str,
    method: &str,
    url: String,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Reply {
    http_request_from(ns, None, method, url, headers, body)
}

/// [`http_request`] from the local address `from` (e.g. another loopback address).
pub fn http_request_from(
    ns: &str,
    from: Option<std::net::IpAddr>,
    method: &str,
    url: String,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Reply {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let body = body.map(|b| b.to_string());
    in_netns(ns, move || {
        let mut r = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .local_address(from)
            .build()
            .expect("HTTP client")
            .request(method, &url);
        for (k, v) in headers {
            r = r.header(k, v);
        }
        if let Some(b) = body {
            r = r.header("content-type", "application/json").body(b);
        }
        let r = r.send().unwrap_or_else(|e| panic!("{url}: {e}"));
        let headers = r
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    v.to_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        Reply {
            status: r.status().as_u16(),
            headers,
            body: r.text().expect("body"),
        }
    })
    .join()
    .expect("http thread")
}

impl ControlPlane {
    /// Creates sensor `name` in `data_dir` and returns its key.
    pub fn add_sensor(data_dir: &Path, name: &str) -> String {
        let o = Command::new(bin("picket-controlplane"))
            .args(["sensors", "--data-dir"])
            .arg(data_dir)
            .envs(crate::servers::store_env(data_dir))
            .args(["add", name])
            .output()
            .expect("run picket-controlplane sensors add");
        assert!(
            o.status.success(),
            "sensors add: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// Runs `picket-controlplane import ARGS... --data-dir DATA_DIR`, with `stdin` as its
    /// standard input when given, and returns what it did (successful or not) for the caller
    /// to check.
    pub fn import<S: AsRef<OsStr>>(
        data_dir: &Path,
        args: impl IntoIterator<Item = S>,
        stdin: Option<&[u8]>,
    ) -> Output {
        let mut child = Command::new(bin("picket-controlplane"))
            .arg("import")
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .envs(crate::servers::store_env(data_dir))
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run picket-controlplane import");
        if let Some(bytes) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(bytes)
                .expect("write the import's stdin");
        }
        child.wait_with_output().expect("import output")
    }

    /// Starts serving gRPC on `listen` inside `ns` and waits until it listens.
    pub fn start(ns: &str, data_dir: &Path, listen: &str, log: &Path) -> ControlPlane {
        Self::start_with(ns, data_dir, listen, log, &[])
    }

    /// Creates an API token of `role` in `data_dir` and returns it.
    pub fn add_token(data_dir: &Path, name: &str, role: &str) -> String {
        let o = Command::new(bin("picket-controlplane"))
            .args(["tokens", "--data-dir"])
            .arg(data_dir)
            .envs(crate::servers::store_env(data_dir))
            .args(["add", name, "--role", role])
            .output()
            .expect("run picket-controlplane tokens add");
        assert!(
            o.status.success(),
            "tokens add: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// [`ControlPlane::start`] with more `serve` arguments (TLS...).
    pub fn start_with(
        ns: &str,
        data_dir: &Path,
        listen: &str,
        log: &Path,
        extra: &[&str],
    ) -> ControlPlane {
        let token = Self::add_token(
            data_dir,
            &format!(
                "tests-{}-{}",
                std::process::id(),
                NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
            ),
            "admin",
        );
        let http = extra
            .windows(2)
            .find(|w| w[0] == "--http-listen")
            .map_or("127.0.0.1:8080".to_string(), |w| w[1].to_string());
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bin("picket-controlplane"))
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .envs(crate::servers::store_env_in(Some(ns), data_dir))
            .args(["--grpc-listen", listen])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).expect("log file"))
            .spawn()
            .expect("spawn picket-controlplane");
        let cp = ControlPlane {
            child: Some(child),
            log: log.to_path_buf(),
            ns: ns.to_string(),
            http,
            token,
        };
        let t0 = Instant::now();
        while !fs::read_to_string(log)
            .unwrap_or_default()
            .contains("control plane serving")
        {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "control plane did not start: {}",
                fs::read_to_string(log).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(50));
        }
        cp
    }

    /// A request to the REST API with the test's admin token.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let auth = format!("Bearer {}", self.token);
        http_request(
            &self.ns,
            method,
            format!("http://{}{path}", self.http),
            &[("authorization", &auth)],
            body,
        )
    }

    /// GET `path` with the test's admin token: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        let r = self.request("GET", path, None);
        (r.status, r.body)
    }

    /// The first start's `admin` password, from the log.
    pub fn admin_password(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .find_map(|l| l.split("`admin` with password ").nth(1))
            .unwrap_or_else(|| panic!("no admin password in the log:\n{log}"))
            .trim()
            .to_string()
    }

    /// Ends it abruptly (SIGKILL), as a crash or a lost machine would.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// CPU seconds (user + system) its thread named `name` has used so far, once that thread
    /// is idle: the figure stops moving for 300 ms (work queued for it is done).
    pub fn thread_cpu_secs(&self, name: &str) -> Option<f64> {
        let pid = self.child.as_ref()?.id();
        let tid = std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .filter_map(Result::ok)
            .find(|t| {
                // The kernel keeps 15 bytes of a thread's name.
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim_end() == &name[..name.len().min(15)])
            })?
            .file_name();
        let tid = tid.to_str()?;
        let ticks = || -> Option<u64> {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
            // Fields after the command's closing parenthesis: utime and stime are the 12th
            // and 13th.
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split(' ').collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        };
        let mut last = ticks()?;
        loop {
            thread::sleep(Duration::from_millis(300));
            let now = ticks()?;
            if now == last {
                break;
            }
            last = now;
        }
        // SAFETY: sysconf has no memory effects.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Some(last as f64 / hz)
    }

    /// Its resident memory now and at its peak, in KiB (VmRSS, VmHWM of /proc/PID/status).
    pub fn memory_kib(&self) -> (u64, u64) {
        let pid = self.child.as_ref().expect("running").id();
        let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Starts its peak memory (VmHWM) anew from what it holds now (`5` into
    /// /proc/PID/clear_refs): what a test then reads as the peak is what came after, not
    /// what the start took and gave back.
    pub fn reset_peak_memory(&self) {
        let pid = self.child.as_ref().expect("running").id();
        fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("clear_refs");
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) {
        let mut c = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("signal control plane");
        let t0 = Instant::now();
        loop {
            if let Some(s) = c.try_wait().expect("try_wait") {
                assert!(s.success(), "control plane exited with {s}");
                return;
            }
            if t0.elapsed() > Duration::from_secs(20) {
                let _ = c.kill();
                panic!("control plane did not stop within 20 s");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A throwaway PKI made with the openssl CLI in `dir`: `ca.pem`, `server.pem`/`server.key`
/// (for 127.0.0.1 and localhost), `client.pem`/`client.key`, all signed by `ca.key`.
pub fn make_pki(dir: &Path) {
    let run = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            o.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=picket-test-ca",
    ]);
    run(&a);
    for (name, ext) in [
        (
            "server",
            "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        ),
        (
            "client",
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\nsubjectAltName=DNS:sensor\n",
        ),
    ] {
        fs::write(dir.join(format!("{name}.ext")), ext).expect("ext file");
        let (key, csr, pem, extf, subj) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
            format!("/CN={name}"),
        );
        let mut a = vec!["req"];
        a.extend(ec);
        a.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        run(&a);
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &extf,
        ]);
    }
}

/// GET `url` from a client made in `ns`'s thread (so its sockets are the namespace's):
/// (status, content type, body).
fn get_in_netns(ns: &str, url: String) -> (u16, String, String) {
    in_netns(ns, move || {
        let r = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client")
            .get(&url)
            .send()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let ctype = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (r.status().as_u16(), ctype, r.text().expect("body"))
    })
    .join()
    .expect("http thread")
}

/// GET /metrics from inside `ns` (the sensor's default address is on the namespace's loopback):
/// (status, content type, body).
pub fn scrape(ns: &str, addr: &str) -> (u16, String, String) {
    get_in_netns(ns, format!("http://{addr}/metrics"))
}

/// GET `path` from `addr` inside `ns`: (status, body).
pub fn http_get(ns: &str, addr: &str, path: &str) -> (u16, String) {
    let (status, _, body) = get_in_netns(ns, format!("http://{addr}{path}"));
    (status, body)
}

pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
        .trim()
        .parse()
        .expect("a number")
}

/// gRPC ingest as `sensors` simulated sensors, each on its own connection, streaming `batches`
/// batches of `per` flow records at once to a control plane on `data` started in `lab.a`
/// (with the stores the harness gives `data`): the control plane, still running, and the
/// seconds until every batch was acknowledged (the batches are encoded before the clock starts).
pub fn grpc_ingest(
    lab: &Lab,
    data: &Path,
    sensors: usize,
    batches: u64,
    per: usize,
) -> (ControlPlane, f64) {
    use picket_proto::v1::{
        ExportBatch, FlowRecord, RegisterRequest, sensor_ingest_client::SensorIngestClient,
    };
    use tonic::metadata::MetadataValue;
    let keys: Vec<String> = (0..sensors)
        .map(|i| ControlPlane::add_sensor(data, &format!("sim-{i}")))
        .collect();
    let log = data.with_extension("log");
    let cp = ControlPlane::start(&lab.a, data, "127.0.0.1:7443", &log);
    let batch = move |sensor: usize, id: u64| ExportBatch {
        instance_id: format!("sim-{sensor}"),
        batch_id: id,
        created_unix_ns: 1_795_860_000_000_000_000,
        flows: (0..per)
            .map(|k| FlowRecord {
                iface: "eth0".into(),
                src_ip: vec![10, (sensor % 250) as u8, (k >> 8) as u8, k as u8],
                dst_ip: vec![172, 16, (id % 250) as u8, (k % 250) as u8],
                src_port: 40000 + (k as u32 % 20000),
                dst_port: [22, 80, 443, 5432][k % 4],
                protocol: 6,
                packets: 10,
                bytes: 1000,
                reverse_packets: 8,
                reverse_bytes: 4000,
                tcp_flags: 0x1b,
                reverse_tcp_flags: 0x1b,
                start_unix_ns: 1_795_860_000_000_000_000 + id * 1_000_000_000,
                end_unix_ns: 1_795_860_001_000_000_000 + id * 1_000_000_000,
                observed: "both".into(),
                initiator_by: "syn".into(),
                end_reason: "idle_timeout".into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let secs = in_netns(&lab.a, move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mut clients = Vec::new();
            for (i, k) in keys.iter().enumerate() {
                let ch = tonic::transport::Endpoint::from_static("http://127.0.0.1:7443")
                    .connect()
                    .await
                    .expect("connect");
                let bearer: MetadataValue<_> = format!("Bearer {k}").parse().expect("header");
                let mut c =
                    SensorIngestClient::with_interceptor(ch, move |mut req: tonic::Request<()>| {
                        req.metadata_mut().insert("authorization", bearer.clone());
                        Ok(req)
                    })
                    .max_encoding_message_size(32 << 20);
                c.register(RegisterRequest {
                    instance_id: format!("sim-{i}"),
                    version: "bench".into(),
                    ..Default::default()
                })
                .await
                .expect("register");
                clients.push(c);
            }
            // Every batch encoded before the clock starts: the control plane is measured.
            let all: Vec<Vec<ExportBatch>> = (0..sensors)
                .map(|i| (1..=batches).map(|b| batch(i, b)).collect())
                .collect();
            let t0 = Instant::now();
            let tasks: Vec<_> = clients
                .into_iter()
                .zip(all)
                .map(|(mut c, mine)| {
                    tokio::spawn(async move {
                        let (tx, rx) = tokio::sync::mpsc::channel(16);
                        let mut acks = c
                            .export(tokio_stream::wrappers::ReceiverStream::new(rx))
                            .await
                            .expect("export")
                            .into_inner();
                        tokio::spawn(async move {
                            for b in mine {
                                if tx.send(b).await.is_err() {
                                    break;
                                }
                            }
                        });
                        for _ in 0..batches {
                            let a = acks.message().await.expect("ack").expect("an ack");
                            assert!(!a.duplicate);
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("sensor task");
            }
            t0.elapsed().as_secs_f64()
        })
    })
    .join()
    .expect("ingest");
    (cp, secs)
}

/// Starts `frames` 60-byte UDP frames 4000 -> 5000 from a to b at `rate` (trafgen's `5000pps`)
/// out of a's veth, on a thread, with trafgen's files in `dir`/flood; join it to wait for the
/// end.
pub fn udp_flood_a_to_b(
    lab: &Lab,
    dir: &Path,
    frames: u64,
    rate: &'static str,
) -> thread::JoinHandle<()> {
    let frame = udp4_frame(
        &mac(&lab.b, &lab.vb),
        &mac(&lab.a, &lab.va),
        &[],
        (&lab.ip_a, 4000),
        (&lab.ip_b, 5000),
        18,
    );
    let (ns, dev, d) = (lab.a.clone(), lab.va.clone(), dir.to_path_buf());
    thread::spawn(move || {
        let dir = TempDir(d.join("flood"));
        fs::create_dir_all(&dir.0).expect("mkdir");
        trafgen_at(&ns, &dev, &dir, "udp.cfg", &frame, frames, rate);
        // The test's own folder removes it.
        std::mem::forget(dir);
    })
}
