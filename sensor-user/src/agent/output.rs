//! The agent's JSON lines on stdout (with --stdout).

use std::io::{self, Write};

use tracing::warn;

/// Writes JSON lines to stdout when enabled; a closed stdout (EPIPE) ends the run cleanly.
pub(super) struct Out {
    w: io::BufWriter<io::Stdout>,
    enabled: bool,
    closed: bool,
}

impl Out {
    pub(super) fn stdout(enabled: bool) -> Self {
        Out {
            w: io::BufWriter::new(io::stdout()),
            enabled,
            closed: false,
        }
    }

    pub(super) fn line<T: serde::Serialize>(&mut self, v: &T) {
        if self.closed || !self.enabled {
            return;
        }
        let r = serde_json::to_writer(&mut self.w, v)
            .map_err(io::Error::from)
            .and_then(|()| self.w.write_all(b"\n"));
        if let Err(e) = r {
            warn!(error = %e, "stdout closed; stopping");
            self.closed = true;
        }
    }

    pub(super) fn flush(&mut self) {
        if !self.closed && self.w.flush().is_err() {
            self.closed = true;
        }
    }

    pub(super) fn closed(&self) -> bool {
        self.closed
    }
}
