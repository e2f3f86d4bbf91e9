//! What the cloud flow-log tests share: running `picket-controlplane import` and reading what it
//! left in the store.
#![allow(dead_code, reason = "each test file uses its own part")]

use std::{path::Path, process::Output};

use tests::ControlPlane;

pub fn import(data: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    ControlPlane::import(data, args, stdin.map(str::as_bytes))
}

/// The import's one-line summary, once it is known to have succeeded.
pub fn summary(o: &Output) -> String {
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout.trim().to_string()
}

pub fn db(data: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(data.join("picket.db")).expect("open the store")
}
