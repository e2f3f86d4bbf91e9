#!/usr/bin/env bash
# Installs everything Picket needs to build and test on a Debian 12 machine (see docs/toolchain.md
# for why this route: Debian's rustc-web ships core prebuilt for bpfel-unknown-none, so no nightly and
# no build-std). Idempotent: when everything is present it only checks and returns in about a second.
#
#   scripts/setup.sh           install what is missing (needs root for apt)
#   scripts/setup.sh --check   only report what is missing; exit 1 if anything is
set -euo pipefail

BPF_LINKER_VERSION=0.13.0
CHECK_ONLY=0
[[ "${1:-}" == "--check" ]] && CHECK_ONLY=1

log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# Debian packages: toolchain (one apt command so rustc-web and its -bpf core stay at one version),
# kernel/network tools used by tests, benchmarks and the demo.
TOOLCHAIN_PKGS=(rustc-web cargo-web libstd-rust-web-dev-bpf)
TEST_PKGS=(protobuf-compiler openssl g++ binutils iproute2 bpftool nmap hping3 masscan netsniff-ng tcpdump iputils-ping ethtool util-linux jq busybox-static xz-utils cpio)

missing_pkgs() {
  local p out=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || out+=("$p")
  done
  echo "${out[@]:-}"
}

need_apt_update=1
apt_install() {
  [[ $CHECK_ONLY == 1 ]] && die "missing Debian packages: $*  (run scripts/setup.sh as root)"
  [[ $(id -u) == 0 ]] || die "missing Debian packages: $*; run scripts/setup.sh as root"
  if [[ $need_apt_update == 1 ]]; then
    log "apt-get update"
    apt-get update -qq || die "apt-get update failed (is the Debian archive reachable?)"
    need_apt_update=0
  fi
  log "installing: $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed"
}

# 1. Debian's rustc-web + prebuilt BPF core.
missing=$(missing_pkgs "${TOOLCHAIN_PKGS[@]}")
if [[ -n "$missing" ]]; then
  # Install all of them together, plus the LLVM dev files of the LLVM they were built on. The LLVM major
  # is only known once rustc-web's candidate is known, so ask apt for rustc-web's LLVM dependency.
  if [[ $CHECK_ONLY == 0 && $need_apt_update == 1 ]]; then apt-get update -qq; need_apt_update=0; fi
  llvm_major=$(apt-cache depends --recurse --important rustc-web 2>/dev/null | grep -o 'libllvm[0-9]\+' | head -1 | tr -dc 0-9)
  [[ -n "$llvm_major" ]] || die "cannot tell which LLVM rustc-web is built on (apt-cache depends rustc-web)"
  apt_install "${TOOLCHAIN_PKGS[@]}" "llvm-${llvm_major}-dev"
fi
[[ -x /usr/bin/rustc ]] || die "/usr/bin/rustc missing after installing rustc-web"
llvm_major=$(/usr/bin/rustc -vV | sed -n 's/^LLVM version: \([0-9]\+\).*/\1/p')
[[ -n "$llvm_major" ]] || die "cannot read the LLVM version from /usr/bin/rustc -vV"
missing=$(missing_pkgs "llvm-${llvm_major}-dev")
[[ -z "$missing" ]] || apt_install "llvm-${llvm_major}-dev"
[[ -d /usr/lib/rustlib/bpfel-unknown-none ]] || die "core for bpfel-unknown-none not found under /usr/lib/rustlib (libstd-rust-web-dev-bpf)"

# 2. Debian's compiler as a rustup toolchain named "debian".
command -v rustup >/dev/null || die "rustup not found: the host toolchain must come from rustup"
if ! rustup toolchain list | grep -q '^debian'; then
  [[ $CHECK_ONLY == 1 ]] && die "rustup toolchain 'debian' is not linked"
  log "rustup toolchain link debian /usr"
  rustup toolchain link debian /usr
fi

# 3. bpf-linker built against the same LLVM major.
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
want="bpf-linker v${BPF_LINKER_VERSION}"
have=""
if [[ -x "$cargo_bin/bpf-linker" ]]; then
  have=$(cargo install --list 2>/dev/null | grep '^bpf-linker ' | sed 's/:$//' || true)
  # Also check which LLVM it was linked against.
  if ! ldd "$cargo_bin/bpf-linker" 2>/dev/null | grep -q "libLLVM.so.${llvm_major}\|libLLVM-${llvm_major}"; then
    have="$have (wrong LLVM)"
  fi
fi
if [[ "$have" != "$want" ]]; then
  [[ $CHECK_ONLY == 1 ]] && die "bpf-linker ${BPF_LINKER_VERSION} for LLVM ${llvm_major} is not installed (have: '${have:-none}')"
  missing=$(missing_pkgs zlib1g-dev libzstd-dev)
  [[ -z "$missing" ]] || apt_install $missing
  log "cargo install bpf-linker@${BPF_LINKER_VERSION} for LLVM ${llvm_major} (about a minute)"
  LLVM_PREFIX="/usr/lib/llvm-${llvm_major}" cargo install --locked --force "bpf-linker@${BPF_LINKER_VERSION}" \
    --no-default-features --features "llvm-${llvm_major}" \
    || die "building bpf-linker against LLVM ${llvm_major} failed (is llvm-${llvm_major}-dev installed?)"
