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

use super::import::Importer;
use crate::{
    cloud::read::{Summary, open_input},
    detect::Config,
    model::{ImportedFile, Source},
    store::Stores,
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
    /// (size, mtime) of files at the previous scan.
    seen: HashMap<PathBuf, (u64, SystemTime)>,
    /// The import pipeline, whose detectors follow scans and baselines across the files.
    importer: Importer,
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
    /// Creates the provider subdirectories if they are missing; `sampling_rate` is the GCP
    /// subnets'.
    pub fn new(
        root: &Path,
        stores: Stores,
        config: &Config,
        sampling_rate: f64,
    ) -> anyhow::Result<Self> {
        for (sub, _) in PROVIDERS {
            let d = root.join(sub);
            std::fs::create_dir_all(&d)
                .with_context(|| format!("creating the watched directory {}", d.display()))?;
        }
        Ok(Watcher {
            root: root.to_path_buf(),
            seen: HashMap::new(),
            importer: Importer::new(stores, config, sampling_rate)?,
        })
    }

    /// One pass over the subdirectories: imports the files that stayed unchanged since the last
    /// pass. A file that fails (unreadable) stays and is tried again.
    pub fn scan(&mut self) -> Vec<(PathBuf, Outcome)> {
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
                match self.import(provider, &path) {
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

    fn import(&mut self, provider: Source, path: &Path) -> anyhow::Result<Outcome> {
        let (sha256, bytes) = sha256_file(path)?;
        let name = path
            .file_name()
            .context("a file name")?
            .to_string_lossy()
            .to_string();
        let file = ImportedFile {
            sha256,
            provider,
            name,
            bytes,
        };
        let label = path.display().to_string();
        let mut sum = Summary::default();
        let input = open_input(path)?;
        let imported = self
            .importer
            .import(provider, input, &label, Some(&file), &mut sum)?;
        let to = move_into(
            path,
            &path.parent().context("a directory")?.join("imported"),
        )?;
        Ok(if imported.stored {
            info!(file = %label, moved_to = %to.display(), summary = %sum, "imported");
            Outcome::Imported(sum)
        } else {
            info!(file = %label, moved_to = %to.display(), "already imported (same content): not imported again");
            Outcome::Duplicate
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FlowStore as _, SqliteStore};

    const AWS: &str = "\
2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249 1418530010 1418530070 ACCEPT OK
2 123456789010 eni-1235b8ca123456789 172.31.9.69 172.31.9.12 49761 3389 6 20 4249 1418530010 1418530070 REJECT OK
";

    #[test]
    fn a_file_is_imported_once_when_stable_then_moved() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = SqliteStore::open(&tmp.path().join("data")).expect("store");
        let root = tmp.path().join("incoming");
        let mut w = Watcher::new(&root, Stores::of(store.clone()), &Config::default(), 0.5)
            .expect("watcher");
        assert!(root.join("gcp").is_dir() && root.join("azure").is_dir());
        std::fs::write(root.join("aws/a.log"), AWS).expect("write");
        std::fs::write(root.join("aws/.b.log"), AWS).expect("write");
        std::fs::write(root.join("aws/c.log.part"), AWS).expect("write");
        // First sight: not yet known to be complete.
        assert!(w.scan().is_empty());
        let done = w.scan();
        assert_eq!(done.len(), 1, "{done:?}");
        assert!(matches!(&done[0].1, Outcome::Imported(s) if s.stored == 2));
        assert!(root.join("aws/imported/a.log").is_file());
        assert!(!root.join("aws/a.log").exists());
        assert!(root.join("aws/.b.log").exists() && root.join("aws/c.log.part").exists());
        assert_eq!(store.source_totals(Source::Aws).expect("totals").records, 2);

        // The same content again under another name (a re-delivery): recognised, not stored.
        std::fs::write(root.join("aws/again.log"), AWS).expect("write");
        w.scan();
        let done = w.scan();
        assert_eq!(done, vec![(root.join("aws/again.log"), Outcome::Duplicate)]);
        assert_eq!(store.source_totals(Source::Aws).expect("totals").records, 2);
        assert!(root.join("aws/imported/again.log").is_file());

        // A restart (a new watcher, the same store) with a file whose move was cut short.
        std::fs::write(root.join("aws/a.log"), AWS).expect("write");
        let mut w = Watcher::new(&root, Stores::of(store.clone()), &Config::default(), 0.5)
            .expect("watcher");
        w.scan();
        let done = w.scan();
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
        let flow = crate::cloud::flows::aws_flow(
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
