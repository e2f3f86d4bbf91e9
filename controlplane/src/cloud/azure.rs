//! Azure flow logs: NSG flow logs version 2 and VNet flow logs version 4, as written to the
//! storage account (`{"records": [...]}` per hourly blob).
//!
//! NSG v2: `records[].properties.flows[].flows[].flowTuples[]`, each tuple
//! `ts,src,dst,sport,dport,T|U,I|O,A|D,B|C|E,pktsOut,bytesOut,pktsIn,bytesIn` (seconds; counts
//! empty on B). VNet v4: `records[].flowRecords.flows[].flowGroups[].flowTuples[]`, each tuple
//! `ts,src,dst,sport,dport,protocol,I|O,B|C|E|D,encryption,pktsOut,bytesOut,pktsIn,bytesIn`
//! (milliseconds; D is a denied flow). Counts are since the flow's previous tuple, so they add up.

use std::{borrow::Cow, net::IpAddr};

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct Blob<'a> {
    #[serde(borrow)]
    pub records: Vec<Record<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct Record<'a> {
    #[serde(
        rename = "resourceId",
        borrow,
        default,
        deserialize_with = "super::borrowed"
    )]
    pub resource_id: Option<Cow<'a, str>>,
    #[serde(
        rename = "flowLogResourceID",
        borrow,
        default,
        deserialize_with = "super::borrowed"
    )]
    pub flow_log_resource_id: Option<Cow<'a, str>>,
    #[serde(
        rename = "targetResourceID",
        borrow,
        default,
        deserialize_with = "super::borrowed"
    )]
    pub target_resource_id: Option<Cow<'a, str>>,
    #[serde(
        rename = "macAddress",
        borrow,
        default,
        deserialize_with = "super::borrowed"
    )]
    pub mac_address: Option<Cow<'a, str>>,
    #[serde(rename = "flowLogVersion")]
    pub flow_log_version: Option<u32>,
    #[serde(borrow)]
    pub properties: Option<NsgProperties<'a>>,
    #[serde(rename = "flowRecords", borrow)]
    pub flow_records: Option<VnetFlows<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct NsgProperties<'a> {
    #[serde(rename = "Version")]
    pub version: Option<u32>,
    #[serde(borrow, default)]
    pub flows: Vec<NsgRule<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct NsgRule<'a> {
    #[serde(borrow, default, deserialize_with = "super::borrowed")]
    pub rule: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub flows: Vec<NsgMacFlows<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct NsgMacFlows<'a> {
    #[serde(borrow, default, deserialize_with = "super::borrowed")]
    pub mac: Option<Cow<'a, str>>,
    #[serde(rename = "flowTuples", borrow, default)]
    pub flow_tuples: Vec<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
pub struct VnetFlows<'a> {
    #[serde(borrow, default)]
    pub flows: Vec<VnetAcl<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct VnetAcl<'a> {
    #[serde(
        rename = "aclID",
        borrow,
        default,
        deserialize_with = "super::borrowed"
    )]
    pub acl_id: Option<Cow<'a, str>>,
    #[serde(rename = "flowGroups", borrow, default)]
    pub flow_groups: Vec<VnetGroup<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct VnetGroup<'a> {
    #[serde(borrow, default, deserialize_with = "super::borrowed")]
    pub rule: Option<Cow<'a, str>>,
    #[serde(rename = "flowTuples", borrow, default)]
    pub flow_tuples: Vec<Cow<'a, str>>,
}

/// One flow tuple, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuple {
    /// Unix milliseconds.
    pub time_ms: u64,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    /// true: inbound (I), false: outbound (O).
    pub inbound: bool,
    /// false when the flow was denied (v2 decision D, v4 state D).
    pub allowed: bool,
    /// B (begin), C (continuing), E (end) or D (denied, v4); none in a version 1 tuple,
    /// which has no state field.
    pub state: Option<char>,
    /// v4 only: X, NX, NX_HW_NOT_SUPPORTED, ...
    pub encryption: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub reverse_packets: u64,
    pub reverse_bytes: u64,
    /// The tuple wrote its four counts (a version 1 tuple has none, a version 2 begin tuple
    /// leaves them empty): otherwise they are 0 here and absent in the flow's extras.
    pub counts_known: bool,
}

/// Why a tuple was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    FieldCount,
    BadTime,
    BadAddress,
    BadPort,
    BadProtocol,
    BadDirection,
    BadDecisionOrState,
    BadCount,
}

