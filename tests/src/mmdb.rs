//! A MaxMind DB file written from the format's specification
//! (https://maxmind.github.io/MaxMind-DB/), for the tests of the optional country database: an
//! IPv4 database (`ip_version` 4, 24-bit records) whose networks each carry
//! `{"country": {"iso_code": CC}}`, as GeoIP2/GeoLite2 Country records do.

const METADATA_MARKER: &[u8] = b"\xab\xcd\xefMaxMind.com";

fn string(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 29, "short strings only");
    out.push(0x40 | s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

fn map_header(out: &mut Vec<u8>, entries: u8) {
    assert!(entries < 29);
    out.push(0xe0 | entries);
}

/// An unsigned integer of type 5 (uint16) or 6 (uint32), big-endian in as few bytes as needed.
fn uint(out: &mut Vec<u8>, kind: u8, v: u32) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    out.push((kind << 5) | (4 - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

#[derive(Clone, Copy)]
enum Record {
    Empty,
    Node(usize),
    Data(usize),
}

/// The database's bytes: each `(network, country)` is an IPv4 CIDR (`"1.0.16.0/24"`) and an
/// ISO 3166 code.
pub fn country_db(networks: &[(&str, &str)]) -> Vec<u8> {
    let mut data = Vec::new();
    let mut nodes: Vec<[Record; 2]> = vec![[Record::Empty; 2]];
    for (net, cc) in networks {
        let (addr, len) = net.split_once('/').expect("CIDR");
        let addr: std::net::Ipv4Addr = addr.parse().expect("IPv4");
        let len: usize = len.parse().expect("prefix length");
        assert!((1..=32).contains(&len));
        let offset = data.len();
        map_header(&mut data, 1);
        string(&mut data, "country");
        map_header(&mut data, 1);
        string(&mut data, "iso_code");
        string(&mut data, cc);
        let bits = u32::from(addr);
        let mut node = 0;
        for depth in 0..len {
            let bit = ((bits >> (31 - depth)) & 1) as usize;
            if depth == len - 1 {
                nodes[node][bit] = Record::Data(offset);
                break;
            }
            node = match nodes[node][bit] {
                Record::Node(n) => n,
                _ => {
                    nodes.push([Record::Empty; 2]);
                    let n = nodes.len() - 1;
                    nodes[node][bit] = Record::Node(n);
                    n
                }
            };
        }
    }
    let count = nodes.len();
    let value = |r: Record| -> u32 {
        (match r {
            Record::Empty => count,
            Record::Node(n) => n,
            // Pointers into the data section count from past the tree and its 16-byte separator.
            Record::Data(off) => count + 16 + off,
        }) as u32
    };
    let mut out = Vec::new();
    for [l, r] in nodes {
        out.extend_from_slice(&value(l).to_be_bytes()[1..]);
        out.extend_from_slice(&value(r).to_be_bytes()[1..]);
    }
    out.extend_from_slice(&[0; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(METADATA_MARKER);
    map_header(&mut out, 9);
    string(&mut out, "binary_format_major_version");
    uint(&mut out, 5, 2);
    string(&mut out, "binary_format_minor_version");
    uint(&mut out, 5, 0);
    string(&mut out, "build_epoch");
    // uint64: extended type 9 (the byte after the control byte is 9 - 7).
    out.extend_from_slice(&[0x04, 0x02]);
    out.extend_from_slice(&1_790_000_000u32.to_be_bytes());
    string(&mut out, "database_type");
    string(&mut out, "Picket-Test-Country");
    string(&mut out, "description");
    map_header(&mut out, 1);
    string(&mut out, "en");
    string(&mut out, "Picket's test networks");
    string(&mut out, "ip_version");
    uint(&mut out, 5, 4);
    string(&mut out, "languages");
    // An array (extended type 11) of one string.
    out.extend_from_slice(&[0x01, 0x04]);
    string(&mut out, "en");
    string(&mut out, "node_count");
    uint(&mut out, 6, count as u32);
    string(&mut out, "record_size");
    uint(&mut out, 5, 24);
    out
}
