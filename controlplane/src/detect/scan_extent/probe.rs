//! How one conversation (a sensor's flow, or a cloud record with the record the other way)
//! tells of its source's probing: the host and port probed and how it was answered.

use std::net::IpAddr;

use super::PSH;
use crate::{
    detect::{
        ChunkView,
        common::{ACK, RST, SYN, TCP},
    },
    model::{Action, Flow},
};

/// How a probe was answered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Answer {
    /// A SYN-ACK; any reply to UDP.
    Open,
    /// A RST.
    Closed,
    /// Nothing came back.
    Silent,
    /// Something else came back (a TCP ACK without RST or SYN).
    Other,
    /// ICMP errors (so many) for the source's probes of the host.
    Unreachable(u64),
}

/// What a sensor's conversation tells of its source's probing, in a few bytes.
#[derive(Clone, Debug)]
pub(super) struct Probe {
    pub(super) host: IpAddr,
    /// (protocol, port) probed; ICMP echo as (protocol, 0).
    pub(super) port: (u8, u16),
    pub(super) answer: Answer,
    /// A TCP session that carried data (a PSH after the other side's SYN-ACK): no probe.
    pub(super) session: bool,
    pub(super) replied: bool,
    pub(super) packets: u64,
    pub(super) session_packets: u64,
    pub(super) session_bytes: u64,
    /// The record's sampling rate (1 for a sensor's).
    pub(super) sampling_rate: f64,
    pub(super) start_ns: i64,
    pub(super) end_ns: i64,
}

impl Probe {
    /// A one-way (cloud) record as its source's probe, answered by the record the other way
    /// in the chunk: a SYN-ACK there is open, a RST closed, a record without flags (AWS v2,
    /// GCP) answered without saying how; a REJECT, or no record back, silent. A TCP record of
    /// 4 packets or more with a payload (over 60 bytes a packet) that was answered is a
    /// session; one with a payload otherwise (its answer in another file, or none) is neither.
    /// A record that did not write its port, protocol or counts is none: what it probed, or
    /// how, is unknown.
    pub(super) fn of_cloud(f: &Flow, view: &ChunkView) -> Option<Probe> {
        if matches!(f.protocol, 1 | 58) || !f.port_known() || !f.counts_known() {
            return None;
        }
        let back = view.reverse_of(f);
        let payload = f.bytes > 60 * f.packets;
        let session = f.protocol == TCP && back.is_some() && f.packets >= 4 && payload;
        if f.protocol == TCP && payload && !session {
            return None;
        }
        let answer = match back {
            _ if f.action == Action::Reject => Answer::Silent,
            None => Answer::Silent,
            Some((flags, ..)) if f.protocol == TCP => {
                if flags & (SYN | ACK) == SYN | ACK {
                    Answer::Open
                } else if flags & RST != 0 {
                    Answer::Closed
                } else {
                    Answer::Other
                }
            }
            Some(_) => Answer::Open,
        };
        let (_, back_packets, back_bytes) = back.unwrap_or_default();
        Some(Probe {
            host: f.dst_ip,
            port: (f.protocol, f.dst_port),
            answer,
            session,
            replied: back.is_some(),
            packets: f.packets,
            session_packets: f.packets.saturating_add(back_packets),
            session_bytes: f.bytes.saturating_add(back_bytes),
            sampling_rate: f.sampling_rate,
            start_ns: f.start_ns,
            end_ns: f.end_ns,
        })
    }

    /// A sensor flow as its source's probe (whatever told its direction: a flow from a
    /// scanner is what it sent, a UDP probe nothing answered being seen one way).
    pub(super) fn of(f: &Flow) -> Option<Probe> {
        let meta = f.sensor.as_deref()?;
        let icmp_error = match f.protocol {
            1 => matches!(f.src_port, 3 | 11 | 12),
            58 => matches!(f.src_port, 1..=4),
            _ => false,
        };
        let answer = if icmp_error {
            Answer::Unreachable(f.reverse_packets)
        } else if f.protocol == TCP {
            let a = meta.reverse_tcp_flags;
            if a & (SYN | ACK) == SYN | ACK {
                Answer::Open
            } else if a & RST != 0 {
                Answer::Closed
            } else if f.reverse_packets == 0 {
                Answer::Silent
            } else {
                Answer::Other
            }
        } else if f.reverse_packets > 0 {
            Answer::Open
        } else {
            Answer::Silent
        };
        Some(Probe {
            host: f.dst_ip,
            port: match f.protocol {
                1 | 58 => (f.protocol, 0),
                p => (p, f.dst_port),
            },
            answer,
            session: f.protocol == TCP
                && f.tcp_flags & PSH != 0
                && meta.reverse_tcp_flags & (SYN | ACK) == SYN | ACK,
            replied: f.reverse_packets > 0,
            packets: f.packets,
            session_packets: f.packets.saturating_add(f.reverse_packets),
            session_bytes: f.bytes.saturating_add(f.reverse_bytes),
            sampling_rate: f.sampling_rate,
            start_ns: f.start_ns,
            end_ns: f.end_ns,
        })
    }
}
