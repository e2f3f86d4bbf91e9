//! GCP VPC Flow Logs: Cloud Logging entries whose `jsonPayload` holds the flow, exported as
//! NDJSON (one entry per line) or as a JSON array, or delivered through a Pub/Sub sink: a push
//! request or a pulled message (`{"message": {"data": BASE64 of an entry}}`, also as the
//! elements of `gcloud pubsub subscriptions pull --format=json`) or a pull response
//! (`{"receivedMessages": [...]}`).
//!
//! 64-bit integers come as JSON strings (`"bytes_sent": "3168"`), small ones as numbers; both
//! are accepted everywhere. Times are RFC 3339 with up to nanoseconds. GCP samples packets and
//! aggregates them over an interval (5 s by default); the sampling rate is not in the record,
//! so the import is told it and carries it into the flow model.

use std::{borrow::Cow, net::IpAddr};

use serde::{Deserialize, Deserializer};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// An integer given as a JSON number or a string of digits. A visitor rather than an untagged
/// enum, which would buffer every value first.
fn int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an integer, as a number or a string")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v)
                .map(Some)
                .map_err(|_| E::custom(format!("{v} is negative")))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            v.parse()
                .map(Some)
                .map_err(|_| E::custom(format!("`{v}` is not an integer")))
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

#[derive(Debug, Deserialize)]
pub struct Entry<'a> {
    #[serde(rename = "jsonPayload", borrow)]
    pub payload: Option<Payload<'a>>,
    #[serde(borrow)]
    pub resource: Option<Resource<'a>>,
    #[serde(
        rename = "logName",
        borrow,
        default,
        deserialize_with = "super::borrowed"
    )]
    pub log_name: Option<Cow<'a, str>>,
    /// When the entry was logged: the time of a record without its own.
    #[serde(borrow, default, deserialize_with = "super::borrowed")]
    pub timestamp: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
pub struct Resource<'a> {
    #[serde(borrow)]
    pub labels: Option<Labels<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct Labels<'a> {
    #[serde(borrow, default, deserialize_with = "super::borrowed")]
    pub project_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "super::borrowed")]
    pub subnetwork_name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "super::borrowed")]
    pub location: Option<Cow<'a, str>>,
}

/// A flow record's `jsonPayload`: the fields the flow model maps, and every other field as
/// written (`other`: gateways, GKE details, `round_trip_time`, what a later format adds), which
/// the flow keeps verbatim.
#[derive(Debug, Default)]
pub struct Payload<'a> {
    pub connection: Option<Connection<'a>>,
    pub reporter: Option<Cow<'a, str>>,
    pub bytes_sent: Option<u64>,
    pub packets_sent: Option<u64>,
    pub start_time: Option<Cow<'a, str>>,
    pub end_time: Option<Cow<'a, str>>,
    pub rtt_msec: Option<u64>,
    pub src_instance: Option<Instance<'a>>,
    pub dest_instance: Option<Instance<'a>>,
    pub src_vpc: Option<Vpc<'a>>,
    pub dest_vpc: Option<Vpc<'a>>,
    pub src_location: Option<Location<'a>>,
    pub dest_location: Option<Location<'a>>,
    /// The Google service at either end (Google APIs, a load balancer's front end...).
    pub src_google_service: Option<GoogleService<'a>>,
    pub dest_google_service: Option<GoogleService<'a>>,
    pub other: Vec<(Cow<'a, str>, &'a serde_json::value::RawValue)>,
}

