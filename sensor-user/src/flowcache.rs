//! NetFlow/IPFIX-like flow semantics on top of the kernel's per-interval tables: each drain's
//! counts are added to the conversation they belong to, and a conversation is exported
//! - when it has been idle for the idle timeout (default 15 s): `idle_timeout`;
//! - when its current slice has lasted the active timeout (default 60 s): `active_timeout`, and
//!   the conversation goes on in a new slice with the same initiator;
//! - when TCP ended it (FIN both ways, or a RST): `end` (late packets, such as the last ACK,
//!   follow in a slice of their own when the conversation goes idle);
//! - when the sensor stops: `shutdown`.
//!
//! Every packet counted by the kernel is in exactly one exported record, so the totals over all
//! records equal the kernel's counts. Timeouts are checked at every drain, so a record leaves at
//! most one export interval after its timeout.

use std::time::Duration;

use sensor_common::{FlowKey, tcp};

use crate::records::{Conversation, FlowMap, FlowTotals, pair_flows, partner_key};

/// Whether the responder's direction answers: a SYN-ACK for TCP (a RST alone is a refusal), any
/// packet for other protocols (an ICMP error travels in a flow of its own).
fn answers(protocol: u8, rev: &FlowTotals) -> bool {
    if rev.packets == 0 {
        return false;
    }
    if protocol == 6 {
        return rev.tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN | tcp::ACK;
    }
    true
}

/// A conversation in the cache; its key is the initiator's direction (`Conversation::src_key`).
/// Kept small: the cache holds every conversation until it goes idle.
struct Entry {
    fwd: FlowTotals,
    rev: FlowTotals,
    how: &'static str,
    /// Kernel clock of the first packet of the current slice (0: no packet yet in this slice).
    slice_start_ns: u64,
    /// Kernel clock of the last packet of the conversation.
    last_ns: u64,
    /// The responder answered at some point (a SYN-ACK for TCP, any packet otherwise); kept
    /// across slices.
    answered: bool,
}

/// ICMP or ICMPv6 destination unreachable (the type is in the source port).
fn icmp_error(k: &FlowKey) -> bool {
    (k.protocol == 1 && k.src_port == 3) || (k.protocol == 58 && k.src_port == 1)
}

/// What [`FlowCache::contacts_of`] knows of one source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Contacts {
    pub answered: u32,
    pub unanswered: u32,
    pub unanswered_bytes: u64,
    /// Conversations in which the other end sent anything at all (a RST too).
    pub replied: u32,
}

pub struct FlowCache {
    active_ns: u64,
    idle_ns: u64,
    /// Keyed by the initiator's direction.
    entries: FlowMap<Entry>,
}

