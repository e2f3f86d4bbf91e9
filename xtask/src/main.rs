//! Picket's developer commands. Deliberately light (std, clap, anyhow): `cargo xtask setup` must
//! build and run on a fresh machine before the eBPF toolchain that the other crates need exists.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod kernel_matrix;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Picket developer commands")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the toolchain and tools (Debian rustc-web + bpf core, bpf-linker, test tools).
    Setup,
    /// Build the eBPF object alone (sensor-user's build.rs also builds and embeds it).
    BuildEbpf,
    /// The whole suite: setup, fmt check, clippy -D warnings, unit tests, kernel/namespace tests,
    /// then the kernel matrix on Debian's 6.1 and 6.12 kernels.
    Test {
        /// Skip fmt and clippy (quicker local loop).
        #[arg(long)]
        no_lint: bool,
        /// Skip the kernel matrix (Debian 6.1 and 6.12 under qemu, about 3 minutes).
        #[arg(long)]
        no_kernel_matrix: bool,
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build, make a lab of namespaces, run the sensor and the control plane, send benign
    /// traffic and an nmap scan, show the flows, the scan event, the alert (also at a local
    /// webhook) and the dashboard's address and credentials, tear down.
    Demo {
        /// Keep the lab up until Enter, with the dashboard forwarded to 127.0.0.1:8080 here.
        #[arg(long)]
        keep: bool,
    },
    /// Cluster mode on this machine: private NATS, ClickHouse and PostgreSQL, three
    /// control-plane replicas, two real sensors in the lab's namespaces, a real nmap scan seen
    /// as one alert by every replica's API; then a replica killed under a flood, the sensor
    /// moving and nothing lost (about 2 minutes). Tears everything down.
    ClusterDemo,
    /// Detection against real scanners in the namespace lab (nmap SYN/FIN/NULL/Xmas/ACK/UDP,
    /// hping3, masscan, sweeps, benign controls), then the same traffic as AWS and GCP flow
    /// logs: the matrix of case x detected x latency beside Zeek and Snort, in
    /// target/eval/report.md. Fails if a case fails.
    Eval,
    /// Boot Debian's kernels under qemu and check the real sensor in each: load (verifier), attach
    /// XDP and tc egress to a veth, exact counts, a scan event, the BPF_PROG_TEST_RUN corpus,
    /// clean detach. One PASS/FAIL line per kernel; fails if any kernel fails.
    KernelMatrix {
        /// Kernels: Debian series (newest image of the series, found with apt-cache), a full
        /// package name (linux-image-...), or `host` (this machine's kernel, no qemu).
        #[arg(long, value_delimiter = ',', default_value = "6.1,6.12,host")]
        kernels: Vec<String>,
        /// Seconds a guest may take before it is killed and counted as failed.
        #[arg(long, default_value_t = 400)]
        timeout: u64,
    },
    /// Debian packages (picket-sensor, picket-controlplane) from release binaries, in target/dist.
    Dist,
    /// Fuzz the cloud flow log parsers with libFuzzer (fuzz/), each target for a bounded time.
    /// Corpora live in target/fuzz/corpus (seeded from fuzz/seeds/TARGET, else deploy/samples), crashes in
    /// target/fuzz/artifacts.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Targets (default: all of aws, gcp, azure, import, ingest, rest).
        targets: Vec<String>,
    },
    /// Benchmarks: per-packet cost (BPF_PROG_TEST_RUN) and veth packet rate with/without sensor.
    Bench {
        /// Fewer repetitions (for CI smoke runs).
        #[arg(long)]
        quick: bool,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: $ {}", show(cmd));
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot run {}", show(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(cmd));
    }
    Ok(())
}

fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program().to_string_lossy().into_owned())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn setup() -> anyhow::Result<()> {
    run(Command::new("bash").arg(root().join("scripts/setup.sh")))
}

