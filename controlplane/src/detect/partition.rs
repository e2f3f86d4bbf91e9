//! Partitions of the sensor detectors (cluster mode): every record of a stored sensor batch
//! belongs to one of [`PARTITIONS`] partitions, by the key the detectors that read it keep
//! their state under, so that state lives in one place (the replica holding the partition)
//! whichever replicas stored the batches.
//!
//! | records | key | detectors whose state it keys |
//! |---|---|---|
//! | flows | the flow's internal entity: its destination when that is internal, else its source | `new_service`, `geo_unusual_access` (the internal side that answers), `data_exfiltration` (the internal side, either way), `distributed_scan` (the target host), `watchlist` (no state) |
//! | kernel scan events | what the scan was against: the host for a port scan (an internal host: as its flows are keyed), protocol and port for a sweep | `decoys` (findings against one target), `kernel_scan` (no state), `scan_extent` (the scanner, followed where its scan of a host is) |
//! | logins | the source address | `brute_force_logins` |
//! | probe records | the source address | none yet (stored only) |
//!
//! Two detectors see less than the whole under this split, and say so in docs/cluster.md:
//! `new_internal_device` learns a network's addresses per partition (each partition's
//! learning period starts when it first sees the network), and a `distributed_scan` against
//! an *external* host from internal sources is counted per partition of its sources.
//!
//! The hash is FNV-1a over the key's bytes: the same on every replica and in every version
//! (std's hasher promises neither).

use std::net::IpAddr;

use super::kernel_scan;
use crate::{
    model::{LoginEvent, ScanEvent},
    util::net::internal,
};

/// How many partitions the sensor detectors are split into. More partitions than replicas
/// lets them spread over up to this many replicas; each partition's detectors keep their
/// state apart (under [`state_prefix`]), so changing this number starts the learning again.
pub const PARTITIONS: u32 = 8;

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn of_bytes(bytes: &[u8]) -> u32 {
    (fnv1a(bytes) % u64::from(PARTITIONS)) as u32
}

fn of_addr(a: IpAddr) -> u32 {
    match a {
        IpAddr::V4(v) => of_bytes(&v.octets()),
        IpAddr::V6(v) => of_bytes(&v.octets()),
    }
}

/// The flow's internal entity: the destination when it is internal, else the source.
pub fn flow_entity(src: IpAddr, dst: IpAddr) -> IpAddr {
    if internal(&dst) { dst } else { src }
}

/// The partition of a flow from `src` to `dst`.
pub fn of_flow(src: IpAddr, dst: IpAddr) -> u32 {
    of_addr(flow_entity(src, dst))
}

/// The partition of a kernel scan event: by what decoy grouping groups it under. A port scan's
/// group is its target host, so it goes where the scanner's conversations with that host go
/// (`scan_extent` follows them there); a sweep's, its protocol and port.
pub fn of_scan(e: &ScanEvent) -> u32 {
    let group = kernel_scan::group_target(e);
    // An internal host: every source's events against it (decoys' too) go to its partition.
    if group.starts_with("port_scan ") && internal(&e.last_dst_ip) {
        of_addr(e.last_dst_ip)
    } else {
        of_bytes(group.as_bytes())
    }
}

/// The partition of a login.
pub fn of_login(e: &LoginEvent) -> u32 {
    of_addr(e.src_ip)
}

/// The partition of a probe record of the source `src`.
pub fn of_probe(src: IpAddr) -> u32 {
    of_addr(src)
}

/// The state prefix of a partition's sensor-flow detectors.
pub fn state_prefix(partition: u32) -> String {
    format!("sensor/{partition}-of-{PARTITIONS}/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fnv1a_as_published() {
        // The FNV-1a 64 test vectors: the partition of a key must never change between
        // versions, or replicas of two versions would split one source's state.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn a_flow_goes_by_its_internal_entity() {
        let server: IpAddr = "10.0.0.5".parse().unwrap();
        let client: IpAddr = "203.0.113.9".parse().unwrap();
        let inside: IpAddr = "10.0.7.7".parse().unwrap();
        // Inbound: the internal server that answers.
        assert_eq!(flow_entity(client, server), server);
        // Outbound: the internal client.
        assert_eq!(flow_entity(server, client), server);
        // Internal to internal: the destination.
        assert_eq!(flow_entity(inside, server), server);
        assert_eq!(of_flow(client, server), of_flow(inside, server));
        assert_eq!(of_flow(client, server), of_flow(server, client));
    }

    #[test]
    fn addresses_spread_over_every_partition() {
        let mut counts = [0u32; PARTITIONS as usize];
        for i in 0..4096u32 {
            let a = IpAddr::from([10, 0, (i >> 8) as u8, i as u8]);
            counts[of_addr(a) as usize] += 1;
        }
        // 512 each if even; every partition within a quarter of that.
        for (p, n) in counts.iter().enumerate() {
            assert!((384..=640).contains(n), "partition {p}: {n} of 4096");
        }
    }
}