impl FlowCache {
    pub fn new(active: Duration, idle: Duration) -> Self {
        FlowCache {
            active_ns: active.as_nanos() as u64,
            idle_ns: idle.as_nanos() as u64,
            entries: FlowMap::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds one drain's counts (per direction) to their conversations.
    pub fn add(&mut self, flows: &FlowMap<FlowTotals>) {
        let mut new = FlowMap::default();
        for (k, d) in flows {
            self.add_one(k, d, &mut new);
        }
        self.add_new(new);
    }

    /// Adds one direction's counts to its conversation if the cache has it; otherwise to `new`,
    /// which [`FlowCache::add_new`] takes once the whole drain has been seen (so that both
    /// directions of a new conversation are joined).
    pub fn add_one(&mut self, k: &FlowKey, d: &FlowTotals, new: &mut FlowMap<FlowTotals>) {
        if let Some(e) = self.entries.get_mut(k) {
            e.fwd.merge(d);
            Self::touch(e, d);
            return;
        }
        if let Some(pk) = partner_key(k)
            && let Some(e) = self.entries.get_mut(&pk)
        {
            e.rev.merge(d);
            e.answered |= answers(k.protocol, &e.rev);
            if e.how == "one_way" {
                // The other side answered after the first slice: src was first seen.
                e.how = "first_seen";
            }
            Self::touch(e, d);
            return;
        }
        new.entry(*k).or_default().merge(d);
    }

    /// Opens the conversations of a drain's new flows (both directions joined).
    pub fn add_new(&mut self, new: FlowMap<FlowTotals>) {
        for c in pair_flows(new) {
            let first = [c.fwd, c.rev]
                .iter()
                .filter(|t| t.packets > 0)
                .map(|t| t.first_seen_ns)
                .min()
                .unwrap_or(0);
            let last = c.fwd.last_seen_ns.max(c.rev.last_seen_ns);
            // An ICMP error refuses what it answers.
            let answered = answers(c.src_key.protocol, &c.rev) && !icmp_error(&c.src_key);
            // A reply joins its asker's conversation when the cache has it already (an ICMP
            // error has no partner key to be found by in `add_one`).
            if let Some(e) = self.entries.get_mut(&c.src_key) {
                e.fwd.merge(&c.fwd);
                e.rev.merge(&c.rev);
                e.answered |= answered;
                Self::touch(e, &c.fwd);
                Self::touch(e, &c.rev);
                continue;
            }
            self.entries.insert(
                c.src_key,
                Entry {
                    fwd: c.fwd,
                    rev: c.rev,
                    how: c.how,
                    slice_start_ns: first,
                    last_ns: last,
                    answered,
                },
            );
        }
    }

    /// The conversations `src` (16 bytes, IPv4 mapped) opened that are still cached: how many
    /// were answered and how many were not (see `answers`), and the bytes `src` sent in those
    /// that were not.
    pub fn contacts_of(&self, src: &[u8; 16]) -> Contacts {
        let mut c = Contacts::default();
        for (k, e) in &self.entries {
            if &k.src_addr == src && icmp_error(k) {
                // A destination unreachable to `src` (kept as `src`'s conversation, the error
                // its reply) answers its probes: not a contact of its own.
                c.replied += 1;
            } else if &k.src_addr == src {
                if e.rev.packets > 0 {
                    c.replied += 1;
                }
                if e.answered {
                    c.answered += 1;
                } else {
                    c.unanswered += 1;
                    c.unanswered_bytes += e.fwd.bytes;
                }
            } else if &k.dst_addr == src && icmp_error(k) {
                // A destination unreachable to `src` answers its probes too (a closed UDP port's
                // answer), in a flow of its own.
                c.replied += 1;
            }
        }
        c
    }

    fn touch(e: &mut Entry, d: &FlowTotals) {
        if d.packets == 0 {
            return;
        }
        if e.slice_start_ns == 0 || d.first_seen_ns < e.slice_start_ns {
            e.slice_start_ns = d.first_seen_ns;
        }
        e.last_ns = e.last_ns.max(d.last_seen_ns);
    }

    /// The conversations (slices) due at kernel time `now_ns`, with why; `all` flushes everything
    /// (shutdown).
    pub fn expire(&mut self, now_ns: u64, all: bool) -> Vec<(Conversation, &'static str)> {
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (k, e) in self.entries.iter_mut() {
            let has_packets = e.fwd.packets + e.rev.packets > 0;
            let flags = e.fwd.tcp_flags | e.rev.tcp_flags;
            let ended = k.protocol == 6
                && (flags & tcp::RST != 0
                    || (e.fwd.tcp_flags & tcp::FIN != 0 && e.rev.tcp_flags & tcp::FIN != 0));
            let reason = if all {
                Some("shutdown")
            } else if ended {
                Some("end")
            } else if now_ns.saturating_sub(e.last_ns) >= self.idle_ns {
                Some("idle_timeout")
            } else if has_packets && now_ns.saturating_sub(e.slice_start_ns) >= self.active_ns {
                Some("active_timeout")
            } else {
                None
            };
            let Some(reason) = reason else { continue };
            if has_packets {
                out.push((
                    Conversation {
                        src_key: *k,
                        fwd: e.fwd,
                        rev: e.rev,
                        how: e.how,
                    },
                    reason,
                ));
            }
            if reason == "active_timeout" || reason == "end" {
                // A new slice: same conversation and initiator, counts from zero. An ended TCP
                // conversation stays until idle, so that a last ACK after the FINs is counted
                // in its own direction rather than as a new one-way flow.
                e.fwd = FlowTotals {
                    bare_syn: e.fwd.bare_syn,
                    ..FlowTotals::default()
                };
                e.rev = FlowTotals {
                    bare_syn: e.rev.bare_syn,
                    ..FlowTotals::default()
                };
                e.slice_start_ns = 0;
            } else {
                gone.push(*k);
            }
        }
        for k in gone {
            self.entries.remove(&k);
        }
        // Deterministic order: by the slice's first packet.
        out.sort_by_key(|(c, _)| {
            let f = |t: &FlowTotals| {
                if t.packets > 0 {
                    t.first_seen_ns
                } else {
                    u64::MAX
                }
            };
            (
                f(&c.fwd).min(f(&c.rev)),
                c.src_key.src_port,
                c.src_key.dst_port,
            )
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn key(sport: u16, dport: u16) -> FlowKey {
        FlowKey {
            ifindex: 2,
            src_addr: sensor_common::v4_mapped([10, 0, 0, 1]),
            dst_addr: sensor_common::v4_mapped([10, 0, 0, 2]),
            src_port: sport,
            dst_port: dport,
            protocol: 17,
            ip_version: 4,
            ..FlowKey::default()
        }
    }

    fn rev(k: &FlowKey) -> FlowKey {
        partner_key(k).expect("partner")
    }

    fn t(packets: u64, first: u64, last: u64) -> FlowTotals {
        FlowTotals {
            packets,
            bytes: packets * 100,
            first_seen_ns: first,
            last_seen_ns: last,
            directions: 1,
            ..FlowTotals::default()
        }
    }

    fn cache() -> FlowCache {
        FlowCache::new(Duration::from_secs(60), Duration::from_secs(15))
    }

    #[test]
    fn a_long_flow_is_exported_in_slices_with_a_stable_initiator_and_exact_totals() {
        let mut c = cache();
        let k = key(40000, 53);
        let mut exported = Vec::new();
        // 10 packets each way every 10 s for 190 s; drains at 10 s + 1 ns, 20 s + 1 ns...
        for i in 0..19u64 {
            let now = (i + 1) * 10 * S + 1;
            let m = FlowMap::from_iter([
                (k, t(10, i * 10 * S + 1, now - 1)),
                (rev(&k), t(10, i * 10 * S + 2, now - 1)),
            ]);
            c.add(&m);
            exported.extend(c.expire(now, false));
        }
        exported.extend(c.expire(200 * S, true));
        let total: u64 = exported.iter().map(|(x, _)| x.fwd.packets).sum();
        let back: u64 = exported.iter().map(|(x, _)| x.rev.packets).sum();
        assert_eq!((total, back), (190, 190));
        assert!(
            exported.iter().all(|(x, _)| x.src_key == k),
            "src stays the client"
        );
        let reasons: Vec<_> = exported.iter().map(|(_, r)| *r).collect();
        assert_eq!(
            reasons,
            vec![
                "active_timeout",
                "active_timeout",
                "active_timeout",
                "shutdown"
            ]
        );
        assert_eq!(exported[0].0.fwd.packets, 60, "a 60 s slice");
        assert_eq!(exported[3].0.fwd.packets, 10, "what was left at shutdown");
    }

    #[test]
    fn an_idle_flow_leaves_after_the_idle_timeout_and_a_late_answer_keeps_its_direction() {
        let mut c = cache();
        let k = key(40001, 5000);
        c.add(&FlowMap::from_iter([(k, t(3, S, 2 * S))]));
        assert!(c.expire(10 * S, false).is_empty(), "not idle yet");
        // The answer comes in the next interval: same conversation, k stays src.
        c.add(&FlowMap::from_iter([(rev(&k), t(2, 11 * S, 12 * S))]));
        assert!(c.expire(20 * S, false).is_empty());
        let out = c.expire(27 * S, false);
        assert_eq!(out.len(), 1);
        let (conv, why) = out[0];
        assert_eq!(why, "idle_timeout");
        assert_eq!(conv.src_key, k);
        assert_eq!((conv.fwd.packets, conv.rev.packets), (3, 2));
        assert_eq!(conv.how, "first_seen");
        assert!(c.is_empty());
    }

    #[test]
    fn contacts_count_what_was_answered_and_what_got_anything_back() {
        let mut c = cache();
        let src = sensor_common::v4_mapped([10, 0, 0, 1]);
        // Two UDP probes: one answered, one met by a port unreachable (an ICMP flow of its own,
        // from the target); and a third to another host that got nothing.
        let answered = key(40010, 161);
        let closed = key(40011, 162);
        let mut silent = key(40012, 163);
        silent.dst_addr = sensor_common::v4_mapped([10, 0, 0, 3]);
        let unreachable = FlowKey {
            src_addr: sensor_common::v4_mapped([10, 0, 0, 2]),
            dst_addr: src,
            src_port: 3,
            dst_port: 3,
            protocol: 1,
            ..key(0, 0)
        };
        // A forged source probing the same closed port: the unreachable is not to it.
        let mut decoy = closed;
        decoy.src_addr = sensor_common::v4_mapped([10, 0, 0, 9]);
        c.add(&FlowMap::from_iter([
            (answered, t(1, S, S)),
            (rev(&answered), t(1, S, S)),
            (closed, t(1, S, S)),
            (silent, t(1, S, S)),
            (unreachable, t(1, S, S)),
            (decoy, t(1, S, S)),
        ]));
        assert_eq!(
            c.contacts_of(&src),
            Contacts {
                answered: 1,
                unanswered: 2,
                unanswered_bytes: 200,
                replied: 2,
            }
        );
        assert_eq!(
            c.contacts_of(&decoy.src_addr),
            Contacts {
                answered: 0,
                unanswered: 1,
                unanswered_bytes: 100,
                replied: 0,
            }
        );
    }

    #[test]
    fn tcp_ends_with_fin_both_ways_or_a_reset() {
        let mut c = cache();
        let mut k = key(40002, 443);
        k.protocol = 6;
        let mut a = t(5, S, 2 * S);
        a.tcp_flags = tcp::SYN | tcp::ACK | tcp::FIN;
        a.bare_syn = true;
        let mut b = t(4, S, 2 * S);
        b.tcp_flags = tcp::SYN | tcp::ACK;
        c.add(&FlowMap::from_iter([(k, a), (rev(&k), b)]));
        assert!(c.expire(3 * S, false).is_empty(), "only one FIN yet");
        let mut fin = t(1, 3 * S, 3 * S);
        fin.tcp_flags = tcp::FIN | tcp::ACK;
        c.add(&FlowMap::from_iter([(rev(&k), fin)]));
        let out = c.expire(4 * S, false);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1, "end");
        assert_eq!((out[0].0.fwd.packets, out[0].0.rev.packets), (5, 5));
        assert_eq!(out[0].0.how, "syn");
        let mut k2 = key(40003, 443);
        k2.protocol = 6;
        let mut r = t(1, 5 * S, 5 * S);
        r.tcp_flags = tcp::RST | tcp::ACK;
        c.add(&FlowMap::from_iter([
            (k2, t(1, 5 * S, 5 * S)),
            (rev(&k2), r),
        ]));
        assert_eq!(c.expire(6 * S, false)[0].1, "end");
    }
}
