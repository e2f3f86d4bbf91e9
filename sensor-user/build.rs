//! Builds the eBPF object (sensor-ebpf) with Debian's `debian` toolchain and embeds it.
//! See docs/toolchain.md: core for bpfel-unknown-none comes prebuilt with Debian's rustc-web,
//! so no nightly and no build-std; aya-ebpf's `asm_experimental_arch` is unlocked for exactly the two
//! crates that need it through RUSTC_BOOTSTRAP (never `1`, which aya-build reads as "use build-std").
use std::process::Command;

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../sensor-common/src");
    println!("cargo:rerun-if-changed=../sensor-ebpf/src");
    println!("cargo:rerun-if-changed=../sensor-ebpf/Cargo.toml");
    let toolchain = std::env::var("PICKET_EBPF_TOOLCHAIN").unwrap_or_else(|_| "debian".into());
    println!("cargo:rerun-if-env-changed=PICKET_EBPF_TOOLCHAIN");

    // Fail early with a sentence, not a wall of cargo errors, when setup has not been run.
    let ok = Command::new("rustup")
        .args([
            "run",
            &toolchain,
            "rustc",
            "--print",
            "target-libdir",
            "--target",
            "bpfel-unknown-none",
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        bail!(
            "the `{toolchain}` toolchain with core for bpfel-unknown-none is missing; run `scripts/setup.sh` \
             (or `cargo xtask setup`) first"
        );
    }
    let linker = std::env::var("CARGO_HOME")
        .map(|h| std::path::PathBuf::from(h).join("bin/bpf-linker"))
        .ok()
        .filter(|p| p.exists());
    if linker.is_none()
        && Command::new("bpf-linker")
            .arg("--version")
            .output()
            .is_err()
    {
        bail!("bpf-linker is not installed; run `scripts/setup.sh` (or `cargo xtask setup`) first");
    }

    // SAFETY: build scripts are single-threaded; the variable is read by the child cargo.
    unsafe {
        std::env::set_var("RUSTC_BOOTSTRAP", "aya_ebpf,picket_ebpf");
        // aya-build relays the inner cargo's stderr as warnings: keep it to real diagnostics.
        std::env::set_var("CARGO_TERM_QUIET", "true");
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../sensor-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "sensor-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
    .context("building the eBPF object (sensor-ebpf) failed; see the warnings above")?;
    Ok(())
}
