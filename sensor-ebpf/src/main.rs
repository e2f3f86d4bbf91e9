//! Picket's in-kernel sensor.
//!
//! Two programs share one parser and one accounting path:
//! - `picket_xdp` (XDP, ingress) and
//! - `picket_tc_egress` (tc direct-action on clsact egress; XDP has no egress hook).
//!
//! Per packet they parse Ethernet/802.1Q/QinQ, IPv4/IPv6, TCP/UDP/ICMP/ICMPv6, add the packet to a
//! per-CPU LRU flow table, and for the first packet of a flow that looks like a probe, update the
//! source's fan-out state, emitting one ring-buffer event per source per window when it crosses a
//! threshold. Everything that cannot be recorded is counted. Traffic always passes.
//!
//! Two flow tables alternate: the programs write into `FLOWS_{active}` while the agent drains the
//! other, so draining never races with updates and every packet is exported exactly once.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod sensor;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // A host build exists only so that workspace-wide commands do not trip over this crate.
    // The real object is built for bpfel-unknown-none by sensor-user's build.rs.
}