impl Reject {
    pub fn reason(&self) -> &'static str {
        match self {
            Reject::FieldCount => "tuple_field_count",
            Reject::BadTime => "bad_time",
            Reject::BadAddress => "bad_address",
            Reject::BadPort => "bad_port",
            Reject::BadProtocol => "bad_protocol",
            Reject::BadDirection => "bad_direction",
            Reject::BadDecisionOrState => "bad_decision_or_state",
            Reject::BadCount => "bad_count",
        }
    }
}

fn count(v: &str) -> Result<u64, Reject> {
    if v.is_empty() {
        Ok(0)
    } else {
        v.parse().map_err(|_| Reject::BadCount)
    }
}

/// Seconds or milliseconds (anything from 1e11 on is taken as ms); returned in ms.
fn time_ms(v: &str) -> Result<u64, Reject> {
    let t: u64 = v.parse().map_err(|_| Reject::BadTime)?;
    Ok(if t >= 100_000_000_000 { t } else { t * 1000 })
}

/// Parses an NSG v2 tuple (`version` 1 or 2: v1 has no counts) or a VNet v4 tuple.
pub fn parse_tuple(t: &str, vnet: bool) -> Result<Tuple, Reject> {
    let f: Vec<&str> = t.split(',').collect();
    // NSG v1 tuples stop after the decision (8 fields).
    if !(f.len() == 13 || (!vnet && f.len() == 8)) {
        return Err(Reject::FieldCount);
    }
    let ip = |s: &str| s.parse::<IpAddr>().map_err(|_| Reject::BadAddress);
    let port = |s: &str| s.parse::<u16>().map_err(|_| Reject::BadPort);
    let protocol = if vnet {
        f[5].parse::<u8>().map_err(|_| Reject::BadProtocol)?
    } else {
        match f[5] {
            "T" => 6,
            "U" => 17,
            _ => return Err(Reject::BadProtocol),
        }
    };
    let inbound = match f[6] {
        "I" => true,
        "O" => false,
        _ => return Err(Reject::BadDirection),
    };
    let (allowed, state, encryption, counts) = if vnet {
        let state = match f[7] {
            "B" | "C" | "E" | "D" => f[7].chars().next().expect("one letter"),
            _ => return Err(Reject::BadDecisionOrState),
        };
        (state != 'D', Some(state), Some(f[8].to_string()), &f[9..13])
    } else {
        let allowed = match f[7] {
            "A" => true,
            "D" => false,
            _ => return Err(Reject::BadDecisionOrState),
        };
        let state = match f.get(8).copied() {
            None => None,
            Some(s @ ("B" | "C" | "E")) => s.chars().next(),
            Some(_) => return Err(Reject::BadDecisionOrState),
        };
        (allowed, state, None, f.get(9..13).unwrap_or(&[]))
    };
    let c = |i: usize| counts.get(i).map_or(Ok(0), |v| count(v));
    let counts_known = counts.len() == 4 && counts.iter().all(|v| !v.is_empty());
    Ok(Tuple {
        counts_known,
        time_ms: time_ms(f[0])?,
        src_ip: ip(f[1])?,
        dst_ip: ip(f[2])?,
        src_port: port(f[3])?,
        dst_port: port(f[4])?,
        protocol,
        inbound,
        allowed,
        state,
        encryption,
        packets: c(0)?,
        bytes: c(1)?,
        reverse_packets: c(2)?,
        reverse_bytes: c(3)?,
    })
}

/// The subscription id in a resource id ("/SUBSCRIPTIONS/<id>/RESOURCEGROUPS/...").
pub fn subscription(resource_id: &str) -> Option<&str> {
    let mut it = resource_id.split('/');
    while let Some(p) = it.next() {
        if p.eq_ignore_ascii_case("subscriptions") {
            return it.next();
        }
    }
    None
}

