//! `cargo xtask kernel-matrix`: the real sensor on other kernels than the build machine's.
//!
//! For each kernel in the list, Debian's own image (looked up with apt-cache, downloaded once into
//! the cache) boots under qemu (software emulation: this machine's /dev/kvm cannot run stock
//! kernels) with an initramfs built here: busybox, iproute2, the kernel's veth / sch_ingress /
//! cls_bpf modules, and the real binaries of this build: `picket-sensor` with its embedded eBPF
//! object, `picket-kcheck` (load, attach XDP + tc egress to a veth in a namespace, exact counts,
//! one scan event, clean detach) and the BPF_PROG_TEST_RUN corpus (tests/tests/ebpf_programs.rs).
//! `host` runs the same two checks on this machine's kernel. A guest that does not finish within
//! the timeout is killed and fails. Logs (with any verifier output in full) go to
//! target/kernel-matrix/.

use std::{
    fmt::Write as _,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{cargo, root, run};

/// The kernel modules the check needs that Debian builds as modules (BPF, JIT, BTF and clsact
/// are built in), in load order.
const MODULES: [&str; 3] = [
    "kernel/drivers/net/veth.ko",
    "kernel/net/sched/sch_ingress.ko",
    "kernel/net/sched/cls_bpf.ko",
];

/// Busybox applets the guest's /init uses (everything else is called by full path).
const APPLETS: [&str; 10] = [
    "sh", "mount", "mkdir", "ln", "insmod", "poweroff", "cat", "uname", "sleep", "dmesg",
];

pub struct Options {
    pub kernels: Vec<String>,
    pub timeout: Duration,
}

/// Where downloads are kept between runs (kernels, the private qemu of scripts/setup.sh).
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PICKET_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache")
        });
    base.join("picket")
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let o = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !o.status.success() {
        bail!("{cmd:?} failed ({})", o.status);
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn sh(script: &str) -> anyhow::Result<String> {
    output(Command::new("bash").args(["-euo", "pipefail", "-c", script]))
}

/// The newest Debian kernel image package of a series ("6.1", "6.12"), or the name itself.
fn package_for(series: &str) -> anyhow::Result<String> {
    if series.starts_with("linux-image-") {
        return Ok(series.to_string());
    }
    let s = series.replace('.', "\\.");
    // 6.1 images are named 6.1.0-NN-amd64, later ones 6.12.NN+deb12-amd64.
    let pattern = format!("^linux-image-({s}\\.0-[0-9]+|{s}\\.[0-9]+\\+deb[0-9]+)-amd64$");
    let list = output(Command::new("apt-cache").args(["search", "--names-only", &pattern]))?;
    let mut names: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        bail!(
            "no Debian kernel image for series {series} (apt-cache search '{pattern}'); run `apt-get update`?"
        );
    }
    names.sort_by_key(|n| version_key(n));
    Ok(names.pop().expect("not empty"))
}

/// Numeric parts of a package name, for "newest" ordering (6.1.0-56 > 6.1.0-9).
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A kernel ready to boot: its image and its modules, uncompressed.
struct Kernel {
    label: String,
    release: String,
    vmlinuz: PathBuf,
    modules: Vec<PathBuf>,
}

