//! Scan events from the kernel's ring buffer, and login events from the SSH log.

use std::time::{Duration, Instant};

use tracing::info;

use super::{Agent, Ring};
use crate::{
    authlog, export,
    records::{self, Clock},
    sensor,
};

impl Agent {
    /// Takes every scan event waiting in the ring buffer: printed, and queued for the next
    /// batch, once per source and window.
    pub(super) fn read_events(&mut self, ring: &mut Ring) {
        let clock = Clock::now();
        let exporting = self.exporter.is_some();
        let rb = ring.get_mut();
        while let Some(item) = aya::maps::RingBuf::next(rb) {
            let Some(ev) = sensor::parse_scan_event(&item) else {
                self.counters.scan_events_malformed += 1;
                continue;
            };
            let rec = records::scan_record(&ev, clock, Self::iface_name(&self.names, ev.ifindex));
            if self
                .reported
                .insert((rec.src_ip, ev.window_start_ns), Instant::now())
                .is_some()
            {
                self.counters.scan_events_duplicate += 1;
                continue;
            }
            info!(src = %rec.src_ip, ports = rec.distinct_ports, hosts = rec.distinct_hosts, probe = rec.probe, "scan event");
            self.out.line(&rec);
            if exporting {
                self.pending_scans.push(export::scan(&rec));
            }
            self.counters.scan_records += 1;
        }
        self.out.flush();
        let window = self.window;
        self.reported
            .retain(|_, t| t.elapsed() < window * 2 + Duration::from_secs(1));
    }

    /// Takes the SSH log's new lines: each login event printed, and queued for the next batch.
    pub(super) fn read_logins(&mut self) {
        let Some(f) = self.auth_log.as_mut() else {
            return;
        };
        let now = time::OffsetDateTime::now_utc();
        for rec in f.poll().iter().filter_map(|l| authlog::parse_line(l, now)) {
            self.out.line(&rec);
            self.counters.auth_events += 1;
            if self.exporter.is_some() {
                self.pending_auth.push(export::auth(&rec));
            }
        }
        self.out.flush();
    }
}
