//! The on-disk spool: every batch is written here before it is sent and deleted only when the
//! control plane acknowledges it, so neither an unreachable control plane nor a crash of the agent
//! loses records, and batches are replayed in order. Bounded: when full, the oldest batches go,
//! and counters say how many batches and records.
//!
//! Layout of the directory: `instance_id` (random, made once: names this installation's batches),
//! `last_batch_id` (so ids never repeat, even after the spool emptied), and one
//! `<batch id, 20 digits>-<records>.batch` file per batch (a protobuf `ExportBatch`), written to a
//! temporary name, synced, then renamed into place.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use picket_proto::v1::ExportBatch;
use prost::Message as _;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    pub batches: u64,
    pub bytes: u64,
    pub dropped_batches: u64,
    pub dropped_records: u64,
    pub appended: u64,
    pub acknowledged: u64,
}

struct Entry {
    path: PathBuf,
    bytes: u64,
    records: u64,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    instance_id: String,
    last_id: u64,
    entries: BTreeMap<u64, Entry>,
    stats: SpoolStats,
}

fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, keeping at most `max_bytes` of batches.
    pub fn open(dir: &Path, max_bytes: u64) -> anyhow::Result<Spool> {
        fs::create_dir_all(dir)
            .with_context(|| format!("creating the spool directory {}", dir.display()))?;
        let id_path = dir.join("instance_id");
        let instance_id = match fs::read_to_string(&id_path) {
            Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
            _ => {
                let mut b = [0u8; 16];
                getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
                let id: String = b.iter().map(|x| format!("{x:02x}")).collect();
                write_atomically(&id_path, id.as_bytes())
                    .with_context(|| format!("writing {}", id_path.display()))?;
                id
            }
        };
        let mut last_id = fs::read_to_string(dir.join("last_batch_id"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0u64);
        let mut entries = BTreeMap::new();
        let mut torn = (0u64, 0u64);
        for e in fs::read_dir(dir)? {
            let path = e?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some(stem) = name.strip_suffix(".tmp") {
                // A batch whose write the agent did not live to finish: its records are gone
                // (the kernel tables they came from were drained). Counted, then removed.
                torn.0 += 1;
                torn.1 += stem
                    .split_once('-')
                    .and_then(|(_, n)| n.parse::<u64>().ok())
                    .unwrap_or(0);
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(stem) = name.strip_suffix(".batch") else {
                continue;
            };
            let Some((id, records)) = stem.split_once('-') else {
                continue;
            };
            let (Ok(id), Ok(records)) = (id.parse::<u64>(), records.parse::<u64>()) else {
                continue;
            };
            let bytes = fs::metadata(&path)?.len();
            last_id = last_id.max(id);
            entries.insert(
                id,
                Entry {
                    path,
                    bytes,
                    records,
                },
            );
        }
        let mut s = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            instance_id,
            last_id,
            entries,
            stats: SpoolStats::default(),
        };
        s.stats.batches = s.entries.len() as u64;
        (s.stats.dropped_batches, s.stats.dropped_records) = torn;
        if torn.0 > 0 {
            tracing::warn!(
                batches = torn.0,
                records = torn.1,
                "the spool held batches whose writing was interrupted (agent crash): counted as dropped"
            );
        }
        s.stats.bytes = s.entries.values().map(|e| e.bytes).sum();
        s.enforce_limit()?;
        Ok(s)
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    pub fn stats(&self) -> SpoolStats {
        self.stats
    }

    /// Ids must keep increasing across restarts: the control plane remembers which it stored.
    pub fn ids_after(&mut self, stored: u64) -> anyhow::Result<()> {
        if stored > self.last_id {
            self.last_id = stored;
            self.save_last_id()?;
        }
        Ok(())
    }

    fn save_last_id(&self) -> anyhow::Result<()> {
        write_atomically(
            &self.dir.join("last_batch_id"),
            self.last_id.to_string().as_bytes(),
        )
        .context("writing the spool's last_batch_id")
    }

    /// Gives `batch` the next id, writes it durably and returns the id.
    pub fn append(&mut self, mut batch: ExportBatch) -> anyhow::Result<u64> {
        self.last_id += 1;
        let id = self.last_id;
        batch.batch_id = id;
        batch.instance_id = self.instance_id.clone();
        let records =
            (batch.flows.len() + batch.scans.len() + batch.probes.len() + batch.auth.len()) as u64;
        let data = batch.encode_to_vec();
        let path = self.dir.join(format!("{id:020}-{records}.batch"));
        self.save_last_id()?;
        write_atomically(&path, &data)
            .with_context(|| format!("writing spool file {}", path.display()))?;
        let bytes = data.len() as u64;
        self.entries.insert(
            id,
            Entry {
                path,
                bytes,
                records,
            },
        );
        self.stats.batches += 1;
        self.stats.bytes += bytes;
        self.stats.appended += 1;
        self.enforce_limit()?;
        Ok(id)
    }

    /// Drops the oldest batches while the spool is over its size (the newest always stays).
    fn enforce_limit(&mut self) -> anyhow::Result<()> {
        while self.stats.bytes > self.max_bytes && self.entries.len() > 1 {
            let (_, e) = self.entries.pop_first().expect("not empty");
            fs::remove_file(&e.path)
                .with_context(|| format!("removing spool file {}", e.path.display()))?;
            self.stats.batches -= 1;
            self.stats.bytes -= e.bytes;
            self.stats.dropped_batches += 1;
            self.stats.dropped_records += e.records;
        }
        Ok(())
    }

    /// The id of the first batch after `after` still in the spool.
    pub fn next_after(&self, after: u64) -> Option<u64> {
        self.entries.range(after + 1..).next().map(|(id, _)| *id)
    }

    pub fn first(&self) -> Option<u64> {
        self.entries.keys().next().copied()
    }

    pub fn read(&self, id: u64) -> anyhow::Result<Option<ExportBatch>> {
        let Some(e) = self.entries.get(&id) else {
            return Ok(None);
        };
        let data = fs::read(&e.path).with_context(|| format!("reading {}", e.path.display()))?;
        Ok(Some(ExportBatch::decode(data.as_slice()).with_context(
            || format!("spool file {} is corrupt", e.path.display()),
        )?))
    }

    /// The control plane has stored batch `id` (and, acknowledging in order, nothing before it is
    /// still needed by it): delete its file.
    pub fn ack(&mut self, id: u64) -> anyhow::Result<()> {
        if let Some(e) = self.entries.remove(&id) {
            fs::remove_file(&e.path)
                .with_context(|| format!("removing spool file {}", e.path.display()))?;
            self.stats.batches -= 1;
            self.stats.bytes -= e.bytes;
            self.stats.acknowledged += 1;
        }
        Ok(())
    }

    /// Acknowledges every batch up to and including `id` (the control plane said it has them).
    pub fn ack_through(&mut self, id: u64) -> anyhow::Result<()> {
        let done: Vec<u64> = self.entries.range(..=id).map(|(k, _)| *k).collect();
        for k in done {
            self.ack(k)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use picket_proto::v1::FlowRecord;

    use super::*;

    fn batch(n: usize) -> ExportBatch {
        ExportBatch {
            flows: vec![
                FlowRecord {
                    packets: 1,
                    ..Default::default()
                };
                n
            ],
            ..Default::default()
        }
    }

    #[test]
    fn batches_survive_a_restart_in_order_with_new_ids_after_them() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = Spool::open(dir.path(), 1 << 20).expect("open");
        let inst = s.instance_id().to_string();
        assert_eq!(s.append(batch(2)).expect("append"), 1);
        assert_eq!(s.append(batch(3)).expect("append"), 2);
        s.ack(1).expect("ack");
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(s.instance_id(), inst, "same installation");
        assert_eq!(s.first(), Some(2));
        let b = s.read(2).expect("read").expect("present");
        assert_eq!((b.batch_id, b.flows.len()), (2, 3));
        assert_eq!(b.instance_id, inst);
        s.ack(2).expect("ack");
        drop(s);
        // Empty now, but ids do not start over.
        let mut s = Spool::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(s.first(), None);
        assert_eq!(s.append(batch(1)).expect("append"), 3);
        // The control plane may know of later ids (a spool wiped by hand).
        s.ids_after(10).expect("ids");
        assert_eq!(s.append(batch(1)).expect("append"), 11);
    }

    #[test]
    fn a_full_spool_drops_its_oldest_batches_and_counts_them() {
        let dir = tempfile::tempdir().expect("tmp");
        let one = batch(100).encode_to_vec().len() as u64 + 64;
        let mut s = Spool::open(dir.path(), one * 3).expect("open");
        for _ in 0..5 {
            s.append(batch(100)).expect("append");
        }
        let st = s.stats();
        assert_eq!(st.dropped_batches, 2);
        assert_eq!(st.dropped_records, 200);
        assert_eq!(st.batches, 3);
        assert_eq!(s.first(), Some(3), "the oldest went");
        assert_eq!(s.next_after(3), Some(4));
        s.ack_through(4).expect("ack");
        assert_eq!(s.first(), Some(5));
        assert_eq!(s.stats().acknowledged, 2);
    }

    #[test]
    fn debris_of_an_interrupted_write_is_removed() {
        let dir = tempfile::tempdir().expect("tmp");
        fs::write(dir.path().join("00000000000000000001-5.tmp"), b"half").expect("w");
        let s = Spool::open(dir.path(), 1 << 20).expect("open");
        assert_eq!(s.first(), None);
        assert!(!dir.path().join("00000000000000000001-5.tmp").exists());
        assert_eq!(
            (s.stats().dropped_batches, s.stats().dropped_records),
            (1, 5)
        );
    }
}