fn fetch_kernel(package: &str) -> anyhow::Result<Kernel> {
    let dir = cache_dir().join("kernels").join(package);
    let done = dir.join(".complete");
    if !done.exists() {
        eprintln!("xtask: downloading {package}");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        // apt's sandbox user must be able to write the download directory.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))?;
        output(
            Command::new("apt-get")
                .args(["download", "-q", "-o", "APT::Sandbox::User=root", package])
                .current_dir(&dir),
        )
        .with_context(|| format!("downloading {package} (is the Debian archive reachable?)"))?;
        let mut wild = vec!["./boot/vmlinuz-*".to_string()];
        wild.extend(MODULES.iter().map(|m| format!("./lib/modules/*/{m}*")));
        sh(&format!(
            "cd '{}' && dpkg-deb --fsys-tarfile {package}_*.deb | tar -x --wildcards {} && rm -f {package}_*.deb \
             && find lib -name '*.ko.xz' -exec xz -d {{}} +",
            dir.display(),
            wild.iter()
                .map(|w| format!("'{w}'"))
                .collect::<Vec<_>>()
                .join(" ")
        ))
        .with_context(|| format!("extracting {package}"))?;
        fs::write(&done, "")?;
    }
    let vmlinuz = fs::read_dir(dir.join("boot"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz in {package}"))?;
    let release = vmlinuz
        .file_name()
        .expect("file name")
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    let modules = MODULES
        .iter()
        .map(|m| dir.join("lib/modules").join(&release).join(m))
        .collect::<Vec<_>>();
    for m in &modules {
        if !m.exists() {
            bail!("{package} has no {}", m.display());
        }
    }
    Ok(Kernel {
        label: package.trim_start_matches("linux-image-").to_string(),
        release,
        vmlinuz,
        modules,
    })
}

/// The binaries under test, built by cargo for this run.
struct Binaries {
    sensor: PathBuf,
    kcheck: PathBuf,
    corpus: PathBuf,
}

fn build() -> anyhow::Result<Binaries> {
    run(cargo().args([
        "build",
        "-p",
        "sensor-user",
        "-p",
        "tests",
        "--bin",
        "picket-sensor",
        "--bin",
        "picket-kcheck",
    ]))?;
    // The BPF_PROG_TEST_RUN corpus is a test binary: ask cargo where it put it.
    let json = output(cargo().current_dir(root()).args([
        "test",
        "-p",
        "tests",
        "--test",
        "ebpf_programs",
        "--no-run",
        "--message-format=json",
    ]))?;
    let corpus = json
        .lines()
        .filter(|l| l.contains("\"name\":\"ebpf_programs\""))
        .find_map(|l| {
            let (_, rest) = l.split_once("\"executable\":\"")?;
            Some(PathBuf::from(rest.split('"').next()?))
        })
        .context("cargo did not report the ebpf_programs test binary")?;
    let dir = root().join("target/debug");
    Ok(Binaries {
        sensor: dir.join("picket-sensor"),
        kcheck: dir.join("picket-kcheck"),
        corpus,
    })
}

fn which(name: &str) -> anyhow::Result<PathBuf> {
    let p = output(Command::new("bash").args(["-c", &format!("command -v {name}")]))
        .with_context(|| format!("{name} not found: run scripts/setup.sh"))?;
    Ok(fs::canonicalize(p.trim())?)
}

/// Copies `src` to `dst` (inside the staging root) with its shared libraries.
fn install(stage: &Path, src: &Path, dst: &str) -> anyhow::Result<()> {
    let to = stage.join(dst.trim_start_matches('/'));
    fs::create_dir_all(to.parent().expect("parent"))?;
    fs::copy(src, &to).with_context(|| format!("copy {}", src.display()))?;
    // Debug builds carry hundreds of MB of debug info: without it the initramfs unpacks in
    // the guest's 1 GiB (with it, the kernel reported "Initramfs unpacking failed: write
    // error" once the test binaries passed 200 MB).
    if src.extension().is_none() && dst.starts_with("/bin/") {
        let o = Command::new("strip")
            .arg("--strip-debug")
            .arg(&to)
            .output()
            .context("strip (binutils; scripts/setup.sh installs it)")?;
        anyhow::ensure!(
            o.status.success(),
            "strip --strip-debug {}: {}",
            to.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let ldd = Command::new("ldd").arg(src).output()?;
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, r)) => r.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            let lib_to = stage.join(p.trim_start_matches('/'));
            if !lib_to.exists() {
                fs::create_dir_all(lib_to.parent().expect("parent"))?;
                fs::copy(p, &lib_to).with_context(|| format!("copy {p}"))?;
            }
        }
    }
    Ok(())
}

