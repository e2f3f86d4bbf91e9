//! A minimal pcap reader: the independent oracle the sensor's counts are compared against.
//! It counts IP-layer bytes from the IP header's own length field, as the sensor must.

use std::{collections::HashMap, net::IpAddr};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FlowId {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    /// Ports, or ICMP type and code.
    pub sport: u16,
    pub dport: u16,
}

/// Per-flow packets and IP bytes of every IPv4/IPv6 packet in a pcap file (Ethernet link type).
pub fn flows(data: &[u8]) -> HashMap<FlowId, (u64, u64)> {
    assert!(data.len() >= 24, "pcap too short");
    let magic = u32::from_le_bytes(data[0..4].try_into().expect("4"));
    let le = match magic {
        0xa1b2c3d4 | 0xa1b23c4d => true,
        0xd4c3b2a1 | 0x4d3cb2a1 => false,
        m => panic!("not a pcap file (magic {m:#x})"),
    };
    let u32_at = |b: &[u8], o: usize| {
        let a: [u8; 4] = b[o..o + 4].try_into().expect("4");
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    assert_eq!(u32_at(data, 20), 1, "pcap link type must be Ethernet");
    let mut out: HashMap<FlowId, (u64, u64)> = HashMap::new();
    let mut off = 24;
    while off + 16 <= data.len() {
        let caplen = u32_at(data, off + 8) as usize;
        let pkt = &data[off + 16..(off + 16 + caplen).min(data.len())];
        off += 16 + caplen;
        if let Some((id, bytes)) = parse(pkt) {
            let e = out.entry(id).or_default();
            e.0 += 1;
            e.1 += bytes;
        }
    }
    out
}

fn parse(p: &[u8]) -> Option<(FlowId, u64)> {
    let mut off = 12;
    let mut et = u16::from_be_bytes([*p.get(off)?, *p.get(off + 1)?]);
    while et == 0x8100 || et == 0x88a8 {
        off += 4;
        et = u16::from_be_bytes([*p.get(off)?, *p.get(off + 1)?]);
    }
    let l3 = off + 2;
    let (src, dst, proto, l4, bytes): (IpAddr, IpAddr, u8, usize, u64) = match et {
        0x0800 => {
            let h = p.get(l3..l3 + 20)?;
            let ihl = (h[0] & 0x0f) as usize * 4;
            let s: [u8; 4] = h[12..16].try_into().ok()?;
            let d: [u8; 4] = h[16..20].try_into().ok()?;
            (
                s.into(),
                d.into(),
                h[9],
                l3 + ihl,
                u16::from_be_bytes([h[2], h[3]]) as u64,
            )
        }
        0x86dd => {
            let h = p.get(l3..l3 + 40)?;
            let s: [u8; 16] = h[8..24].try_into().ok()?;
            let d: [u8; 16] = h[24..40].try_into().ok()?;
            (
                s.into(),
                d.into(),
                h[6],
                l3 + 40,
                u16::from_be_bytes([h[4], h[5]]) as u64 + 40,
            )
        }
        _ => return None,
    };
    let (sport, dport) = match proto {
        6 | 17 => (
            u16::from_be_bytes([*p.get(l4)?, *p.get(l4 + 1)?]),
            u16::from_be_bytes([*p.get(l4 + 2)?, *p.get(l4 + 3)?]),
        ),
        1 | 58 => (*p.get(l4)? as u16, *p.get(l4 + 1)? as u16),
        _ => (0, 0),
    };
    Some((
        FlowId {
            src,
            dst,
            protocol: proto,
            sport,
            dport,
        },
        bytes,
    ))
}
