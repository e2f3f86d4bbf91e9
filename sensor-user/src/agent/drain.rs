//! One export interval: the flow tables drained into the flow cache, and the records due out
//! of it printed and written to the spool, a batch's worth at a time.

use std::time::Instant;

use super::Agent;
use crate::{
    export,
    records::{self, Clock},
};

impl Agent {
    /// Drains the active table (`flush_all`: also every conversation still open in the cache)
    /// and exports what is due.
    pub(super) fn export(&mut self, flush_all: bool) -> anyhow::Result<()> {
        let t0 = Instant::now();
        // Straight into the flow cache: only the drain's new flows are held on the side.
        let mut new = records::FlowMap::default();
        let cache = &mut self.cache;
        let d = self.sensor.drain(|k, t| cache.add_one(k, t, &mut new))?;
        cache.add_new(new);
        // What the agent knows of each pending scan event's contacts, before any expire.
        for ev in self.pending_scans.iter_mut() {
            let src = match ev.src_ip.len() {
                4 => sensor_common::v4_mapped(
                    <[u8; 4]>::try_from(&ev.src_ip[..]).unwrap_or_default(),
                ),
                _ => <[u8; 16]>::try_from(&ev.src_ip[..]).unwrap_or_default(),
            };
            let c = cache.contacts_of(&src);
            (ev.answered_contacts, ev.unanswered_contacts, ev.probe_bytes) =
                (c.answered, c.unanswered, c.unanswered_bytes);
            ev.replied_contacts = c.replied;
        }
        let drain_time = t0.elapsed();
        let clock = Clock::now();
        let due = cache.expire(Clock::monotonic_ns(), flush_all);
        self.counters.open_flows = cache.len() as u64;
        let names = &self.names;
        let iface_name = |i| Self::iface_name(names, i);
        let probes: Vec<_> = d
            .probes
            .iter()
            .map(|p| records::probe_record(p, clock, iface_name(p.ifindex)))
            .collect();
        for p in &probes {
            self.out.line(p);
        }
        let host = self
            .exporter
            .as_ref()
            .map(|ex| ex.host.lock().unwrap_or_else(|p| p.into_inner()).clone());
        // One batch's worth of records at a time, so that a burst of expiries (100k flows
        // reaching their active timeout together) never sits in memory as records and messages
        // at once.
        let mut chunks = due.chunks(export::MAX_RECORDS_PER_BATCH);
        let mut first = true;
        while let Some(chunk) = chunks.next().or(first.then_some(&[][..])) {
            let mut recs: Vec<_> = chunk
                .iter()
                .map(|(c, why)| records::flow_record(c, clock, &iface_name, why))
                .collect();
            if let Some(pods) = &self.pods {
                for r in &mut recs {
                    r.src_pod = pods.get(&r.src_ip);
                    r.dst_pod = pods.get(&r.dst_ip);
                }
            }
            for r in &recs {
                self.out.line(r);
            }
            if let (Some(ex), Some(host)) = (&self.exporter, &host) {
                let (scans, probes, auth) = if first {
                    (
                        std::mem::take(&mut self.pending_scans),
                        probes.iter().map(export::probe).collect(),
                        std::mem::take(&mut self.pending_auth),
                    )
                } else {
                    Default::default()
                };
                let batches = export::batches(
                    recs.iter().map(export::flow).collect(),
                    scans,
                    probes,
                    auth,
                    host,
                    clock.unix_ns(Clock::monotonic_ns()),
                );
                // Written to the spool (durably) before anything else: from here on nothing is
                // lost.
                ex.push(batches)?;
            }
            first = false;
        }
        let a = &mut self.counters;
        a.probe_records += d.probes.len() as u64;
        a.flow_records += due.len() as u64;
        a.drains += 1;
        a.last_drain_entries = d.entries as u64;
        a.last_drain_us = drain_time.as_micros() as u64;
        self.print_stats();
        self.out.flush();
        Ok(())
    }
}