/// A map visitor rather than a derive: a derive drops the fields it does not name, and
/// `#[serde(flatten)]` would buffer every record.
impl<'de: 'a, 'a> Deserialize<'de> for Payload<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Key<'a>(#[serde(borrow)] Cow<'a, str>);
        #[derive(Deserialize)]
        struct Text<'a>(
            #[serde(borrow, deserialize_with = "super::borrowed")] Option<Cow<'a, str>>,
        );
        #[derive(Deserialize)]
        struct Int(#[serde(deserialize_with = "int")] Option<u64>);
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Payload<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a flow record (a JSON object)")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Payload<'a>, A::Error> {
                let mut p = Payload::default();
                while let Some(Key(k)) = m.next_key::<Key<'de>>()? {
                    match &*k {
                        "connection" => p.connection = m.next_value()?,
                        "reporter" => p.reporter = m.next_value::<Text<'de>>()?.0,
                        "bytes_sent" => p.bytes_sent = m.next_value::<Int>()?.0,
                        "packets_sent" => p.packets_sent = m.next_value::<Int>()?.0,
                        "start_time" => p.start_time = m.next_value::<Text<'de>>()?.0,
                        "end_time" => p.end_time = m.next_value::<Text<'de>>()?.0,
                        "rtt_msec" => p.rtt_msec = m.next_value::<Int>()?.0,
                        "src_instance" => p.src_instance = m.next_value()?,
                        "dest_instance" => p.dest_instance = m.next_value()?,
                        "src_vpc" => p.src_vpc = m.next_value()?,
                        "dest_vpc" => p.dest_vpc = m.next_value()?,
                        "src_location" => p.src_location = m.next_value()?,
                        "dest_location" => p.dest_location = m.next_value()?,
                        "src_google_service" => p.src_google_service = m.next_value()?,
                        "dest_google_service" => p.dest_google_service = m.next_value()?,
                        _ => {
                            let v = m.next_value()?;
                            p.other.push((k, v));
                        }
                    }
                }
                Ok(p)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// `src_google_service` / `dest_google_service`.
#[derive(Debug, Deserialize)]
pub struct GoogleService<'a> {
    /// GOOGLE_API, GOOGLE_API_PSC, GOOGLE_API_VPC_SC, ... (as written).
    #[serde(rename = "type", borrow, default, deserialize_with = "super::borrowed")]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "super::borrowed")]
    pub service_name: Option<Cow<'a, str>>,
    /// PUBLIC_IP, PRIVATE_SERVICE_CONNECT, ... (as written).
    #[serde(borrow, default, deserialize_with = "super::borrowed")]
    pub connectivity: Option<Cow<'a, str>>,
}

/// An instance's managed instance group: its name, and its region or zone.
#[derive(Debug, Deserialize)]
pub struct InstanceGroup<'a> {
    #[serde(borrow, default, deserialize_with = "super::borrowed")]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "super::borrowed")]
    pub region: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "super::borrowed")]
    pub zone: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
pub struct Connection<'a> {
    #[serde(borrow, default, deserialize_with = "super::borrowed")]
    pub src_ip: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "super::borrowed")]
    pub dest_ip: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "int")]
    pub src_port: Option<u64>,
    #[serde(default, deserialize_with = "int")]
    pub dest_port: Option<u64>,
    #[serde(default, deserialize_with = "int")]
    pub protocol: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub struct Instance<'a> {
    #[serde(borrow, default, deserialize_with = "super::borrowed")]
    pub project_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "super::borrowed")]
    pub vm_name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "super::borrowed")]
    pub region: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "super::borrowed")]
    pub zone: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub managed_instance_group: Option<InstanceGroup<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct Vpc<'a> {
    #[serde(borrow, default, deserialize_with = "super::borrowed")]
    pub project_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "super::borrowed")]
    pub vpc_name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "super::borrowed")]
    pub subnetwork_name: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
pub struct Location<'a> {
    /// ISO 3166-1 alpha-3, lower case ("usa").
    #[serde(borrow, default, deserialize_with = "super::borrowed")]
    pub country: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "super::borrowed")]
    pub continent: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "super::borrowed")]
    pub region: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "super::borrowed")]
    pub city: Option<Cow<'a, str>>,
    /// The remote end's autonomous system (external addresses only).
    #[serde(default, deserialize_with = "int")]
    pub asn: Option<u64>,
}

/// One flow record, validated.
#[derive(Debug)]
pub struct Record<'a> {
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    pub bytes: u64,
    pub packets: u64,
    pub start_ns: i64,
    pub end_ns: i64,
    /// The payload had no start or end time: both are the entry's `timestamp`.
    pub time_from_entry: bool,
    pub project: Option<Cow<'a, str>>,
    pub payload: Payload<'a>,
}

/// Why an entry was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Not JSON, or a field of the wrong type.
    BadJson,
    /// A Cloud Logging entry that is not a flow record (no `jsonPayload.connection`).
    NotAFlow,
    BadAddress,
    BadPort,
    BadTime,
    /// A Pub/Sub message whose `data` is not base64 of UTF-8 text.
    BadPubSubData,
}