fn require_root(what: &str) -> anyhow::Result<()> {
    let uid = Command::new("id").arg("-u").output().context("id -u")?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        bail!("{what} needs root (network namespaces, XDP, tc); run it as root");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::BuildEbpf => {
            setup()?;
            // The rustup proxy (not $CARGO, which is the stable toolchain's own cargo) understands +debian.
            run(Command::new("cargo")
                .args([
                    "+debian",
                    "build",
                    "--package",
                    "sensor-ebpf",
                    "--release",
                    "--target",
                    "bpfel-unknown-none",
                ])
                .env("RUSTC_BOOTSTRAP", "aya_ebpf,picket_ebpf")
                .env_remove("RUSTC")
                .env_remove("RUSTUP_TOOLCHAIN"))?;
            eprintln!("xtask: eBPF object at target/bpfel-unknown-none/release/picket-ebpf");
            Ok(())
        }
        Cmd::Test {
            no_lint,
            no_kernel_matrix,
            args,
        } => {
            setup()?;
            if !no_lint {
                run(cargo().args(["fmt", "--all", "--", "--check"]))?;
                run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
                // The fuzz targets are their own workspace, built only by `cargo xtask fuzz`:
                // checked here so that they follow the code they fuzz.
                run(cargo().args([
                    "clippy",
                    "--manifest-path",
                    "fuzz/Cargo.toml",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ]))?;
            }
            require_root("the test suite")?;
            run(cargo().args(["build", "--bins"]))?;
            let mut c = cargo();
            c.args(["test", "--no-fail-fast", "--"]).args(&args);
            run(&mut c)?;
            if !args.is_empty() {
                return Ok(());
            }
            // The end-to-end tests once more with the flows on a private ClickHouse and the
            // control state on a private PostgreSQL (`with-servers` starts them; the harness
            // gives each data directory a database of each).
            let mut c = Command::new(root().join("target/debug/with-servers"));
            c.arg("--")
                .arg(cargo().get_program())
                .args(["test", "--no-fail-fast", "-p", "tests"]);
            for t in [
                "api_e2e",
                "export_e2e",
                "detect_e2e",
                "notify_e2e",
                "correlation_e2e",
                "hardening_e2e",
                "dashboard_e2e",
                "cloud_import",
                "cloud_detect",
            ] {
                c.args(["--test", t]);
            }
            run(&mut c)?;
            // Detection against real scanners, and the same traffic as cloud flow logs (about 60 s).
            run(&mut Command::new(root().join("target/debug/picket-eval")))?;
            if no_kernel_matrix {
                return Ok(());
            }
            // The reduced matrix: Debian's kernels; the host kernel ran the whole suite above.
            kernel_matrix::kernel_matrix(&kernel_matrix::Options {
                kernels: vec!["6.1".into(), "6.12".into()],
                timeout: std::time::Duration::from_secs(400),
            })
        }
        Cmd::Eval => {
            setup()?;
            require_root("the evaluation")?;
            run(cargo().args(["build", "--release", "--bins"]))?;
            run(Command::new(root().join("target/release/picket-eval"))
                .env("PICKET_BIN_DIR", root().join("target/release")))
        }
        Cmd::Demo { keep } => {
            setup()?;
            require_root("the demo")?;
            run(cargo().args(["build", "--release", "--bins"]))?;
            run(Command::new(root().join("target/release/picket-demo"))
                .args(keep.then_some("--keep"))
                .env("PICKET_BIN_DIR", root().join("target/release")))
        }
        Cmd::ClusterDemo => {
            setup()?;
            require_root("the cluster demo")?;
            run(cargo().args(["build", "--release", "--bins"]))?;
            run(
                Command::new(root().join("target/release/picket-cluster-demo"))
                    .env("PICKET_BIN_DIR", root().join("target/release")),
            )
        }
        Cmd::KernelMatrix { kernels, timeout } => {
            setup()?;
            require_root("the kernel matrix")?;
            kernel_matrix::kernel_matrix(&kernel_matrix::Options {
                kernels,
                timeout: std::time::Duration::from_secs(timeout),
            })
        }
        Cmd::Dist => {
            setup()?;
            run(cargo().args([
                "build",
                "--release",
                "--bin",
                "picket-sensor",
                "--bin",
                "picket-controlplane",
            ]))?;
            run(Command::new("bash")
                .arg(root().join("deploy/debian/build-deb.sh"))
                .arg(root().join("target/release"))
                .arg(root().join("target/dist"))
                .arg(env!("CARGO_PKG_VERSION")))
        }
        Cmd::Fuzz { seconds, targets } => fuzz(seconds, targets),
        Cmd::Bench { quick } => {
            setup()?;
            require_root("the benchmarks")?;
            run(cargo().args(["build", "--release", "--bins"]))?;
            // The peer parser (Vector's VRL) is its own workspace: a large build only this needs.
            let vrl_target = root().join("target/bench-vrl");
            run(cargo()
                .args(["build", "--release", "--manifest-path"])
                .arg(root().join("bench-vrl/Cargo.toml"))
                .arg("--target-dir")
                .arg(&vrl_target))?;
            let mut c = Command::new(root().join("target/release/picket-bench"));
            c.env("PICKET_BIN_DIR", root().join("target/release"));
            c.env(
                "PICKET_BENCH_VRL",
                vrl_target.join("release/picket-bench-vrl"),
            );
            if quick {
                c.arg("--quick");
            }
            run(&mut c)
        }
    }
}

