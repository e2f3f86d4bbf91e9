//! Addresses and networks: which are internal, their wire and text forms, CIDR networks and
//! sets of them, ports by name.

use std::net::IpAddr;

use tracing::warn;

/// Addresses of an organisation's own networks: RFC 1918, CGNAT (RFC 6598), IPv6 ULA.
pub fn internal(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => {
            let o = v.octets();
            v.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v) => (v.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// An address carried as 4 or 16 bytes; anything else is a malformed record.
pub fn ip_addr(b: &[u8]) -> anyhow::Result<IpAddr> {
    Ok(match b.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(b).expect("4 bytes")),
        16 => IpAddr::from(<[u8; 16]>::try_from(b).expect("16 bytes")),
        n => anyhow::bail!("an IP address must be 4 or 16 bytes, got {n}"),
    })
}

/// Text form of an address carried as 4 or 16 bytes (see [`ip_addr`]).
pub fn ip_text(b: &[u8]) -> anyhow::Result<String> {
    Ok(ip_addr(b)?.to_string())
}

/// An address as 16 bytes, IPv4 as its IPv4-mapped IPv6 form, so one ordering holds both.
pub fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// [`ip_bytes`] as a number.
pub fn ip_key(ip: IpAddr) -> u128 {
    u128::from_be_bytes(ip_bytes(ip))
}

/// `22/tcp`, `53/udp`, `8/icmp`; other protocols by number.
pub fn port_name(port: u16, protocol: u8) -> String {
    let p = match protocol {
        6 => "tcp".to_string(),
        17 => "udp".to_string(),
        1 => "icmp".to_string(),
        58 => "icmpv6".to_string(),
        n => n.to_string(),
    };
    format!("{port}/{p}")
}

/// Parses an address or a network in CIDR form, returned canonical (`10.1.2.3/32`,
/// `10.1.0.0/16` for `10.1.2.3/16`).
pub fn parse_network(text: &str) -> anyhow::Result<ipnet::IpNet> {
    let t = text.trim();
    let net: ipnet::IpNet = match t.parse::<IpAddr>() {
        Ok(ip) => ip.into(),
        Err(_) => t
            .parse()
            .map_err(|_| anyhow::anyhow!("`{t}` is neither an address nor a CIDR network"))?,
    };
    Ok(net.trunc())
}

/// Networks (CIDR, so any two nest or are disjoint) with a value each, flattened into disjoint
/// segments that each name the most specific network holding them: a lookup is one binary
/// search, however long a feed is.
#[derive(Default)]
pub struct NetSet<T> {
    /// (first, last, entry index), disjoint, sorted.
    segments: Vec<(u128, u128, usize)>,
    entries: Vec<T>,
}

impl<T> NetSet<T> {
    /// From (network, value) pairs; a network that does not parse is logged and skipped.
    pub fn new(items: Vec<(String, T)>, what: &str) -> Self {
        let mut ranges = Vec::with_capacity(items.len());
        let mut entries = Vec::with_capacity(items.len());
        for (cidr, v) in items {
            match parse_network(&cidr) {
                Ok(net) => {
                    ranges.push((
                        ip_key(net.network()),
                        ip_key(net.broadcast()),
                        entries.len(),
                    ));
                    entries.push(v);
                }
                Err(e) => warn!(entry = cidr, error = %e, "{what} entry skipped"),
            }
        }
        // Outer networks before the ones they hold; then a sweep with a stack of open ones.
        ranges.sort_unstable_by_key(|&(a, b, i)| (a, std::cmp::Reverse(b), i));
        let mut segments = Vec::new();
        let mut open: Vec<(u128, usize)> = Vec::new();
        // The first address not yet given a segment (None: past the last address).
        let mut cursor = Some(0u128);
        let mut emit = |cursor: Option<u128>, to: u128, i: usize| {
            if let Some(from) = cursor
                && from <= to
            {
                segments.push((from, to, i));
            }
        };
        for (a, b, i) in ranges {
            while let Some(&(end, j)) = open.last()
                && end < a
            {
                emit(cursor, end, j);
                cursor = end.checked_add(1);
                open.pop();
            }
            if let Some(&(_, j)) = open.last()
                && a > 0
            {
                emit(cursor, a - 1, j);
            }
            open.push((b, i));
            cursor = Some(a);
        }
        while let Some((end, j)) = open.pop() {
            emit(cursor, end, j);
            cursor = end.checked_add(1);
        }
        NetSet { segments, entries }
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// The value of the most specific network holding `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<&T> {
        let k = ip_key(ip);
        let n = self.segments.partition_point(|s| s.0 <= k);
        let s = self.segments.get(n.checked_sub(1)?)?;
        (s.1 >= k).then(|| &self.entries[s.2])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_sets_find_the_most_specific_network_with_one_search() {
        let nets = [
            ("::/0", "everything"),
            ("10.0.0.0/8", "ten"),
            ("10.1.0.0/16", "ten-one"),
            ("10.1.2.3/32", "host"),
            ("10.1.2.4/32", "next host"),
            ("10.200.0.0/16", "ten-200"),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128", "last"),
        ];
        let set = NetSet::new(
            nets.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
            "test",
        );
        let at = |ip: &str| {
            *set.lookup(ip.parse().expect("ip"))
                .expect("covered by ::/0")
        };
        assert_eq!(at("10.1.2.3"), "host");
        assert_eq!(at("10.1.2.4"), "next host");
        assert_eq!(at("10.1.2.5"), "ten-one");
        assert_eq!(at("10.1.255.255"), "ten-one");
        assert_eq!(at("10.2.0.0"), "ten");
        assert_eq!(at("10.200.9.9"), "ten-200");
        assert_eq!(at("10.201.0.0"), "ten");
        assert_eq!(at("11.0.0.0"), "everything");
        assert_eq!(at("2001:db8::1"), "everything");
        assert_eq!(at("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), "last");
        assert_eq!(at("::"), "everything");
        let v4 = NetSet::new(vec![("192.0.2.0/24".to_string(), ())], "test");
        assert!(v4.lookup("192.0.2.200".parse().expect("ip")).is_some());
        assert!(v4.lookup("192.0.3.0".parse().expect("ip")).is_none());
        assert!(v4.lookup("192.0.1.255".parse().expect("ip")).is_none());
        assert!(
            NetSet::<()>::default()
                .lookup("192.0.2.1".parse().expect("ip"))
                .is_none()
        );
    }

    #[test]
    fn internal_addresses_are_private_cgnat_and_ula() {
        for (ip, want) in [
            ("10.0.0.1", true),
            ("172.16.0.1", true),
            ("192.168.1.1", true),
            ("100.64.0.1", true),
            ("100.128.0.1", false),
            ("8.8.8.8", false),
            ("fd00::1", true),
            ("2001:db8::1", false),
        ] {
            assert_eq!(internal(&ip.parse().expect("ip")), want, "{ip}");
        }
        assert!(ip_addr(&[1, 2, 3]).is_err());
        assert_eq!(ip_text(&[10, 0, 0, 1]).expect("4 bytes"), "10.0.0.1");
        assert_eq!(
            parse_network("10.1.2.3/16").expect("net").to_string(),
            "10.1.0.0/16"
        );
        assert_eq!(port_name(22, 6), "22/tcp");
        assert_eq!(port_name(0, 47), "0/47");
    }
}