const INIT: &str = r#"#!/bin/sh
mkdir -p /proc /sys /dev /run /tmp /var
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t bpf bpf /sys/fs/bpf
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
ln -s /run /var/run
for m in /modules/*.ko; do insmod "$m" || echo "PICKET-MATRIX insmod $m failed"; done
echo "PICKET-MATRIX-BEGIN $(uname -r)"
PATH=/sbin:/bin PICKET_BIN_DIR=/bin PICKET_SENSOR_START_SECS=240 RUST_BACKTRACE=0 /bin/picket-kcheck
k=$?
PATH=/sbin:/bin RUST_BACKTRACE=0 /bin/ebpf-programs --test-threads=1
t=$?
echo "PICKET-MATRIX-RESULT kcheck=$k corpus=$t"
poweroff -f
"#;

fn initramfs(kernel: &Kernel, bins: &Binaries, out: &Path) -> anyhow::Result<PathBuf> {
    let stage = out.join(format!("initramfs-{}", kernel.label));
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(stage.join("bin"))?;
    fs::create_dir_all(stage.join("modules"))?;
    let busybox = which("busybox")?;
    fs::copy(&busybox, stage.join("bin/busybox"))?;
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", stage.join("bin").join(a))?;
    }
    // iproute2's own ip and tc (busybox's applets lack netns and clsact).
    install(&stage, &which("ip")?, "/sbin/ip")?;
    install(&stage, &which("tc")?, "/sbin/tc")?;
    install(&stage, &bins.sensor, "/bin/picket-sensor")?;
    install(&stage, &bins.kcheck, "/bin/picket-kcheck")?;
    install(&stage, &bins.corpus, "/bin/ebpf-programs")?;
    for (i, m) in kernel.modules.iter().enumerate() {
        let name = m.file_name().expect("name").to_string_lossy().into_owned();
        fs::copy(m, stage.join("modules").join(format!("{i}-{name}")))?;
    }
    fs::write(stage.join("init"), INIT)?;
    fs::set_permissions(stage.join("init"), fs::Permissions::from_mode(0o755))?;
    let image = out.join(format!("initramfs-{}.cpio.gz", kernel.label));
    sh(&format!(
        "cd '{}' && find . | '{}' cpio -o -H newc 2>/dev/null | gzip -1 > '{}'",
        stage.display(),
        busybox.display(),
        image.display()
    ))?;
    fs::remove_dir_all(&stage)?;
    Ok(image)
}

/// qemu: the system's if installed, else the private copy scripts/setup.sh fetched.
fn qemu() -> anyhow::Result<Command> {
    if let Ok(p) = which("qemu-system-x86_64") {
        return Ok(Command::new(p));
    }
    let r = cache_dir().join("qemu/root");
    let bin = r.join("usr/bin/qemu-system-x86_64");
    if !bin.exists() {
        bail!(
            "qemu-system-x86_64 not found (neither installed nor in {}): run scripts/setup.sh",
            r.display()
        );
    }
    let mut c = Command::new(bin);
    c.env(
        "LD_LIBRARY_PATH",
        format!(
            "{}:{}",
            r.join("usr/lib/x86_64-linux-gnu").display(),
            r.join("lib/x86_64-linux-gnu").display()
        ),
    )
    .arg("-L")
    .arg(r.join("usr/share/seabios"))
    .arg("-L")
    .arg(r.join("usr/share/qemu"));
    Ok(c)
}

struct Outcome {
    pass: bool,
    detail: String,
    log: PathBuf,
}

/// Sums up a finished guest's (or host run's) console log.
fn judge(log_text: &str) -> (bool, String) {
    // `iface=.. ifindex=.. xdp_mode="native" tc_mode="clsact"` -> `XDP native, tc clsact`.
    let field = |line: &str, name: &str| -> String {
        line.split_once(&format!("{name}=\""))
            .and_then(|(_, r)| r.split('"').next())
            .unwrap_or("?")
            .to_string()
    };
    let attach = log_text
        .lines()
        .find_map(|l| l.split_once("kcheck: ok loaded and attached: "))
        .map(|(_, r)| format!("XDP {}, tc {}", field(r, "xdp_mode"), field(r, "tc_mode")));
    // `test result: ok. 10 passed; 0 failed; ...` -> `ok, 10 passed, 0 failed`.
    let corpus = log_text
        .lines()
        .filter_map(|l| l.strip_prefix("test result: "))
        .next_back()
        .map(|r| {
            let parts: Vec<&str> = r.split(['.', ';']).map(str::trim).collect();
            format!(
                "{}, {}, {}",
                parts[0],
                parts.get(1).unwrap_or(&""),
                parts.get(2).unwrap_or(&"")
            )
        });
    let result = log_text
        .lines()
        .find_map(|l| l.split_once("PICKET-MATRIX-RESULT "))
        .map(|(_, r)| r.trim().to_string());
    let kcheck_ok = log_text.contains("kcheck: PASS");
    let corpus_ok = corpus.as_deref().is_some_and(|c| c.starts_with("ok,"));
    let mut d = String::new();
    match &attach {
        Some(a) => write!(d, "loaded, attached {a}").ok(),
        None => write!(d, "sensor did not load/attach").ok(),
    };
    if kcheck_ok {
        d.push_str("; exact counts, one scan event, clean detach");
    } else if attach.is_some() {
        d.push_str("; sensor check FAILED");
    }
    write!(
        d,
        "; test-run corpus: {}",
        corpus.as_deref().unwrap_or("did not run")
    )
    .ok();
    if let Some(r) = result.filter(|r| r != "kcheck=0 corpus=0") {
        write!(d, " ({r})").ok();
    }
    (kcheck_ok && corpus_ok, d)
}

/// Saves the verifier's output (which the sensor prints in full on a rejection) on its own.
fn keep_verifier_log(log: &Path, text: &str) -> Option<PathBuf> {
    let start = text.find("verifier rejected")?;
    let path = log.with_extension("verifier.log");
    fs::write(&path, &text[start..]).ok()?;
    Some(path)
}

fn boot(
    kernel: &Kernel,
    bins: &Binaries,
    out: &Path,
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    let image = initramfs(kernel, bins, out)?;
    let log = out.join(format!("{}.log", kernel.label));
    let _ = fs::remove_file(&log);
    let mut cmd = qemu()?;
    cmd.args([
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-smp",
        "2",
        "-m",
        "1G",
        "-nic",
        "none",
        "-no-reboot",
        "-display",
        "none",
        "-monitor",
        "none",
    ])
    .arg("-serial")
    .arg(format!("file:{}", log.display()))
    .arg("-kernel")
    .arg(&kernel.vmlinuz)
    .arg("-initrd")
    .arg(&image)
    .args(["-append", "console=ttyS0 panic=-1 loglevel=4"])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("starting qemu")?;
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if t0.elapsed() > timeout {
            // Our own child, by its pid.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let _ = fs::remove_file(&image);
    let text = fs::read_to_string(&log).unwrap_or_default();
    let (mut pass, mut detail) = judge(&text);
    match status {
        None => {
            pass = false;
            detail = format!("guest hung: killed after {} s; {detail}", timeout.as_secs());
        }
        Some(s) if !s.success() => {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read as _;
                let _ = e.read_to_string(&mut err);
            }
            pass = false;
            detail = format!("qemu failed ({s}): {} {detail}", err.trim());
        }
        Some(_) => {}
    }
    if !pass && let Some(v) = keep_verifier_log(&log, &text) {
        write!(detail, "; verifier output in {}", v.display()).ok();
    }
    write!(detail, "; {:.0} s", t0.elapsed().as_secs_f64()).ok();
    Ok(Outcome { pass, detail, log })
}

fn host(bins: &Binaries, out: &Path) -> anyhow::Result<Outcome> {
    let log = out.join("host.log");
    let t0 = Instant::now();
    let mut text = String::new();
    for (bin, args) in [
        (&bins.kcheck, vec![]),
        (&bins.corpus, vec!["--test-threads=1"]),
    ] {
        let o = Command::new(bin)
            .args(&args)
            .env("PICKET_BIN_DIR", root().join("target/debug"))
            .env("RUST_BACKTRACE", "0")
            .output()
            .with_context(|| format!("run {}", bin.display()))?;
        text.push_str(&String::from_utf8_lossy(&o.stdout));
        text.push_str(&String::from_utf8_lossy(&o.stderr));
    }
    fs::write(&log, &text)?;
    let (pass, mut detail) = judge(&text);
    if !pass && let Some(v) = keep_verifier_log(&log, &text) {
        write!(detail, "; verifier output in {}", v.display()).ok();
    }
    write!(detail, "; {:.0} s", t0.elapsed().as_secs_f64()).ok();
    Ok(Outcome { pass, detail, log })
}

pub fn kernel_matrix(opts: &Options) -> anyhow::Result<()> {
    let out = root().join("target/kernel-matrix");
    fs::create_dir_all(&out)?;
    let bins = build()?;
    let mut results = Vec::new();
    for k in &opts.kernels {
        let (name, outcome) = if k == "host" {
            let release = fs::read_to_string("/proc/sys/kernel/osrelease")?;
            eprintln!("xtask: kernel-matrix: host kernel {}", release.trim());
            (format!("host {}", release.trim()), host(&bins, &out))
        } else {
            match package_for(k).and_then(|p| fetch_kernel(&p)) {
                Ok(kernel) => {
                    eprintln!(
                        "xtask: kernel-matrix: booting {} under qemu (timeout {} s)",
                        kernel.release,
                        opts.timeout.as_secs()
                    );
                    let mut outcome = boot(&kernel, &bins, &out, opts.timeout);
                    // A guest that failed before it reached our init (an emulated machine's
                    // kernel panicking in its own start, seen once under TCG) says nothing of
                    // the sensor: boot it once more, and say so.
                    if let Ok(o) = &outcome
                        && !o.pass
                        && !fs::read_to_string(&o.log)
                            .unwrap_or_default()
                            .contains("PICKET-MATRIX-BEGIN")
                    {
                        eprintln!(
                            "xtask: kernel-matrix: {} failed before the guest's init ran ({}): booting it again",
                            kernel.release, o.detail
                        );
                        let first = o.detail.clone();
                        let _ = fs::rename(&o.log, o.log.with_extension("first.log"));
                        outcome = boot(&kernel, &bins, &out, opts.timeout).map(|mut o| {
                            o.detail = format!(
                                "{} (second boot; the first failed before init: {first})",
                                o.detail
                            );
                            o
                        });
                    }
                    (kernel.release.clone(), outcome)
                }
                Err(e) => (k.clone(), Err(e)),
            }
        };
        let line = match outcome {
            Ok(o) => format!(
                "{} {name}: {} (log: {})",
                if o.pass { "PASS" } else { "FAIL" },
                o.detail,
                o.log.display()
            ),
            Err(e) => format!("FAIL {name}: {e:#}"),
        };
        eprintln!("xtask: kernel-matrix: {line}");
        results.push(line);
    }
    println!("\nkernel matrix:");
    for r in &results {
        println!("  {r}");
    }
    let failed = results.iter().filter(|r| r.starts_with("FAIL")).count();
    if failed > 0 {
        bail!("{failed} of {} kernels failed", results.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_package_of_a_series_wins() {
        let mut names = [
            "linux-image-6.1.0-9-amd64",
            "linux-image-6.1.0-56-amd64",
            "linux-image-6.1.0-55-amd64",
        ];
        names.sort_by_key(|n| version_key(n));
        assert_eq!(names.last(), Some(&"linux-image-6.1.0-56-amd64"));
        let mut names = [
            "linux-image-6.12.117+deb12-amd64",
            "linux-image-6.12.99+deb12-amd64",
        ];
        names.sort_by_key(|n| version_key(n));
        assert_eq!(names.last(), Some(&"linux-image-6.12.117+deb12-amd64"));
    }

    const GOOD: &str = "kcheck: ok loaded and attached: iface=pk1b ifindex=2 xdp_mode=\"native\" tc_mode=\"clsact\"\n\
        kcheck: PASS\n\
        test result: ok. 10 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 64.90s\n\
        PICKET-MATRIX-RESULT kcheck=0 corpus=0\n";

    #[test]
    fn a_full_run_passes_and_names_the_attach_path() {
        let (pass, detail) = judge(GOOD);
        assert!(pass, "{detail}");
        assert!(detail.contains("XDP native, tc clsact"), "{detail}");
        assert!(detail.contains("ok, 10 passed, 0 failed"), "{detail}");
    }

    #[test]
    fn any_missing_or_failed_part_fails() {
        assert!(!judge(&GOOD.replace("kcheck: PASS\n", "")).0);
        assert!(
            !judge(&GOOD.replace(
                "test result: ok. 10 passed; 0 failed",
                "test result: FAILED. 9 passed; 1 failed"
            ))
            .0
        );
        let (pass, detail) = judge("PICKET-MATRIX-BEGIN 6.1\n");
        assert!(!pass);
        assert!(detail.contains("did not load"), "{detail}");
    }

    #[test]
    fn the_verifier_log_is_kept_on_its_own() {
        let dir = std::env::temp_dir().join(format!("picket-xtask-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let log = dir.join("k.log");
        let text = "boot...\npicket-sensor: the kernel verifier rejected `picket_xdp`: Permission denied\n0: (79) r8 = ...\n";
        let v = keep_verifier_log(&log, text).expect("saved");
        assert!(
            fs::read_to_string(&v)
                .expect("read")
                .starts_with("verifier rejected `picket_xdp`")
        );
        assert!(keep_verifier_log(&log, "no rejection here").is_none());
        fs::remove_dir_all(&dir).ok();
    }
}