/// Builds fuzz/ with libFuzzer's coverage instrumentation (stable rustc flags, as cargo-fuzz
/// passes them, without a sanitizer) and runs each target for `seconds`.
fn fuzz(seconds: u64, targets: Vec<String>) -> anyhow::Result<()> {
    const ALL: [&str; 6] = ["aws", "gcp", "azure", "import", "ingest", "rest"];
    let targets: Vec<String> = if targets.is_empty() {
        ALL.iter().map(|t| t.to_string()).collect()
    } else {
        targets
    };
    if let Some(t) = targets.iter().find(|t| !ALL.contains(&t.as_str())) {
        bail!("no fuzz target `{t}` (targets: {})", ALL.join(", "));
    }
    setup()?;
    let host = String::from_utf8(Command::new("rustc").arg("-vV").output()?.stdout)?
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .context("rustc -vV names no host")?;
    let dir = root().join("target/fuzz");
    // With --target, the flags reach only the fuzzed code, not build scripts or proc macros.
    run(cargo()
        .args([
            "build",
            "--release",
            "--manifest-path",
            "fuzz/Cargo.toml",
            "--target",
            &host,
        ])
        .arg("--target-dir")
        .arg(&dir)
        .env(
            "RUSTFLAGS",
            "-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
             -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
             -Cllvm-args=-sanitizer-coverage-pc-table \
             -Cllvm-args=-sanitizer-coverage-trace-compares \
             --cfg fuzzing -Cdebug-assertions -Coverflow-checks",
        ))?;
    let samples = root().join("deploy/samples");
    let mut failed = Vec::new();
    for t in &targets {
        let corpus = dir.join("corpus").join(t);
        let artifacts = dir.join("artifacts").join(t);
        std::fs::create_dir_all(&corpus)?;
        std::fs::create_dir_all(&artifacts)?;
        if std::fs::read_dir(&corpus)?.next().is_none() {
            let own = root().join("fuzz/seeds").join(t);
            let seeds = if own.is_dir() { own } else { samples.clone() };
            for e in std::fs::read_dir(&seeds)? {
                let p = e?.path();
                std::fs::copy(&p, corpus.join(p.file_name().context("name")?))?;
            }
        }
        let status = Command::new(dir.join(&host).join("release").join(t))
            .arg(&corpus)
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-print_final_stats=1")
            .current_dir(root())
            .status()
            .with_context(|| format!("running fuzz target {t}"))?;
        if status.success() {
            eprintln!("xtask: fuzz {t}: no crash in {seconds} s");
        } else {
            eprintln!(
                "xtask: fuzz {t}: FAILED ({status}); the input is in {}",
                artifacts.display()
            );
            failed.push(t.clone());
        }
    }
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}
