#!/usr/bin/env bash
# Builds the Debian packages picket-sensor and picket-controlplane from already-built binaries.
#   deploy/debian/build-deb.sh BIN_DIR OUT_DIR VERSION
# DEB_COMPRESSION (xz by default; the test uses gzip to be quick with debug binaries).
# Called by `cargo xtask dist` (release binaries) and by the packaging test (debug binaries).
set -euo pipefail
bin_dir=$1 out_dir=$2 version=$3
here=$(cd "$(dirname "$0")" && pwd)
deploy=$(dirname "$here")
arch=$(dpkg --print-architecture)
mkdir -p "$out_dir"

stage() {  # stage NAME DESCRIPTION DEPENDS
  local name=$1 desc=$2 depends=$3
  local root="$out_dir/$name"
  rm -rf "$root"
  install -d "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/picket" \
    "$root/usr/share/doc/$name"
  install -m 0755 "$bin_dir/$name" "$root/usr/bin/$name"
  strip --strip-debug "$root/usr/bin/$name"
  install -m 0644 "$deploy/systemd/$name.service" "$root/lib/systemd/system/$name.service"
  printf 'Picket %s %s\nLicense: Apache-2.0\n' "$name" "$version" > "$root/usr/share/doc/$name/copyright"
  cat > "$root/DEBIAN/control" <<CONTROL
Package: $name
Version: $version
Architecture: $arch
Maintainer: Picket developers <dev@picket.invalid>
Section: net
Priority: optional
Depends: $depends
Description: $desc
CONTROL
  # A system user for the services (no login, no home), made once.
  cat > "$root/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  getent group picket >/dev/null || addgroup --system picket
  getent passwd picket >/dev/null || adduser --system --ingroup picket --no-create-home --home /nonexistent picket
  # The services run as picket: their configuration (and keys put there) is readable by the group.
  chown root:picket /etc/picket
  chmod 0750 /etc/picket
  [ ! -f /etc/picket/sensor.toml ] || { chown root:picket /etc/picket/sensor.toml; chmod 0640 /etc/picket/sensor.toml; }
  if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
fi
POSTINST
  cat > "$root/DEBIAN/prerm" <<PRERM
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "\$1" = remove ]; then
  for u in $name.service $name-replica.service; do
    [ ! -f /lib/systemd/system/\$u ] || systemctl stop \$u || true
  done
fi
PRERM
  cat > "$root/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
POSTRM
  chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"
}

stage picket-sensor "Picket network sensor: eBPF flow accounting and scan detection
 XDP (ingress) and tc (egress) programs count flows and flag scan-like fan-outs in the
 kernel; the agent exports flow records to the Picket control plane over gRPC." "libc6, adduser"
install -m 0640 "$deploy/systemd/sensor.toml" "$out_dir/picket-sensor/etc/picket/sensor.toml"
echo /etc/picket/sensor.toml > "$out_dir/picket-sensor/DEBIAN/conffiles"

stage picket-controlplane "Picket control plane: sensor ingest, detection, dashboard
 Receives flow records from Picket sensors over gRPC (TLS, sensor keys) and cloud flow logs,
 stores them (embedded, or ClickHouse and PostgreSQL), detects and alerts. Runs alone
 (picket-controlplane.service) or as one replica of a cluster on NATS JetStream
 (picket-controlplane-replica.service, configured in /etc/picket/replica.env)." "libc6, adduser"
install -m 0644 "$deploy/systemd/picket-controlplane-replica.service" \
  "$out_dir/picket-controlplane/lib/systemd/system/picket-controlplane-replica.service"
# Passwords go in it: root's alone.
install -m 0600 "$deploy/systemd/replica.env" "$out_dir/picket-controlplane/etc/picket/replica.env"
echo /etc/picket/replica.env > "$out_dir/picket-controlplane/DEBIAN/conffiles"

for name in picket-sensor picket-controlplane; do
  dpkg-deb --root-owner-group "-Z${DEB_COMPRESSION:-xz}" --build "$out_dir/$name" "$out_dir/${name}_${version}_${arch}.deb" >/dev/null
  rm -rf "${out_dir:?}/$name"
  echo "$out_dir/${name}_${version}_${arch}.deb"
done
