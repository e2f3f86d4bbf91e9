//! The address index of raw flows, one row per insert: the ids a write gave its flows, their
//! time range, and the sorted distinct addresses they carry.
//!
//! A B-tree index on `src_ip` and `dst_ip` costs two inserts at random positions per flow,
//! which bounded the import at 45k records/s (README, performance). A chunk costs one row per
//! write; a lookup by address reads the chunks of the time range, keeps those whose address
//! list holds the address (binary search), and scans only their id ranges.

use std::net::IpAddr;

use rusqlite::{Connection, params};

/// Bytes per address in a chunk's list: IPv4 as its IPv4-mapped IPv6 form. (A real
/// `::ffff:a.b.c.d` address shares that key: a false match, which the scan filters out.)
const KEY: usize = 16;

pub fn key(ip: IpAddr) -> [u8; KEY] {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The addresses and time range of the flows one write stores.
#[derive(Default)]
pub struct Chunk {
    /// Keys as big-endian integers: they sort as the bytes do, and faster.
    addrs: Vec<u128>,
    min_end_ns: i64,
    max_end_ns: i64,
    first_id: Option<i64>,
    last_id: i64,
}

impl Chunk {
    /// One stored flow: its row id (ids of one write are contiguous) and what it carries.
    pub fn add(&mut self, id: i64, end_ns: i64, addrs: impl IntoIterator<Item = IpAddr>) {
        if self.first_id.is_none() {
            self.first_id = Some(id);
            self.min_end_ns = end_ns;
            self.max_end_ns = end_ns;
        }
        self.last_id = id;
        self.min_end_ns = self.min_end_ns.min(end_ns);
        self.max_end_ns = self.max_end_ns.max(end_ns);
        self.addrs
            .extend(addrs.into_iter().map(|a| u128::from_be_bytes(key(a))));
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
            "INSERT INTO flow_chunks (first_id, last_id, min_end_ns, max_end_ns, addrs) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            first,
            self.last_id,
            self.min_end_ns,
            self.max_end_ns,
            list
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
    !rest.is_empty() || list.binary_search(&key(ip)).is_ok()
}

/// The id ranges (newest first) of the chunks that may hold `ip` among flows ending at or
/// after `since_ns` with an id below `before_id`.
pub fn ranges_holding(
    c: &Connection,
    ip: IpAddr,
    since_ns: Option<i64>,
    before_id: Option<i64>,
) -> rusqlite::Result<Vec<(i64, i64)>> {
    let mut st = c.prepare_cached(
        "SELECT first_id, last_id, addrs FROM flow_chunks \
         WHERE (?1 IS NULL OR max_end_ns >= ?1) AND (?2 IS NULL OR first_id < ?2) \
         ORDER BY first_id DESC",
    )?;
    let mut out = Vec::new();
    let mut rows = st.query(params![since_ns, before_id])?;
    while let Some(r) = rows.next()? {
        let addrs = r.get_ref(2)?.as_blob_or_null()?;
        if may_hold(addrs, ip) {
            out.push((r.get(0)?, r.get(1)?));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_searched_by_address_of_either_family() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let c: IpAddr = "10.0.0.2".parse().unwrap();
        let mut list = [key(b), key(a)];
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