fi

# 4. Tools used by the tests, benchmarks and demo.
missing=$(missing_pkgs "${TEST_PKGS[@]}")
[[ -z "$missing" ]] || apt_install $missing

# 4b. Servers for cluster mode's tests (ClickHouse for flows, PostgreSQL for state, NATS JetStream
#     for the bus between replicas): only the packages. The tests start private instances in temporary folders; nothing is left running,
#     so the services the packages would start at install are held back by a policy-rc.d.
SERVER_PKGS=(clickhouse-server postgresql nats-server)
missing=$(missing_pkgs "${SERVER_PKGS[@]}")
if [[ -n "$missing" ]]; then
  if [[ $CHECK_ONLY == 0 && ! -e /usr/sbin/policy-rc.d && $(id -u) == 0 ]]; then
    printf '#!/bin/sh\n# scripts/setup.sh: no service starts while it installs packages\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  # shellcheck disable=SC2086
  apt_install $missing
fi
[[ -x /usr/sbin/clickhouse-server ]] || die "/usr/sbin/clickhouse-server missing (package clickhouse-server)"
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || die "PostgreSQL's initdb missing (package postgresql)"
[[ -x /usr/sbin/nats-server ]] || die "/usr/sbin/nats-server missing (package nats-server)"

# 5. qemu for the kernel matrix (cargo xtask kernel-matrix). Debian's qemu-system-x86 package would
#    replace a newer qemu-utils already on the machine (docs/toolchain.md), so unless qemu is
#    installed, exactly the packages apt would add are unpacked into a private directory instead.
qemu_root="${PICKET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/picket}/qemu/root"
if ! command -v qemu-system-x86_64 >/dev/null && [[ ! -x "$qemu_root/usr/bin/qemu-system-x86_64" ]]; then
  [[ $CHECK_ONLY == 1 ]] && die "qemu for the kernel matrix is missing (run scripts/setup.sh)"
  if [[ $need_apt_update == 1 ]]; then apt-get update -qq; need_apt_update=0; fi
  pkgs=$(apt-get install -s --no-install-recommends qemu-system-x86 2>/dev/null | awk '/^Inst/{print $2}')
  [[ -n "$pkgs" ]] || die "apt cannot resolve qemu-system-x86"
  log "unpacking a private qemu-system-x86 into $qemu_root"
  debs=$(mktemp -d); chmod 755 "$debs"
  # shellcheck disable=SC2086
  (cd "$debs" && apt-get download -q $pkgs >/dev/null 2>&1) || die "apt-get download of qemu-system-x86 failed"
  rm -rf "$qemu_root.tmp"; mkdir -p "$qemu_root.tmp"
  for d in "$debs"/*.deb; do dpkg-deb -x "$d" "$qemu_root.tmp"; done
  rm -rf "$debs" "$qemu_root"; mv "$qemu_root.tmp" "$qemu_root"
fi

# 6. The web dashboard: Node.js builds it (vite, from controlplane/build.rs) into the control plane's
#    binary, and its browser test drives Debian's chromium with playwright-core. chromium is installed
#    with its recommended packages (fonts), so pages render as users see them.
missing=$(missing_pkgs nodejs chromium)
if [[ -n "$missing" ]]; then
  [[ $CHECK_ONLY == 1 ]] && die "missing Debian packages: $missing  (run scripts/setup.sh as root)"
  [[ $(id -u) == 0 ]] || die "missing Debian packages: $missing; run scripts/setup.sh as root"
  if [[ $need_apt_update == 1 ]]; then apt-get update -qq; need_apt_update=0; fi
  log "installing: $missing"
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null || die "apt-get install $missing failed"
fi
command -v npm >/dev/null || die "npm not found (it comes with the machine's Node.js)"
web_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/controlplane/web"
lock_sum=$(sha256sum "$web_dir/package-lock.json" | cut -d' ' -f1)
if [[ "$(cat "$web_dir/node_modules/.picket-lock" 2>/dev/null)" != "$lock_sum" ]]; then
  [[ $CHECK_ONLY == 1 ]] && die "the dashboard's npm packages are missing or stale (run scripts/setup.sh)"
  log "npm ci in controlplane/web (the dashboard's packages)"
  (cd "$web_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) || die "npm ci in $web_dir failed"
  echo "$lock_sum" > "$web_dir/node_modules/.picket-lock"
fi

# 7. Host components for formatting and linting.
for comp in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^${comp}" || log "warning: rustup component ${comp} missing"
done

log "ok (rustc-web $(/usr/bin/rustc -V | awk '{print $2}'), LLVM ${llvm_major}, bpf-linker ${BPF_LINKER_VERSION})"