impl Reject {
    pub fn reason(&self) -> &'static str {
        match self {
            Reject::BadJson => "bad_json",
            Reject::NotAFlow => "not_a_flow_record",
            Reject::BadAddress => "bad_address",
            Reject::BadPort => "bad_port_or_protocol",
            Reject::BadTime => "bad_time",
            Reject::BadPubSubData => "bad_pubsub_data",
        }
    }
}

fn time_ns(t: Option<&str>) -> Result<i64, Reject> {
    let t = t.ok_or(Reject::BadTime)?;
    let t = OffsetDateTime::parse(t, &Rfc3339).map_err(|_| Reject::BadTime)?;
    i64::try_from(t.unix_timestamp_nanos()).map_err(|_| Reject::BadTime)
}

/// Parses one Cloud Logging entry (a line of NDJSON, or an element of a JSON array).
pub fn parse(json: &str) -> Result<Record<'_>, Reject> {
    let e: Entry<'_> = serde_json::from_str(json).map_err(|_| Reject::BadJson)?;
    let p = e.payload.ok_or(Reject::NotAFlow)?;
    let c = p.connection.as_ref().ok_or(Reject::NotAFlow)?;
    let ip = |s: &Option<Cow<'_, str>>| -> Result<IpAddr, Reject> {
        s.as_deref()
            .ok_or(Reject::BadAddress)?
            .parse()
            .map_err(|_| Reject::BadAddress)
    };
    let (src_ip, dst_ip) = (ip(&c.src_ip)?, ip(&c.dest_ip)?);
    let port = |v: Option<u64>| u16::try_from(v.unwrap_or(0)).map_err(|_| Reject::BadPort);
    let (src_port, dst_port) = (port(c.src_port)?, port(c.dest_port)?);
    let protocol = u8::try_from(c.protocol.unwrap_or(0)).map_err(|_| Reject::BadPort)?;
    // A record without its times takes its entry's: one without either, the time it was
    // logged (marked, below); without any of them it is rejected, never stored at 1970.
    let (start, end) = (p.start_time.as_deref(), p.end_time.as_deref());
    let time_from_entry = start.is_none() && end.is_none();
    let (start, end) = if time_from_entry {
        (e.timestamp.as_deref(), e.timestamp.as_deref())
    } else {
        (start.or(end), end.or(start))
    };
    let start_ns = time_ns(start)?;
    let end_ns = time_ns(end)?;
    if end_ns < start_ns {
        return Err(Reject::BadTime);
    }
    let project = e
        .resource
        .and_then(|r| r.labels)
        .and_then(|l| l.project_id)
        .or_else(|| {
            e.log_name.and_then(|n| {
                n.strip_prefix("projects/")
                    .and_then(|r| r.split('/').next())
                    .map(|p| Cow::Owned(p.to_string()))
            })
        });
    Ok(Record {
        src_ip,
        dst_ip,
        src_port,
        dst_port,
        protocol,
        bytes: p.bytes_sent.unwrap_or(0),
        packets: p.packets_sent.unwrap_or(0),
        start_ns,
        end_ns,
        time_from_entry,
        project,
        payload: p,
    })
}

/// A Pub/Sub delivery: a push request or a pulled message, or a whole pull response.
#[derive(Deserialize)]
struct PubSub<'a> {
    #[serde(borrow)]
    message: Option<Message<'a>>,
    #[serde(rename = "receivedMessages", borrow)]
    received: Option<Vec<Received<'a>>>,
}

#[derive(Deserialize)]
struct Received<'a> {
    #[serde(borrow)]
    message: Message<'a>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default, deserialize_with = "super::borrowed")]
    data: Option<Cow<'a, str>>,
}

