//! The index of raw flows, one row per insert: the ids a write gave its flows, their time
//! range, the sorted distinct addresses they carry, and the conversation key of each sensor
//! flow.
//!
//! A B-tree index on `src_ip` and `dst_ip` costs two inserts at random positions per flow,
//! which bounded the import at 45k records/s (docs/performance.md); one on sensor flows'
//! conversations halved the gRPC ingest. A chunk costs one row per write. A lookup by address
//! reads the chunks of the time range, keeps those whose address list holds the address
//! (binary search), and scans only their id ranges; correlation reads the conversation lists
//! of the sensor chunks that overlap the cloud records in time (correlate.rs).

use std::net::IpAddr;

use rusqlite::{Connection, params};

use crate::util::net::{ip_bytes, ip_key};

/// Bytes per address in a chunk's list: IPv4 as its IPv4-mapped IPv6 form
/// ([`ip_bytes`]). (A real `::ffff:a.b.c.d` address shares that key: a false match, which the
/// scan filters out.)
const KEY: usize = 16;

/// The conversation key of a flow, the same either way round (see [`Chunk::conversation`]):
/// both ends (address key and port, the smaller first) and the protocol, mixed a word at a
/// time. It is stored, so it must never change. A collision only costs a comparison:
/// correlation then checks the whole 5-tuple.
pub fn conversation_key(a: IpAddr, a_port: u16, b: IpAddr, b_port: u16, protocol: u8) -> u64 {
    let (a, b) = (ip_key(a), ip_key(b));
    let ((lo, lo_port), (hi, hi_port)) = if (a, a_port) <= (b, b_port) {
        ((a, a_port), (b, b_port))
    } else {
        ((b, b_port), (a, a_port))
    };
    let words = [
        (lo >> 64) as u64,
        lo as u64,
        (hi >> 64) as u64,
        hi as u64,
        u64::from(lo_port) << 32 | u64::from(hi_port) << 8 | u64::from(protocol),
    ];
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    for w in words {
        h = (h ^ w).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 29;
    }
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 32)
}

/// Bytes per entry of a conversation list: the key (u64) and the flow's id less the chunk's
/// first id (u32), little-endian.
pub const CONVERSATION: usize = 12;

/// The addresses and time range of the flows one write stores.
#[derive(Default)]
pub struct Chunk {
    /// Keys as big-endian integers: they sort as the bytes do, and faster.
    addrs: Vec<u128>,
    /// Sensor flows' conversation entries, in id order; None once a flow's id did not fit
    /// (the list is then unknown, and correlation reads the rows instead).
    conversations: Option<Vec<u8>>,
    min_start_ns: i64,
    min_end_ns: i64,
    max_end_ns: i64,
    first_id: Option<i64>,
    last_id: i64,
}

impl Chunk {
    /// One stored flow: its row id (ids of one write are contiguous) and what it carries.
    pub fn add(
        &mut self,
        id: i64,
        start_ns: i64,
        end_ns: i64,
        addrs: impl IntoIterator<Item = IpAddr>,
    ) {
        if self.first_id.is_none() {
            self.first_id = Some(id);
            self.conversations = Some(Vec::new());
            self.min_start_ns = start_ns;
            self.min_end_ns = end_ns;
            self.max_end_ns = end_ns;
        }
        self.last_id = id;
        self.min_start_ns = self.min_start_ns.min(start_ns);
        self.min_end_ns = self.min_end_ns.min(end_ns);
        self.max_end_ns = self.max_end_ns.max(end_ns);
        self.addrs.extend(addrs.into_iter().map(ip_key));
    }

    /// The conversation key of the sensor flow just added (`id`, after [`Chunk::add`]).
    pub fn conversation(&mut self, id: i64, key: u64) {
        let offset = self
            .first_id
            .and_then(|first| u32::try_from(id - first).ok());
        match (offset, self.conversations.as_mut()) {
            (Some(offset), Some(list)) => {
                list.extend_from_slice(&key.to_le_bytes());
                list.extend_from_slice(&offset.to_le_bytes());
            }
            _ => self.conversations = None,
        }
    }

    /// Writes the chunk's row (nothing if no flow was added).
    pub fn write(mut self, c: &Connection) -> rusqlite::Result<()> {
        let Some(first) = self.first_id else {
            return Ok(());
        };
        self.addrs.sort_unstable();
        self.addrs.dedup();
        let list: Vec<u8> = self.addrs.iter().flat_map(|a| a.to_be_bytes()).collect();
        c.prepare_cached(
            "INSERT INTO flow_chunks (first_id, last_id, min_end_ns, max_end_ns, addrs, \
             min_start_ns, tuples) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            first,
            self.last_id,
            self.min_end_ns,
            self.max_end_ns,
            list,
            self.min_start_ns,
            self.conversations
        ])?;
        Ok(())
    }
}

