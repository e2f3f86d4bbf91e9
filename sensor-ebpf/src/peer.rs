//! Benchmark reference, not part of the sensor: the textbook XDP flow counter that flow monitors
//! are usually built from. It parses Ethernet (one optional 802.1Q tag), IPv4 or IPv6 (no
//! extension headers), TCP/UDP ports, and adds the packet to a per-CPU LRU hash table keyed by the
//! same 5-tuple as Picket's (one lookup, an insert on a miss). It counts nothing it cannot parse and
//! has no scan detection. It reads time from a config array, as the sensor does by default, so that
//! the comparison is about the flow accounting and not the clock.
//!
//! `cargo xtask bench` reports the sensor's cost next to this program's, measured in the same run.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod prog {
    use core::mem::size_of;

    use aya_ebpf::{
        bindings::xdp_action,
        macros::{map, xdp},
        maps::{Array, LruPerCpuHashMap},
        programs::XdpContext,
    };
    use sensor_common::{DEFAULT_FLOW_TABLE_SIZE, FlowKey, FlowValue, SensorConfig};

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[map]
    static PEER_FLOWS: LruPerCpuHashMap<FlowKey, FlowValue> =
        LruPerCpuHashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, 0);
    #[map]
    static PEER_CONFIG: Array<SensorConfig> = Array::with_max_entries(1, 0);

    #[inline(always)]
    fn at<T>(start: usize, end: usize, off: usize) -> Option<&'static T> {
        if start + off + size_of::<T>() > end {
            return None;
        }
        // SAFETY: bounds checked against the packet end.
        Some(unsafe { &*((start + off) as *const T) })
    }

    #[xdp]
    pub fn peer_flow_counter(ctx: XdpContext) -> u32 {
        let _ = count(&ctx);
        xdp_action::XDP_PASS
    }

    #[inline(always)]
    fn count(ctx: &XdpContext) -> Option<()> {
        let (start, end) = (ctx.data(), ctx.data_end());
        let eth = at::<[u8; 14]>(start, end, 0)?;
        let mut proto = u16::from_be_bytes([eth[12], eth[13]]);
        let mut off = 14;
        if proto == 0x8100 {
            let tag = at::<[u8; 4]>(start, end, off)?;
            proto = u16::from_be_bytes([tag[2], tag[3]]);
            off += 4;
        }
        // The key is built in one expression at the end: zero-initialising it first makes LLVM
        // emit a byte-by-byte memset loop for BPF, which a C program (clang inlines its memset)
        // would not pay either.
        let (bytes, protocol, src, dst, ip_version, l4);
        if proto == 0x0800 {
            let h = at::<[u8; 20]>(start, end, off)?;
            bytes = u16::from_be_bytes([h[2], h[3]]) as u64;
            protocol = h[9];
            src = sensor_common::v4_mapped([h[12], h[13], h[14], h[15]]);
            dst = sensor_common::v4_mapped([h[16], h[17], h[18], h[19]]);
            ip_version = 4;
            l4 = off + ((h[0] & 0x0f) as usize) * 4;
        } else if proto == 0x86dd {
            let h = at::<[u32; 10]>(start, end, off)?;
            bytes = u16::from_be_bytes((h[1] as u16).to_ne_bytes()) as u64 + 40;
            protocol = (h[1] >> 16) as u8;
            // SAFETY: [u32; 4] and [u8; 16] have the same size; any bit pattern is valid.
            (src, dst) = unsafe {
                (
                    core::mem::transmute::<[u32; 4], [u8; 16]>([h[2], h[3], h[4], h[5]]),
                    core::mem::transmute::<[u32; 4], [u8; 16]>([h[6], h[7], h[8], h[9]]),
                )
            };
            ip_version = 6;
            l4 = off + 40;
        } else {
            return None;
        }
        let (mut src_port, mut dst_port, mut flags) = (0, 0, 0);
        if (protocol == 6 || protocol == 17) && l4 < 128 {
            if let Some(p) = at::<[u8; 14]>(start, end, l4) {
                src_port = u16::from_be_bytes([p[0], p[1]]);
                dst_port = u16::from_be_bytes([p[2], p[3]]);
                if protocol == 6 {
                    flags = p[13];
                }
            }
        }
        let key = FlowKey {
            ifindex: ctx.ingress_ifindex() as u32,
            src_addr: src,
            dst_addr: dst,
            src_port,
            dst_port,
            protocol,
            ip_version,
            flags: 0,
            _pad: 0,
        };
        let now = PEER_CONFIG.get(0)?.now_ns;
        if let Some(v) = PEER_FLOWS.get_ptr_mut(&key) {
            // SAFETY: this CPU's value.
            let v = unsafe { &mut *v };
            v.packets += 1;
            v.bytes += bytes;
            v.last_seen_ns = now;
            v.tcp_flags |= flags;
        } else {
            let v = FlowValue {
                packets: 1,
                bytes,
                first_seen_ns: now,
                last_seen_ns: now,
                tcp_flags: flags,
                directions: 1,
                opened_by_syn: 0,
                _pad1: 0,
                _pad4: 0,
            };
            let _ = PEER_FLOWS.insert(&key, &v, 0);
        }
        Some(())
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Built for bpfel-unknown-none by sensor-user's build.rs; the host build is a no-op.
}
