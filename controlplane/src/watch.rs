//! The watched import directory (`serve --watch-dir DIR`): files dropped into `DIR/aws`,
//! `DIR/gcp` or `DIR/azure` are imported exactly once, also across restarts.
//!
//! A file is taken once its size and modification time have not changed between two scans
//! (names starting with `.` or ending in `.tmp` / `.part` are being written and wait). Its
//! flows and its record (SHA-256 of the content) commit in one transaction, so a crash imports
//! it completely or not at all, and a file seen again, under any name, is not imported twice.
//! Then it moves to `imported/` beside it; a file whose move was cut short by a crash is found
//! again, recognised by its digest, and moved.

use std::{
    collections::HashMap,
    io::Read as _,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};
use tracing::{info, warn};

use crate::{
    detect::{Config, Detectors, Feed, Input},
    import::{self, Summary},
    model::{ImportedFile, Source},
    store::Store,
};

/// Subdirectories watched, by provider.
pub const PROVIDERS: [(&str, Source); 3] = [
    ("aws", Source::Aws),
    ("gcp", Source::Gcp),
    ("azure", Source::Azure),
];

/// What happened to a file in a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Imported(Summary),
    /// Its content was imported before (under this or another name).
    Duplicate,
}

pub struct Watcher {
    root: PathBuf,
    sampling_rate: f64,
    /// (size, mtime) of files at the previous scan.
    seen: HashMap<PathBuf, (u64, SystemTime)>,
    /// Scans and sweeps across the files, in data time (loaded from the store at the first
    /// scan: the slow-scan walks persist).
    detector: Option<Detectors>,
    /// The geo detector's learning period.
    pub learning_ns: i64,
}

fn being_written(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".part")
}

fn sha256_file(path: &Path) -> anyhow::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((hex, n))
}

/// Moves `path` into `dir`, keeping its name unless one is there already.
fn move_into(path: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().context("a file name")?;
    let mut to = dir.join(name);
    let mut k = 1;
    while to.exists() {
        to = dir.join(format!("{}.{k}", name.to_string_lossy()));
        k += 1;
    }
    std::fs::rename(path, &to)
        .with_context(|| format!("moving {} to {}", path.display(), to.display()))?;
    Ok(to)
}

impl Watcher {
    /// Creates the provider subdirectories if they are missing.
    pub fn new(root: &Path, sampling_rate: f64) -> anyhow::Result<Self> {
        for (sub, _) in PROVIDERS {
            let d = root.join(sub);
            std::fs::create_dir_all(&d)
                .with_context(|| format!("creating the watched directory {}", d.display()))?;
        }
        Ok(Watcher {
            root: root.to_path_buf(),
            sampling_rate,
            seen: HashMap::new(),
            detector: None,
            learning_ns: crate::detect::novelty::LEARNING_NS,
        })
    }

