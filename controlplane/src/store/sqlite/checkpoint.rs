//! WAL checkpoints on their own thread and connection.
//!
//! With SQLite's automatic checkpoints, the writer that commits past 1,000 WAL pages copies
//! them into the database itself; at import rates that was a quarter of the writer's time.
//! Here the writer only appends to the WAL, and this thread copies what was committed
//! (`PASSIVE`: never waits for the writer) every `INTERVAL`. A passive checkpoint cannot make
//! the WAL start over while the writer keeps writing, so past `RESTART_BYTES` of frames it waits
//! for the writer's current transaction and restarts the WAL (`RESTART`), which bounds its size.

use std::{
    path::Path,
    sync::mpsc::{self, RecvTimeoutError, SyncSender},
    thread,
    time::Duration,
};

use anyhow::Context as _;
use rusqlite::Connection;
use tracing::warn;

const INTERVAL: Duration = Duration::from_millis(200);
/// The WAL's size (in pages of the database's size) past which it is restarted.
const RESTART_BYTES: i64 = 256 << 20;

/// The thread stops (after a last checkpoint) when this is dropped.
pub struct Handle {
    _stop: SyncSender<()>,
}

pub fn start(path: &Path) -> anyhow::Result<Handle> {
    let c = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    // Short: a restart that cannot get the writer lock soon gives up (and is tried again)
    // rather than hold the lock that writers wait for.
    c.busy_timeout(Duration::from_secs(2))?;
    let page: i64 = c.pragma_query_value(None, "page_size", |r| r.get(0))?;
    let restart_frames = RESTART_BYTES / page.max(512);
    let (stop, stopped) = mpsc::sync_channel::<()>(0);
    thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            loop {
                let last = match stopped.recv_timeout(INTERVAL) {
                    Err(RecvTimeoutError::Timeout) => false,
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
                };
                if let Err(e) = checkpoint(&c, restart_frames) {
                    warn!(error = %e, "WAL checkpoint failed (retried)");
                }
                if last {
                    break;
                }
            }
        })
        .context("starting the checkpoint thread")?;
    Ok(Handle { _stop: stop })
}

/// One pass: a passive checkpoint, and a restart when the WAL has grown past `restart_frames`.
/// Returns the WAL's frames before the pass.
pub fn checkpoint(c: &Connection, restart_frames: i64) -> rusqlite::Result<i64> {
    let run = |mode: &str| {
        c.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
            r.get::<_, i64>(1)
        })
    };
    let frames = run("PASSIVE")?;
    if frames > restart_frames {
        run("RESTART")?;
    }
    Ok(frames)
}
