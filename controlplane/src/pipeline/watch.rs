//! The watched import directory (`serve --watch-dir DIR`): files dropped into `DIR/aws`,
//! `DIR/gcp` or `DIR/azure` are imported exactly once, also across restarts.
//!
//! A file is taken once its size and modification time have not changed between two scans
//! (names starting with `.` or ending in `.tmp` / `.part` are being written and wait). Its
//! flows and its record (SHA-256 of the content) commit in one transaction, so a crash imports
//! it completely or not at all, and a file seen again, under any name, is not imported twice.
//! Then it moves to `imported/` beside it; a file whose move was cut short by a crash is found
//! again, recognised by its digest, and moved. A file that cannot be read, or is over a limit
//! (`cloud::read`), moves to `failed/` instead: it is not tried again at every scan or start.
//!
//! The directory is confined: each provider directory is opened without following a symbolic
//! link, and files are listed, opened, hashed and moved relative to that open directory
//! (`openat`, `renameat2`), never through a link. A link in place of a provider directory, a
//! file, `imported/` or `failed/` is refused with one log line.
//!
//! In cluster mode a file is handed to the replicas through the bus instead
//! ([`super::import_jobs`]) and moves once the replica that imports it says what became of it.

use std::{
    collections::{HashMap, HashSet},
    ffi::{OsStr, OsString},
    fs::File,
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use nix::{
    fcntl::{OFlag, RenameFlags, openat, renameat2},
    sys::stat::{FileStat, Mode, SFlag, fstat, fstatat, mkdirat},
};
use tracing::{info, warn};

use super::import::{Importer, digest};
use crate::{
    cloud::read::{Summary, decoding, is_input_error},
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
    /// It could not be read or is over a limit: moved to `failed/`, with the reason.
    Failed(String),
    /// Cluster mode: imported by a replica, with its summary.
    ImportedBy {
        replica: String,
        summary: String,
    },
}

/// Where the files go.
#[expect(clippy::large_enum_variant, reason = "one per watcher, never moved")]
enum Sink {
    /// This process's import pipeline, whose detectors follow scans and baselines across the
    /// files.
    Local(Importer),
    /// Cluster mode: handed to the replicas through the bus, then waited for.
    Bus {
        bus: crate::bus::Bus,
        rt: tokio::runtime::Handle,
        sampling_rate: f64,
        from: String,
    },
}

/// How long a file handed to the cluster is waited for before it is handed over again at a
/// later scan (which the flow store then answers as imported before, if it was).
const WAIT_FOR_IMPORT: std::time::Duration = std::time::Duration::from_secs(600);

pub struct Watcher {
    root: PathBuf,
    /// (size, mtime) of files at the previous scan, by provider directory and name.
    seen: HashMap<(&'static str, OsString), (i64, i64, i64)>,
    /// Files that could not be moved out (a link in place of `imported/`...): left alone, and
    /// reported once.
    stuck: HashSet<(&'static str, OsString)>,
    /// Provider directories found to be links, reported once.
    refused: HashSet<&'static str>,
    /// Decompressed bytes read from one file at most.
    max_file_bytes: u64,
    sink: Sink,
}

fn being_written(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".part")
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Opens directory `name` in `dir` (created if missing), refusing a symbolic link.
fn open_dir_in(dir: BorrowedFd<'_>, name: &str) -> anyhow::Result<OwnedFd> {
    match mkdirat(dir, name, Mode::from_bits_truncate(0o750)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(e).with_context(|| format!("creating {name}/")),
    }
    openat(dir, name, DIR_FLAGS, Mode::empty()).map_err(|e| match e {
        nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR => {
            anyhow::anyhow!("{name}/ is a symbolic link or not a directory: refused")
        }
        e => anyhow::anyhow!("opening {name}/: {e}"),
    })
}

fn is_regular(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
}

/// Moves `name` from `dir` into its subdirectory `sub`, keeping the name unless one is there
/// already; returns the name it got.
fn move_into(dir: BorrowedFd<'_>, name: &OsStr, sub: &str) -> anyhow::Result<OsString> {
    let to_dir = open_dir_in(dir, sub)?;
    let mut to = name.to_os_string();
    for k in 1..10_000 {
        match renameat2(
            dir,
            name,
            to_dir.as_fd(),
            to.as_os_str(),
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => return Ok(to),
            Err(nix::errno::Errno::EEXIST) => {
                to = name.to_os_string();
                to.push(format!(".{k}"));
            }
            Err(e) => return Err(e).with_context(|| format!("moving into {sub}/")),
        }
    }
    anyhow::bail!("10,000 files of that name in {sub}/ already")
}

impl Watcher {
    /// Creates the provider subdirectories if they are missing; `sampling_rate` is the GCP
    /// subnets'; `max_file_bytes` bounds what is read of one file once decompressed.
    pub fn new(
        root: &Path,
        stores: Stores,
        config: &Config,
        sampling_rate: f64,
        max_file_bytes: u64,
    ) -> anyhow::Result<Self> {
        let importer = Importer::new(stores, config, sampling_rate)?;
        Self::with(root, Sink::Local(importer), max_file_bytes)
    }

    /// Cluster mode: each file handed to the replicas through `bus` (calls through `rt`),
    /// from replica `replica`.
    pub fn handing_over(
        root: &Path,
        bus: crate::bus::Bus,
        rt: tokio::runtime::Handle,
        replica: &str,
        sampling_rate: f64,
        max_file_bytes: u64,
    ) -> anyhow::Result<Self> {
        let sink = Sink::Bus {
            bus,
            rt,
            sampling_rate,
            from: format!("the watched directory of {replica}"),
        };
        Self::with(root, sink, max_file_bytes)
    }

    fn with(root: &Path, sink: Sink, max_file_bytes: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("creating the watched directory {}", root.display()))?;
        let top = nix::fcntl::open(root, DIR_FLAGS.difference(OFlag::O_NOFOLLOW), Mode::empty())
            .with_context(|| format!("opening the watched directory {}", root.display()))?;
        for (sub, _) in PROVIDERS {
            open_dir_in(top.as_fd(), sub)
                .with_context(|| format!("the watched directory {}", root.display()))?;
        }
        Ok(Watcher {
            root: root.to_path_buf(),
            seen: HashMap::new(),
            stuck: HashSet::new(),
            refused: HashSet::new(),
            max_file_bytes,
            sink,
        })
    }

    /// One pass over the subdirectories: imports the files that stayed unchanged since the last
    /// pass. A file that fails for the store's sake (not its own) stays and is tried again.
    pub fn scan(&mut self) -> Vec<(PathBuf, Outcome)> {
        let mut done = Vec::new();
        let mut now_seen = HashMap::new();
        let top = match nix::fcntl::open(
            &self.root,
            DIR_FLAGS.difference(OFlag::O_NOFOLLOW),
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(e) => {
                warn!(dir = ?self.root, error = %e, "cannot open the watched directory");
                return done;
            }
        };
        for (sub, provider) in PROVIDERS {
            let dir = match openat(top.as_fd(), sub, DIR_FLAGS, Mode::empty()) {
                Ok(d) => d,
                Err(e) => {
                    if self.refused.insert(sub) {
                        warn!(
                            dir = ?self.root.join(sub),
                            error = %e,
                            "not watched: not a directory, or a symbolic link (refused)"
                        );
                    }
                    continue;
                }
            };
            self.refused.remove(sub);
            let listing = format!("/proc/self/fd/{}", dir.as_raw_fd());
            let Ok(entries) = std::fs::read_dir(&listing) else {
                continue;
            };
            let mut names: Vec<OsString> = entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name())
                .filter(|n| !being_written(n))
                .collect();
            names.sort();
            for name in names {
                let key = (sub, name.clone());
                if self.stuck.contains(&key) {
                    continue;
                }
                let Ok(st) = fstatat(
                    dir.as_fd(),
                    name.as_os_str(),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                ) else {
                    continue;
                };
                if !is_regular(&st) {
                    continue;
                }
                let stamp = (st.st_size, st.st_mtime, st.st_mtime_nsec);
                let stable = self.seen.get(&key) == Some(&stamp);
                now_seen.insert(key.clone(), stamp);
                if !stable {
                    continue;
                }
                let path = self.root.join(sub).join(&name);
                match self.import(provider, dir.as_fd(), &name, &path) {
                    Ok(outcome) => {
                        now_seen.remove(&key);
                        done.push((path, outcome));
                    }
                    Err(e) => {
                        warn!(file = ?path, error = ?format!("{e:#}"), "import failed; will retry")
                    }
                }
            }
        }
        self.seen = now_seen;
        done
    }

    fn import(
        &mut self,
        provider: Source,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
    ) -> anyhow::Result<Outcome> {
        let label = path.display().to_string();
        let fd = openat(
            dir,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .with_context(|| format!("opening {label:?}"))?;
        if !is_regular(&fstat(fd.as_fd())?) {
            anyhow::bail!("{label:?} is not a regular file");
        }
        let mut f = File::from(fd);
        let (sha256, bytes) = digest(&mut f)?;
        let file = ImportedFile {
            delivered_ns: super::import::delivered_ns(&f),
            sha256,
            provider,
            name: name.to_string_lossy().into_owned(),
            bytes,
        };
        let (sub, outcome) = match &mut self.sink {
            Sink::Local(importer) => {
                let mut sum = Summary::default();
                let imported = decoding(Box::new(f), self.max_file_bytes).and_then(|input| {
                    importer.import(provider, input, &label, Some(&file), &mut sum)
                });
                match imported {
                    Ok(i) if i.stored => ("imported", Outcome::Imported(sum)),
                    Ok(_) => ("imported", Outcome::Duplicate),
                    Err(e) if is_input_error(&e) => ("failed", Outcome::Failed(format!("{e:#}"))),
                    Err(e) => return Err(e),
                }
            }
            Sink::Bus {
                bus,
                rt,
                sampling_rate,
                from,
            } => {
                if file.bytes > self.max_file_bytes {
                    (
                        "failed",
                        Outcome::Failed(format!(
                            "over the {} MiB limit",
                            self.max_file_bytes >> 20
                        )),
                    )
                } else {
                    let job = super::import_jobs::Job {
                        provider: provider_dir(provider).into(),
                        name: file.name.clone(),
                        sha256: file.sha256.clone(),
                        bytes: file.bytes,
                        sampling_rate: *sampling_rate,
                        from: from.clone(),
                        delivered_ns: file.delivered_ns,
                    };
                    let o = rt.block_on(super::import_jobs::hand_over_and_wait(
                        bus,
                        f,
                        &job,
                        WAIT_FOR_IMPORT,
                    ))?;
                    match o {
                        o if o.error.is_some() => {
                            ("failed", Outcome::Failed(o.error.unwrap_or_default()))
                        }
                        o if !o.stored => ("imported", Outcome::Duplicate),
                        o => (
                            "imported",
                            Outcome::ImportedBy {
                                replica: o.replica,
                                summary: o.summary,
                            },
                        ),
                    }
                }
            }
        };
        let moved = move_into(dir, name, sub).map_err(|e| {
            self.stuck
                .insert((provider_dir(provider), name.to_os_string()));
            warn!(
                file = ?label,
                error = ?format!("{e:#}"),
                "cannot move the file out of the watched directory; it stays and is not looked at again until a restart"
            );
            e
        });
        let to = moved.map_or_else(
            |_| "(not moved)".into(),
            |n| format!("{sub}/{}", n.to_string_lossy()),
        );
        match &outcome {
            Outcome::Imported(sum) => {
                info!(file = ?label, moved_to = ?to, summary = %sum, "imported")
            }
            Outcome::ImportedBy { replica, summary } => {
                info!(file = ?label, moved_to = ?to, replica, summary, "imported by the cluster")
            }
            Outcome::Duplicate => info!(
                file = ?label,
                moved_to = ?to,
                "already imported (same content): not imported again"
            ),
            Outcome::Failed(why) => warn!(
                file = ?label,
                moved_to = ?to,
                error = ?why,
                "not imported: the file cannot be read or is over a limit"
            ),
        }
        Ok(outcome)
    }
}

fn provider_dir(p: Source) -> &'static str {
    PROVIDERS
        .iter()
        .find(|(_, s)| *s == p)
        .map_or("?", |(d, _)| d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FlowStore as _, SqliteStore};
    use std::sync::Arc;

    const AWS: &str = "\
2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249 1418530010 1418530070 ACCEPT OK
2 123456789010 eni-1235b8ca123456789 172.31.9.69 172.31.9.12 49761 3389 6 20 4249 1418530010 1418530070 REJECT OK
";

    #[test]
    fn a_file_is_imported_once_when_stable_then_moved() {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = SqliteStore::open(&tmp.path().join("data")).expect("store");
        let root = tmp.path().join("incoming");
        let mut w = watcher(&root, &store, crate::cloud::read::DEFAULT_MAX_FILE_BYTES);
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
        let mut w = watcher(&root, &store, crate::cloud::read::DEFAULT_MAX_FILE_BYTES);
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
            delivered_ns: 1,
        };
        let flow = crate::cloud::flows::aws_flow(
            &crate::cloud::aws::parse(
                &crate::cloud::aws::Format::default(),
                AWS.lines().next().expect("line"),
            )
            .expect("record"),
            1,
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

    fn watcher(root: &Path, store: &Arc<SqliteStore>, max: u64) -> Watcher {
        Watcher::new(
            root,
            Stores::of(store.clone()),
            &Config::default(),
            0.5,
            max,
        )
        .expect("watcher")
    }

    /// Two scans: the first sees the files, the second takes those that did not change.
    fn settle(w: &mut Watcher) -> Vec<(PathBuf, Outcome)> {
        w.scan();
        w.scan()
    }

    #[test]
    fn links_are_never_followed_in_or_out_of_the_watched_directory() {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().expect("tmp");
        let store = SqliteStore::open(&tmp.path().join("data")).expect("store");
        let root = tmp.path().join("incoming");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(outside.join("secret.log"), AWS).expect("write");
        let mut w = watcher(&root, &store, 1 << 30);
        // A link in place of gcp/: not watched, its target untouched.
        std::fs::remove_dir(root.join("gcp")).expect("rmdir");
        symlink(&outside, root.join("gcp")).expect("symlink");
        // A link to a file outside, in aws/: not read.
        symlink(outside.join("secret.log"), root.join("aws/link.log")).expect("symlink");
        assert!(settle(&mut w).is_empty());
        assert!(outside.join("secret.log").is_file());
        assert_eq!(store.source_totals(Source::Aws).expect("totals").records, 0);
        // A link in place of aws/imported: the file is imported (its digest is the proof) but
        // not moved through the link; it stays, and is left alone.
        symlink(&outside, root.join("aws/imported")).expect("symlink");
        std::fs::write(root.join("aws/a.log"), AWS).expect("write");
        let done = settle(&mut w);
        assert_eq!(done.len(), 1, "{done:?}");
        assert!(root.join("aws/a.log").is_file(), "not moved");
        assert!(!outside.join("a.log").exists(), "nothing moved outside");
        assert!(settle(&mut w).is_empty(), "not looked at again");
        assert_eq!(store.source_totals(Source::Aws).expect("totals").records, 2);
    }

    #[test]
    fn a_file_over_the_limit_moves_to_failed_and_is_not_retried() {
        use std::io::Write as _;
        let tmp = tempfile::tempdir().expect("tmp");
        let store = SqliteStore::open(&tmp.path().join("data")).expect("store");
        let root = tmp.path().join("incoming");
        let mut w = watcher(&root, &store, 1 << 20);
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&vec![0u8; 8 << 20]).expect("gzip");
        std::fs::write(root.join("aws/bomb.log.gz"), e.finish().expect("gzip")).expect("write");
        std::fs::write(root.join("aws/good.log"), AWS).expect("write");
        let done = settle(&mut w);
        assert_eq!(done.len(), 2, "{done:?}");
        assert!(
            matches!(&done[0].1, Outcome::Failed(why) if why.contains("over 1 MiB")),
            "{done:?}"
        );
        assert!(matches!(&done[1].1, Outcome::Imported(s) if s.stored == 2));
        assert!(root.join("aws/failed/bomb.log.gz").is_file());
        assert!(root.join("aws/imported/good.log").is_file());
        assert!(settle(&mut w).is_empty());
        // A restart does not take it again either.
        let mut w = watcher(&root, &store, 1 << 20);
        assert!(settle(&mut w).is_empty());
        assert_eq!(store.source_totals(Source::Aws).expect("totals").records, 2);
    }
}