    /// One pass over the subdirectories: imports the files that stayed unchanged since the last
    /// pass. A file that fails (unreadable) stays and is tried again.
    pub fn scan(&mut self, store: &dyn Store, now_ns: i64) -> Vec<(PathBuf, Outcome)> {
        let mut done = Vec::new();
        let mut now_seen = HashMap::new();
        for (sub, provider) in PROVIDERS {
            let dir = self.root.join(sub);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .filter(|e| !being_written(&e.file_name().to_string_lossy()))
                .map(|e| e.path())
                .collect();
            files.sort();
            for path in files {
                let Ok(m) = std::fs::metadata(&path) else {
                    continue;
                };
                let stamp = (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH));
                let stable = self.seen.get(&path) == Some(&stamp);
                now_seen.insert(path.clone(), stamp);
                if !stable {
                    continue;
                }
                match self.import(store, provider, &path, now_ns) {
                    Ok(outcome) => {
                        now_seen.remove(&path);
                        done.push((path, outcome));
                    }
                    Err(e) => {
                        warn!(file = %path.display(), error = %format!("{e:#}"), "import failed; will retry")
                    }
                }
            }
        }
        self.seen = now_seen;
        done
    }

    fn import(
        &mut self,
        store: &dyn Store,
        provider: Source,
        path: &Path,
        now_ns: i64,
    ) -> anyhow::Result<Outcome> {
        let (sha256, bytes) = sha256_file(path)?;
        let name = path
            .file_name()
            .context("a file name")?
            .to_string_lossy()
            .to_string();
        let file = ImportedFile {
            sha256,
            provider,
            name: name.clone(),
            bytes,
        };
        let mut sum = Summary::default();
        let mut range = None;
        let mut updates = Vec::new();
        let label = path.display().to_string();
        if self.detector.is_none() {
            let config = Config {
                learning_ns: self.learning_ns,
            };
            self.detector = Some(Detectors::load(Feed::Import, &config, store)?);
        }
        let rate = self.sampling_rate;
        let detector = self.detector.as_mut().expect("loaded above");
        let stored = store.import_file_once(&file, now_ns, &mut |sink| {
            sum = Summary::default();
            range = None;
            let input = import::open_input(path)?;
            import::import_inspecting(
                provider,
                input,
                &label,
                rate,
                &mut |flows| updates.extend(detector.observe(&Input::flows(flows))),
                &mut import::tracking(sink, &mut range),
                &mut sum,
            )?;
            Ok(serde_json::json!({
                "read": sum.read,
                "stored": sum.stored,
                "rejected": sum.rejected,
                "nodata": sum.nodata,
                "skipdata": sum.skipdata,
            })
            .to_string())
        });
        updates.extend(detector.flush());
        // What the detector found is evidence even when the file fails midway and is retried:
        // the detector remembers what it reported, so a retry would not report it again.
        crate::alerts::record(store, &updates)?;
        detector.save(store)?;
        let stored = stored?;
        if let (Some(_), Some((a, b))) = (&stored, range) {
            store.correlate(a, b, import::CORRELATION_TOLERANCE_NS)?;
        }

        let to = move_into(
            path,
            &path.parent().context("a directory")?.join("imported"),
        )?;
        Ok(match stored {
            Some(_) => {
                info!(file = %label, moved_to = %to.display(), summary = %sum, "imported");
                Outcome::Imported(sum)
            }
            None => {
                info!(file = %label, moved_to = %to.display(), "already imported (same content): not imported again");
                Outcome::Duplicate
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    const AWS: &str = "\
2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249 1418530010 1418530070 ACCEPT OK
2 123456789010 eni-1235b8ca123456789 172.31.9.69 172.31.9.12 49761 3389 6 20 4249 1418530010 1418530070 REJECT OK
";

    #[test]
    fn a_file_is_imported_once_when_stable_then_moved() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = SqliteStore::open(&tmp.path().join("data")).expect("store");
        let root = tmp.path().join("incoming");
        let mut w = Watcher::new(&root, 0.5).expect("watcher");
        assert!(root.join("gcp").is_dir() && root.join("azure").is_dir());
        std::fs::write(root.join("aws/a.log"), AWS).expect("write");
        std::fs::write(root.join("aws/.b.log"), AWS).expect("write");
        std::fs::write(root.join("aws/c.log.part"), AWS).expect("write");
        // First sight: not yet known to be complete.
        assert!(w.scan(store.as_ref(), 1).is_empty());
        let done = w.scan(store.as_ref(), 2);
        assert_eq!(done.len(), 1, "{done:?}");
        assert!(matches!(&done[0].1, Outcome::Imported(s) if s.stored == 2));
        assert!(root.join("aws/imported/a.log").is_file());
        assert!(!root.join("aws/a.log").exists());
        assert!(root.join("aws/.b.log").exists() && root.join("aws/c.log.part").exists());
        assert_eq!(store.source_totals(Source::Aws).expect("totals").records, 2);

        // The same content again under another name (a re-delivery): recognised, not stored.
        std::fs::write(root.join("aws/again.log"), AWS).expect("write");
        w.scan(store.as_ref(), 3);
        let done = w.scan(store.as_ref(), 4);
        assert_eq!(done, vec![(root.join("aws/again.log"), Outcome::Duplicate)]);
        assert_eq!(store.source_totals(Source::Aws).expect("totals").records, 2);
        assert!(root.join("aws/imported/again.log").is_file());

        // A restart (a new watcher, the same store) with a file whose move was cut short.
        std::fs::write(root.join("aws/a.log"), AWS).expect("write");
        let mut w = Watcher::new(&root, 0.5).expect("watcher");
        w.scan(store.as_ref(), 5);
        let done = w.scan(store.as_ref(), 6);
        assert_eq!(done, vec![(root.join("aws/a.log"), Outcome::Duplicate)]);
        assert!(root.join("aws/imported/a.log.1").is_file());
        assert_eq!(store.source_totals(Source::Aws).expect("totals").records, 2);
    }

    #[test]
    fn an_import_that_fails_midway_stores_nothing_and_is_retried() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = SqliteStore::open(tmp.path()).expect("store");
        let file = ImportedFile {
            sha256: "ab".repeat(32),
            provider: Source::Aws,
            name: "x.log".into(),
            bytes: 10,
        };
        let flow = crate::import::aws_flow(
            &crate::cloud::aws::parse(
                &crate::cloud::aws::Format::default(),
                AWS.lines().next().expect("line"),
            )
            .expect("record"),
        );
        let r = store.import_file_once(&file, 1, &mut |sink| {
            sink(std::slice::from_ref(&flow))?;
            anyhow::bail!("the disk went away")
        });
        assert!(r.is_err());
        assert_eq!(store.source_totals(Source::Aws).expect("totals").records, 0);
        let r = store
            .import_file_once(&file, 2, &mut |sink| {
                sink(std::slice::from_ref(&flow))?;
                Ok("{}".into())
            })
            .expect("retry");
        assert_eq!(r.as_deref(), Some("{}"));
        assert_eq!(store.source_totals(Source::Aws).expect("totals").records, 1);
        let again = store
            .import_file_once(&file, 3, &mut |_| panic!("not called for a known file"))
            .expect("known");
        assert_eq!(again, None);
    }
}