/// Whether a chunk's address list (None: flows stored before the index existed, which may
/// hold any address) may hold `ip`.
pub fn may_hold(addrs: Option<&[u8]>, ip: IpAddr) -> bool {
    let Some(addrs) = addrs else {
        return true;
    };
    let (list, rest) = addrs.as_chunks::<KEY>();
    !rest.is_empty() || list.binary_search(&ip_bytes(ip)).is_ok()
}

/// The id ranges and latest ends of the chunks that may hold `ip` among flows ending at or
/// after `since_ns` and at or before `until_end_ns`, latest end first.
pub fn ranges_holding(
    c: &Connection,
    ip: IpAddr,
    since_ns: Option<i64>,
    until_end_ns: Option<i64>,
) -> rusqlite::Result<Vec<(i64, i64, i64)>> {
    let mut st = c.prepare_cached(
        "SELECT first_id, last_id, max_end_ns, addrs FROM flow_chunks \
         WHERE (?1 IS NULL OR max_end_ns >= ?1) AND (?2 IS NULL OR min_end_ns <= ?2) \
         ORDER BY max_end_ns DESC, first_id DESC",
    )?;
    let mut out = Vec::new();
    let mut rows = st.query(params![since_ns, until_end_ns])?;
    while let Some(r) = rows.next()? {
        let addrs = r.get_ref(3)?.as_blob_or_null()?;
        if may_hold(addrs, ip) {
            out.push((r.get(0)?, r.get(1)?, r.get(2)?));
        }
    }
    Ok(out)
}

/// The (flow id, conversation key) entries of a chunk's list; a damaged tail is ignored.
pub fn conversations(first_id: i64, list: &[u8]) -> impl Iterator<Item = (i64, u64)> + '_ {
    list.as_chunks::<CONVERSATION>().0.iter().map(move |e| {
        let (k, off) = e.split_at(8);
        let key = u64::from_le_bytes(k.try_into().expect("8 bytes"));
        let off = u32::from_le_bytes(off.try_into().expect("4 bytes"));
        (first_id + i64::from(off), key)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conversation_has_one_key_either_way_round() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let k = conversation_key(ip("10.0.0.1"), 40000, ip("10.0.0.2"), 443, 6);
        assert_eq!(
            k,
            conversation_key(ip("10.0.0.2"), 443, ip("10.0.0.1"), 40000, 6)
        );
        assert_ne!(
            k,
            conversation_key(ip("10.0.0.1"), 40000, ip("10.0.0.2"), 443, 17)
        );
        assert_ne!(
            k,
            conversation_key(ip("10.0.0.1"), 40001, ip("10.0.0.2"), 443, 6)
        );
        assert_ne!(
            k,
            conversation_key(ip("10.0.0.1"), 443, ip("10.0.0.2"), 40000, 6)
        );
        assert_ne!(
            k,
            conversation_key(ip("2001:db8::1"), 40000, ip("10.0.0.2"), 443, 6)
        );
        // Stored on disk: the function must never change.
        assert_eq!(k, 0x44af_650b_e7ac_0a2f, "{k:#x}");
    }

    #[test]
    fn conversation_lists_give_ids_and_keys_in_order() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mut c = Chunk::default();
        c.add(7, 1, 2, [a]);
        c.conversation(7, 42);
        c.add(8, 1, 2, [a]);
        c.add(9, 0, 3, [a]);
        c.conversation(9, u64::MAX);
        let list = c.conversations.clone().expect("known");
        assert_eq!(list.len(), 2 * CONVERSATION);
        let got: Vec<_> = conversations(7, &list).collect();
        assert_eq!(got, [(7, 42), (9, u64::MAX)]);
        assert_eq!((c.min_start_ns, c.min_end_ns, c.max_end_ns), (0, 2, 3));
        // An id too far from the first: the list is no longer known.
        c.add(7 + (1 << 33), 1, 2, [a]);
        c.conversation(7 + (1 << 33), 1);
        assert!(c.conversations.is_none());
    }

    #[test]
    fn lists_are_searched_by_address_of_either_family() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let c: IpAddr = "10.0.0.2".parse().unwrap();
        let mut list = [ip_bytes(b), ip_bytes(a)];
        list.sort_unstable();
        let blob = list.as_flattened();
        assert!(may_hold(Some(blob), a));
        assert!(may_hold(Some(blob), b));
        assert!(!may_hold(Some(blob), c));
        assert!(!may_hold(Some(&[]), a));
        // Unknown contents: may hold anything.
        assert!(may_hold(None, c));
        // A damaged list (not whole keys) is never trusted to exclude.
        assert!(may_hold(Some(&blob[..20]), c));
    }
}