/// The log entries carried by `json` if it is a Pub/Sub delivery (None if it is not one), each
/// decoded from its message's base64 `data`; a message that does not decode is an `Err` in its
/// place, so the others are still read.
pub fn pubsub_entries(json: &str) -> Option<Vec<Result<String, Reject>>> {
    use base64::Engine as _;
    let p: PubSub<'_> = serde_json::from_str(json).ok()?;
    let messages: Vec<Message<'_>> = match (p.message, p.received) {
        (Some(m), _) => vec![m],
        (None, Some(r)) => r.into_iter().map(|r| r.message).collect(),
        (None, None) => return None,
    };
    Some(
        messages
            .into_iter()
            .map(|m| {
                let data = m.data.ok_or(Reject::BadPubSubData)?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data.as_bytes())
                    .map_err(|_| Reject::BadPubSubData)?;
                String::from_utf8(bytes).map_err(|_| Reject::BadPubSubData)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry as the VPC Flow Logs documentation shows it, from Cloud Logging's export.
    const ENTRY: &str = r#"{"insertId":"1wbyh3ag1mngmr6","jsonPayload":{"bytes_sent":"3168","connection":{"dest_ip":"35.235.241.17","dest_port":41548,"protocol":6,"src_ip":"10.128.0.2","src_port":22},"dest_location":{"city":"Mountain View","continent":"America","country":"usa","region":"California"},"end_time":"2021-03-10T19:12:28.103218426Z","packets_sent":"13","reporter":"SRC","rtt_msec":"42","src_instance":{"project_id":"my-project","region":"us-central1","vm_name":"vm-1","zone":"us-central1-a"},"src_vpc":{"project_id":"my-project","subnetwork_name":"default","vpc_name":"default"},"start_time":"2021-03-10T19:12:27.103218426Z"},"logName":"projects/my-project/logs/compute.googleapis.com%2Fvpc_flows","receiveTimestamp":"2021-03-10T19:12:37.290540219Z","resource":{"labels":{"location":"us-central1-a","project_id":"my-project","subnetwork_id":"6371418023423442923","subnetwork_name":"default"},"type":"gce_subnetwork"},"timestamp":"2021-03-10T19:12:36.236924938Z"}"#;

    #[test]
    fn documented_entry_with_integers_as_strings() {
        let r = parse(ENTRY).expect("entry");
        assert_eq!(r.src_ip.to_string(), "10.128.0.2");
        assert_eq!(r.dst_ip.to_string(), "35.235.241.17");
        assert_eq!((r.src_port, r.dst_port, r.protocol), (22, 41548, 6));
        assert_eq!((r.bytes, r.packets), (3168, 13));
        assert_eq!(r.start_ns, 1_615_403_547_103_218_426);
        assert_eq!(r.end_ns, 1_615_403_548_103_218_426);
        assert_eq!(r.project.as_deref(), Some("my-project"));
        assert_eq!(r.payload.reporter.as_deref(), Some("SRC"));
        assert_eq!(r.payload.rtt_msec, Some(42));
        let i = r.payload.src_instance.as_ref().expect("src instance");
        assert_eq!(
            (i.vm_name.as_deref(), i.zone.as_deref()),
            (Some("vm-1"), Some("us-central1-a"))
        );
        let l = r.payload.dest_location.as_ref().expect("dest location");
        assert_eq!(l.country.as_deref(), Some("usa"));
    }

    /// The remote end's ASN, a Google service at the other end and the VM's managed instance
    /// group, as the record format documents them: kept in the flow's extras, side by side;
    /// what a record does not write is not listed.
    #[test]
    fn asn_google_service_and_instance_group_are_kept() {
        let e = r#"{"jsonPayload":{"bytes_sent":"800","packets_sent":"4","connection":{"src_ip":"10.128.0.7","src_port":43210,"dest_ip":"142.250.72.10","dest_port":443,"protocol":6},"start_time":"2026-11-29T10:00:00Z","end_time":"2026-11-29T10:00:05Z","reporter":"SRC","src_instance":{"project_id":"p-7","region":"europe-west1","vm_name":"web-7","zone":"europe-west1-b","managed_instance_group":{"name":"web-mig","zone":"europe-west1-b"}},"dest_location":{"continent":"America","country":"usa","asn":15169},"dest_google_service":{"type":"GOOGLE_API","service_name":"storage.googleapis.com","connectivity":"PUBLIC_IP"}},"logName":"projects/p-7/logs/compute.googleapis.com%2Fvpc_flows"}"#;
        let r = parse(e).expect("entry");
        let flow = crate::cloud::flows::gcp_flow(&r, 0.5);
        let x = serde_json::Value::Object(flow.cloud.extra);
        assert_eq!(
            x["dest_location"],
            serde_json::json!({"continent": "America", "country": "usa", "asn": 15169})
        );
        assert_eq!(
            x["dest_google_service"],
            serde_json::json!({"type": "GOOGLE_API", "service_name": "storage.googleapis.com", "connectivity": "PUBLIC_IP"})
        );
        assert_eq!(
            x["src_instance"],
            serde_json::json!({"project_id": "p-7", "region": "europe-west1", "vm_name": "web-7",
                "zone": "europe-west1-b",
                "managed_instance_group": {"name": "web-mig", "zone": "europe-west1-b"}})
        );
        for absent in [
            "src_location",
            "src_google_service",
            "dest_instance",
            "src_vpc",
            "dest_vpc",
        ] {
            assert!(x.get(absent).is_none(), "{absent}: {x}");
        }
    }

    /// Fields the flow model does not map (a gateway, GKE details, a later format's) are kept
    /// as written, nested objects and all; escaped keys and values are read, and a field the
    /// model maps keeps its meaning.
    #[test]
    fn every_other_payload_field_is_kept_as_written() {
        let e = r#"{"jsonPayload":{"connection":{"src_ip":"10.8.0.5","src_port":5432,"dest_ip":"10.8.1.9","dest_port":40001,"protocol":6},"bytes_sent":"120","packets_sent":"2","start_time":"2026-11-29T10:00:00Z","end_time":"2026-11-29T10:00:05Z","reporter":"DEST","round_trip_time":{"median_msec":"0.35"},"dest_gke_details":{"cluster":{"cluster_location":"europe-west1","cluster_name":"prod"},"pod":{"pod_name":"api-7f9c","pod_namespace":"shop","pod_workload":{"workload_name":"api","workload_type":"DEPLOYMENT"}},"service":[{"service_name":"api","service_namespace":"shop"}]},"src_gateway":{"type":"VPN_TUNNEL","project_id":"p-net","name":"tunnel-1","location":"europe-west1"},"network_service":{"dscp":0},"disposition":"ALLOWED","future_field":"café","dest_vpc":{"project_id":"p-8","vpc_name":"prod","subnetwork_name":"gke"}},"logName":"projects/p-8/logs/compute.googleapis.com%2Fvpc_flows"}"#;
        let r = parse(e).expect("entry");
        assert_eq!(r.payload.other.len(), 6, "{:?}", r.payload.other);
        let flow = crate::cloud::flows::gcp_flow(&r, 1.0);
        let x = serde_json::Value::Object(flow.cloud.extra);
        assert_eq!(
            x["round_trip_time"],
            serde_json::json!({"median_msec": "0.35"})
        );
        assert_eq!(
            x["dest_gke_details"]["pod"]["pod_workload"]["workload_type"],
            "DEPLOYMENT"
        );
        assert_eq!(
            x["dest_gke_details"]["service"][0]["service_namespace"],
            "shop"
        );
        assert_eq!(x["src_gateway"]["name"], "tunnel-1");
        assert_eq!(x["network_service"], serde_json::json!({"dscp": 0}));
        assert_eq!(x["disposition"], "ALLOWED");
        assert_eq!(x["future_field"], "café");
        assert_eq!(
            x["dest_vpc"],
            serde_json::json!({"project_id": "p-8", "vpc_name": "prod", "subnetwork_name": "gke"})
        );
        assert_eq!(
            (flow.bytes, flow.packets, flow.cloud.vpc.as_deref()),
            (120, 2, Some("prod"))
        );
        // A mapped field of the wrong type is still a bad record.
        let bad = e.replace(r#""packets_sent":"2""#, r#""packets_sent":{"n":2}"#);
        assert!(matches!(parse(&bad), Err(Reject::BadJson)));
    }

    /// A payload without its times takes its entry's `timestamp` (marked); one with only an
    /// end takes it for both; with no time at all, the entry is rejected.
    #[test]
    fn a_record_without_times_takes_its_entrys() {
        let e = |times: &str, stamp: &str| {
            format!(
                r#"{{"jsonPayload":{{"connection":{{"src_ip":"10.0.0.1","dest_ip":"10.0.0.2","src_port":1,"dest_port":2,"protocol":6}}{times}}}{stamp}}}"#
            )
        };
        let stamped = e("", r#","timestamp":"2026-11-29T10:00:05Z""#);
        let r = parse(&stamped).expect("entry time");
        assert!(r.time_from_entry);
        assert_eq!(
            (r.start_ns, r.end_ns),
            (1_795_946_405_000_000_000, 1_795_946_405_000_000_000)
        );
        let flow = crate::cloud::flows::gcp_flow(&r, 0.5);
        assert_eq!(flow.cloud.extra["time_from"], "entry");
        // No bytes_sent or packets_sent: absent, not zero.
        assert_eq!(
            flow.cloud.extra["absent"],
            serde_json::json!(["packets", "bytes"])
        );
        let end_only = e(r#","end_time":"2026-11-29T10:00:07Z""#, "");
        let r = parse(&end_only).expect("end only");
        assert!(!r.time_from_entry);
        assert_eq!(r.start_ns, r.end_ns);
        assert!(matches!(parse(&e("", "")), Err(Reject::BadTime)));
    }

    #[test]
    fn numbers_as_numbers_ipv6_and_project_from_the_log_name() {
        let e = r#"{"jsonPayload":{"bytes_sent":1500,"packets_sent":1,"connection":{"src_ip":"2600:1900:4000:1::5","dest_ip":"2600:1900:4000:1::9","src_port":"53000","dest_port":"443","protocol":"17"},"start_time":"2026-11-28T10:00:00Z","end_time":"2026-11-28T10:00:05Z","reporter":"DEST"},"logName":"projects/p-42/logs/compute.googleapis.com%2Fvpc_flows"}"#;
        let r = parse(e).expect("entry");
        assert_eq!(
            (r.src_port, r.dst_port, r.protocol, r.bytes),
            (53000, 443, 17, 1500)
        );
        assert_eq!(r.project.as_deref(), Some("p-42"));
        assert_eq!(r.dst_ip.to_string(), "2600:1900:4000:1::9");
    }

    #[test]
    fn bad_entries_are_rejected_by_reason() {
        let ok = ENTRY;
        let cases: Vec<(String, Reject)> = vec![
            ("{not json".into(), Reject::BadJson),
            (
                r#"{"jsonPayload":{"message":"hello"}}"#.into(),
                Reject::NotAFlow,
            ),
            (r#"{"textPayload":"a log line"}"#.into(), Reject::NotAFlow),
            (ok.replace("10.128.0.2", "10.128.0.256"), Reject::BadAddress),
            (
                ok.replace("\"dest_port\":41548", "\"dest_port\":70000"),
                Reject::BadPort,
            ),
            (
                ok.replace("\"bytes_sent\":\"3168\"", "\"bytes_sent\":\"31x\""),
                Reject::BadJson,
            ),
            (
                ok.replace("2021-03-10T19:12:27.103218426Z", "yesterday"),
                Reject::BadTime,
            ),
            (
                ok.replace("2021-03-10T19:12:27.103218426Z", "2021-03-10T19:12:29Z"),
                Reject::BadTime,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(parse(&e).map(|_| ()).unwrap_err(), want, "{e}");
        }
    }

    #[test]
    fn pubsub_deliveries_carry_entries_in_base64() {
        use base64::Engine as _;
        let data = base64::engine::general_purpose::STANDARD.encode(ENTRY);
        // A push request: one message.
        let push = format!(
            r#"{{"message":{{"attributes":{{}},"data":"{data}","messageId":"1","publishTime":"2021-03-10T19:12:37.5Z"}},"subscription":"projects/my-project/subscriptions/s"}}"#
        );
        assert_eq!(parse(&push).map(|_| ()).unwrap_err(), Reject::NotAFlow);
        let entries = pubsub_entries(&push).expect("a Pub/Sub delivery");
        assert_eq!(entries.len(), 1);
        let e = entries[0].as_ref().expect("decoded");
        assert_eq!(parse(e).expect("the entry").bytes, 3168);
        // A pull response: every message, a bad one in its place.
        let pull = format!(
            r#"{{"receivedMessages":[{{"ackId":"a","message":{{"data":"{data}"}}}},{{"ackId":"b","message":{{"data":"%%%"}}}},{{"ackId":"c","message":{{"messageId":"3"}}}}]}}"#
        );
        let entries = pubsub_entries(&pull).expect("a Pub/Sub delivery");
        assert_eq!(entries.len(), 3);
        assert!(entries[0].is_ok());
        assert_eq!(entries[1], Err(Reject::BadPubSubData));
        assert_eq!(entries[2], Err(Reject::BadPubSubData));
        // Base64 of bytes that are not UTF-8.
        let latin1 = r#"{"message":{"data":"6Q=="}}"#;
        assert_eq!(
            pubsub_entries(latin1).expect("delivery"),
            vec![Err(Reject::BadPubSubData)]
        );
        // Not a delivery: a log entry without a flow, and a `message` of another type.
        assert!(pubsub_entries(r#"{"protoPayload":{},"logName":"x"}"#).is_none());
        assert!(pubsub_entries(r#"{"message":"hello"}"#).is_none());
        assert!(pubsub_entries("not json").is_none());
    }
}