/// The name after `kind` in a resource id ("virtualNetworks" -> the VNet's name).
pub fn resource_name<'a>(resource_id: &'a str, kind: &str) -> Option<&'a str> {
    let mut it = resource_id.split('/');
    while let Some(p) = it.next() {
        if p.eq_ignore_ascii_case(kind) {
            return it.next();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nsg_v2_tuples_from_the_documentation() {
        let t = parse_tuple(
            "1487282421,42.119.146.95,10.1.0.4,51529,5358,T,I,D,B,,,,",
            false,
        )
        .expect("denied begin");
        assert_eq!(t.time_ms, 1_487_282_421_000);
        assert_eq!((t.src_port, t.dst_port, t.protocol), (51529, 5358, 6));
        assert!(t.inbound && !t.allowed);
        assert_eq!((t.state, t.packets, t.bytes), (Some('B'), 0, 0));
        let t = parse_tuple(
            "1487282393,10.1.0.4,13.67.143.117,59932,443,T,O,A,E,1,66,1,66",
            false,
        )
        .expect("allowed end");
        assert!(!t.inbound && t.allowed);
        assert_eq!(
            (
                t.state,
                t.packets,
                t.bytes,
                t.reverse_packets,
                t.reverse_bytes
            ),
            (Some('E'), 1, 66, 1, 66)
        );
        // Version 1: no state (none invented) and no counts.
        let t = parse_tuple("1487282421,10.1.0.4,10.1.0.5,40000,53,U,O,A", false).expect("v1");
        assert_eq!((t.protocol, t.state, t.packets), (17, None, 0));
    }

    #[test]
    fn vnet_v4_tuples_from_the_documentation() {
        let t = parse_tuple(
            "1663146003606,10.0.0.6,192.0.2.180,23956,443,6,O,E,NX,3,767,2,1580",
            true,
        )
        .expect("end");
        assert_eq!(t.time_ms, 1_663_146_003_606);
        assert_eq!((t.protocol, t.state, t.allowed), (6, Some('E'), true));
        assert_eq!(t.encryption.as_deref(), Some("NX"));
        assert_eq!(
            (t.packets, t.bytes, t.reverse_packets, t.reverse_bytes),
            (3, 767, 2, 1580)
        );
        let t = parse_tuple(
            "1663146003599,203.0.113.9,10.0.0.6,51000,3389,6,I,D,NX,0,0,0,0",
            true,
        )
        .expect("denied");
        assert!(!t.allowed && t.inbound);
        let t = parse_tuple(
            "1663146003599,2001:db8::1,2001:db8::2,0,0,58,I,B,NX,0,0,0,0",
            true,
        )
        .expect("v6 icmp");
        assert_eq!(t.protocol, 58);
    }

    #[test]
    fn bad_tuples_are_rejected_by_reason() {
        let cases = [
            (
                "1487282421,42.119.146.95,10.1.0.4,51529,5358,T,I,D",
                false,
                None,
            ),
            (
                "1487282421,42.119.146.95,10.1.0.4,51529,5358,T,I,D,B,,",
                false,
                Some(Reject::FieldCount),
            ),
            (
                "14872x,42.119.146.95,10.1.0.4,51529,5358,T,I,D,B,,,,",
                false,
                Some(Reject::BadTime),
            ),
            (
                "1487282421,42.119.146,10.1.0.4,51529,5358,T,I,D,B,,,,",
                false,
                Some(Reject::BadAddress),
            ),
            (
                "1487282421,42.119.146.95,10.1.0.4,65536,5358,T,I,D,B,,,,",
                false,
                Some(Reject::BadPort),
            ),
            (
                "1487282421,42.119.146.95,10.1.0.4,51529,5358,X,I,D,B,,,,",
                false,
                Some(Reject::BadProtocol),
            ),
            (
                "1487282421,42.119.146.95,10.1.0.4,51529,5358,T,X,D,B,,,,",
                false,
                Some(Reject::BadDirection),
            ),
            (
                "1487282421,42.119.146.95,10.1.0.4,51529,5358,T,I,Q,B,,,,",
                false,
                Some(Reject::BadDecisionOrState),
            ),
            (
                "1487282421,42.119.146.95,10.1.0.4,51529,5358,T,I,A,E,1,x,1,66",
                false,
                Some(Reject::BadCount),
            ),
            (
                "1663146003606,10.0.0.6,192.0.2.180,23956,443,6,O,Z,NX,3,767,2,1580",
                true,
                Some(Reject::BadDecisionOrState),
            ),
            (
                "1663146003606,10.0.0.6,192.0.2.180,23956,443,300,O,E,NX,3,767,2,1580",
                true,
                Some(Reject::BadProtocol),
            ),
        ];
        for (t, vnet, want) in cases {
            assert_eq!(parse_tuple(t, vnet).err(), want, "{t}");
        }
    }

    #[test]
    fn resource_ids() {
        let id = "/SUBSCRIPTIONS/00000000-0000-0000-0000-000000000000/RESOURCEGROUPS/FABRIKAMRG/PROVIDERS/MICROSOFT.NETWORK/NETWORKSECURITYGROUPS/FABRIAKMVM1-NSG";
        assert_eq!(
            subscription(id),
            Some("00000000-0000-0000-0000-000000000000")
        );
        assert_eq!(
            resource_name(id, "networkSecurityGroups"),
            Some("FABRIAKMVM1-NSG")
        );
        assert_eq!(
            resource_name(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/myVNet",
                "virtualNetworks"
            ),
            Some("myVNet")
        );
    }
}
