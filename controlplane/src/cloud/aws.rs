//! AWS VPC Flow Logs, versions 2 to 8, in the default or a custom format, and transit-gateway
//! flow logs.
//!
//! A record is one line of space-separated fields; `-` means absent. The default format is
//! version 2's 14 fields. Files delivered to S3 start with a header line naming the fields, which
//! is how a custom format (any fields, any order) is announced. A record is parsed without
//! allocating: its fields borrow the line.
//!
//! `log-status` says what a record stands for: `OK` a flow, `NODATA` no traffic in the
//! interval, `SKIPDATA` flows that AWS dropped from the log (capacity or an internal error): those
//! are counted and reported, never passed over silently.

use std::net::IpAddr;

/// The fields this parser knows, by their AWS names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    Version,
    AccountId,
    InterfaceId,
    SrcAddr,
    DstAddr,
    SrcPort,
    DstPort,
    Protocol,
    Packets,
    Bytes,
    Start,
    End,
    Action,
    LogStatus,
    VpcId,
    SubnetId,
    InstanceId,
    TcpFlags,
    Type,
    PktSrcAddr,
    PktDstAddr,
    Region,
    AzId,
    SublocationType,
    SublocationId,
    PktSrcAwsService,
    PktDstAwsService,
    FlowDirection,
    TrafficPath,
    RejectReason,
    ResourceType,
    TgwId,
    TgwAttachmentId,
    TgwSrcVpcAccountId,
    TgwDstVpcAccountId,
    TgwSrcVpcId,
    TgwDstVpcId,
    TgwSrcSubnetId,
    TgwDstSubnetId,
    TgwSrcEni,
    TgwDstEni,
    TgwSrcAzId,
    TgwDstAzId,
    TgwPairAttachmentId,
    PacketsLostNoRoute,
    PacketsLostBlackhole,
    PacketsLostMtuExceeded,
    PacketsLostTtlExpired,
    /// A field this parser does not use (ECS fields, for example): kept out of the way.
    Other,
}

impl Field {
    pub fn from_name(name: &str) -> Field {
        use Field::*;
        match name.trim_start_matches("${").trim_end_matches('}') {
            "version" => Version,
            "account-id" => AccountId,
            "interface-id" => InterfaceId,
            "srcaddr" => SrcAddr,
            "dstaddr" => DstAddr,
            "srcport" => SrcPort,
            "dstport" => DstPort,
            "protocol" => Protocol,
            "packets" => Packets,
            "bytes" => Bytes,
            "start" => Start,
            "end" => End,
            "action" => Action,
            "log-status" => LogStatus,
            "vpc-id" => VpcId,
            "subnet-id" => SubnetId,
            "instance-id" => InstanceId,
            "tcp-flags" => TcpFlags,
            "type" => Type,
            "pkt-srcaddr" => PktSrcAddr,
            "pkt-dstaddr" => PktDstAddr,
            "region" => Region,
            "az-id" => AzId,
            "sublocation-type" => SublocationType,
            "sublocation-id" => SublocationId,
            "pkt-src-aws-service" => PktSrcAwsService,
            "pkt-dst-aws-service" => PktDstAwsService,
            "flow-direction" => FlowDirection,
            "traffic-path" => TrafficPath,
            "reject-reason" => RejectReason,
            "resource-type" => ResourceType,
            "tgw-id" => TgwId,
            "tgw-attachment-id" => TgwAttachmentId,
            "tgw-src-vpc-account-id" => TgwSrcVpcAccountId,
            "tgw-dst-vpc-account-id" => TgwDstVpcAccountId,
            "tgw-src-vpc-id" => TgwSrcVpcId,
            "tgw-dst-vpc-id" => TgwDstVpcId,
            "tgw-src-subnet-id" => TgwSrcSubnetId,
            "tgw-dst-subnet-id" => TgwDstSubnetId,
            "tgw-src-eni" => TgwSrcEni,
            "tgw-dst-eni" => TgwDstEni,
            "tgw-src-az-id" => TgwSrcAzId,
            "tgw-dst-az-id" => TgwDstAzId,
            "tgw-pair-attachment-id" => TgwPairAttachmentId,
            "packets-lost-no-route" => PacketsLostNoRoute,
            "packets-lost-blackhole" => PacketsLostBlackhole,
            "packets-lost-mtu-exceeded" => PacketsLostMtuExceeded,
            "packets-lost-ttl-expired" => PacketsLostTtlExpired,
            _ => Other,
        }
    }
}

/// The order of the fields in a file's records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Format {
    fields: Vec<Field>,
    /// Each field's name in the flow's extras (`ecs-cluster-name` as `ecs_cluster_name`), for
    /// the fields kept there verbatim.
    keys: Vec<String>,
}

/// Version 2's default format.
pub const DEFAULT_FIELDS: &str = "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status";

impl Default for Format {
    fn default() -> Self {
        Format::from_header(DEFAULT_FIELDS).expect("the default format")
    }
}

impl Format {
    /// A header line (field names, `${...}` allowed as in the format string). None if the line
    /// is not one: a header names `version` or at least `srcaddr` and `dstaddr` (TGW logs too).
    pub fn from_header(line: &str) -> Option<Format> {
        let fields: Vec<Field> = line
            .split_ascii_whitespace()
            .map(Field::from_name)
            .collect();
        let keys = line
            .split_ascii_whitespace()
            .map(|n| {
                n.trim_start_matches("${")
                    .trim_end_matches('}')
                    .replace('-', "_")
            })
            .collect();
        let has = |f| fields.contains(&f);
        let first_is_name = line
            .split_ascii_whitespace()
            .next()
            .is_some_and(|w| w.bytes().any(|b| b.is_ascii_alphabetic()) && !w.starts_with("eni-"));
        (first_is_name && has(Field::SrcAddr) && has(Field::DstAddr))
            .then_some(Format { fields, keys })
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// What `log-status` (or its absence) says a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    NoData,
    SkipData,
}

/// One flow record, fields borrowed from its line. Absent (`-`) fields are None.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record<'a> {
    pub version: Option<u8>,
    pub account_id: Option<&'a str>,
    pub interface_id: Option<&'a str>,
    pub src_addr: Option<IpAddr>,
    pub dst_addr: Option<IpAddr>,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    pub protocol: Option<u8>,
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
    /// Unix seconds (records in milliseconds are converted; see [`Record::start_ms`]).
    pub start_ms: Option<u64>,
    pub end_ms: Option<u64>,
    /// ACCEPT or REJECT.
    pub action: Option<&'a str>,
    pub status: Option<Status>,
    pub vpc_id: Option<&'a str>,
    pub subnet_id: Option<&'a str>,
    pub instance_id: Option<&'a str>,
    /// OR of the interval's TCP flags (FIN 1, SYN 2, RST 4, SYN-ACK 18).
    pub tcp_flags: Option<u8>,
    /// IPv4, IPv6 or EFA.
    pub traffic_type: Option<&'a str>,
    /// The packet's own addresses, when NAT or an intermediate layer changed them.
    pub pkt_src_addr: Option<IpAddr>,
    pub pkt_dst_addr: Option<IpAddr>,
    pub region: Option<&'a str>,
    pub az_id: Option<&'a str>,
    pub pkt_src_aws_service: Option<&'a str>,
    pub pkt_dst_aws_service: Option<&'a str>,
    /// ingress or egress (relative to the interface).
    pub flow_direction: Option<&'a str>,
    pub traffic_path: Option<u8>,
    pub reject_reason: Option<&'a str>,
    /// Transit-gateway flow logs.
    pub resource_type: Option<&'a str>,
    pub tgw_id: Option<&'a str>,
    pub tgw_attachment_id: Option<&'a str>,
    /// The sum of the four lost-packet causes (transit-gateway logs), each also kept apart in
    /// `verbatim`.
    pub packets_lost: Option<u64>,
    /// Every other field present, as (key, value), verbatim: ECS (v7), sublocation, the
    /// transit gateway's source and destination context, the lost-packet causes, and names
    /// this parser does not know. Absent (`-`) fields are not listed.
    pub verbatim: Vec<(&'a str, &'a str)>,
}

/// Why a line was not taken, by reason (for the import summary and the counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reject {
    /// Not as many fields as the format names.
    FieldCount,
    /// A field that must be a number, an address or a known word is not.
    BadValue(Field),
    /// An `OK` record without both addresses.
    MissingAddress,
    /// `end` before `start`.
    TimeOrder,
}

impl Reject {
    pub fn reason(&self) -> String {
        match self {
            Reject::FieldCount => "field_count".into(),
            Reject::BadValue(f) => format!("bad_{f:?}").to_lowercase(),
            Reject::MissingAddress => "missing_address".into(),
            Reject::TimeOrder => "end_before_start".into(),
        }
    }
}

fn absent(v: &str) -> bool {
    v == "-"
}

fn num<T: std::str::FromStr>(v: &str, f: Field) -> Result<Option<T>, Reject> {
    if absent(v) {
        return Ok(None);
    }
    v.parse().map(Some).map_err(|_| Reject::BadValue(f))
}

fn text(v: &str) -> Option<&str> {
    (!absent(v)).then_some(v)
}

/// Epoch seconds, or milliseconds (some records carry them): anything past the year 5138 in
/// seconds is taken as milliseconds. Returned in milliseconds.
fn epoch_ms(v: &str, f: Field) -> Result<Option<u64>, Reject> {
    Ok(num::<u64>(v, f)?.map(|t| if t >= 100_000_000_000 { t } else { t * 1000 }))
}

/// Parses one record of `format`. Blank lines are the caller's to skip.
pub fn parse<'a>(format: &'a Format, line: &'a str) -> Result<Record<'a>, Reject> {
    let mut r = Record::default();
    let mut n = 0;
    let mut lost = 0u64;
    let mut any_lost = false;
    for (i, v) in line.split_ascii_whitespace().enumerate() {
        let Some(&f) = format.fields.get(i) else {
            return Err(Reject::FieldCount);
        };
        // This field's name in the extras, for the fields kept verbatim.
        let key = || format.keys[i].as_str();
        n += 1;
        use Field::*;
        match f {
            Version => r.version = num(v, f)?,
            AccountId => r.account_id = text(v),
            InterfaceId => r.interface_id = text(v),
            SrcAddr => r.src_addr = num(v, f)?,
            DstAddr => r.dst_addr = num(v, f)?,
            SrcPort => r.src_port = num(v, f)?,
            DstPort => r.dst_port = num(v, f)?,
            Protocol => r.protocol = num(v, f)?,
            Packets => r.packets = num(v, f)?,
            Bytes => r.bytes = num(v, f)?,
            Start => r.start_ms = epoch_ms(v, f)?,
            End => r.end_ms = epoch_ms(v, f)?,
            Action => {
                r.action = match v {
                    "ACCEPT" | "REJECT" => Some(v),
                    "-" => None,
                    _ => return Err(Reject::BadValue(f)),
                }
            }
            LogStatus => {
                r.status = match v {
                    "OK" => Some(Status::Ok),
                    "NODATA" => Some(Status::NoData),
                    "SKIPDATA" => Some(Status::SkipData),
                    "-" => None,
                    _ => return Err(Reject::BadValue(f)),
                }
            }
            VpcId => r.vpc_id = text(v),
            SubnetId => r.subnet_id = text(v),
            InstanceId => r.instance_id = text(v),
            TcpFlags => r.tcp_flags = num(v, f)?,
            Type => r.traffic_type = text(v),
            PktSrcAddr => r.pkt_src_addr = num(v, f)?,
            PktDstAddr => r.pkt_dst_addr = num(v, f)?,
            Region => r.region = text(v),
            AzId => r.az_id = text(v),
            PktSrcAwsService => r.pkt_src_aws_service = text(v),
            PktDstAwsService => r.pkt_dst_aws_service = text(v),
            FlowDirection => r.flow_direction = text(v),
            TrafficPath => r.traffic_path = num(v, f)?,
            RejectReason => r.reject_reason = text(v),
            ResourceType => r.resource_type = text(v),
            TgwId => r.tgw_id = text(v),
            TgwAttachmentId => r.tgw_attachment_id = text(v),
            PacketsLostNoRoute
            | PacketsLostBlackhole
            | PacketsLostMtuExceeded
            | PacketsLostTtlExpired => {
                if let Some(x) = num::<u64>(v, f)? {
                    lost = lost.saturating_add(x);
                    any_lost = true;
                    r.verbatim.push((key(), v));
                }
            }
            SublocationType | SublocationId | TgwSrcVpcAccountId | TgwDstVpcAccountId
            | TgwSrcVpcId | TgwDstVpcId | TgwSrcSubnetId | TgwDstSubnetId | TgwSrcEni
            | TgwDstEni | TgwSrcAzId | TgwDstAzId | TgwPairAttachmentId | Other => {
                if let Some(v) = text(v) {
                    r.verbatim.push((key(), v));
                }
            }
        }
    }
    if n != format.fields.len() {
        return Err(Reject::FieldCount);
    }
    if any_lost {
        r.packets_lost = Some(lost);
    }
    // A flow (OK, or a format without log-status, as transit-gateway logs have) names both ends.
    if matches!(r.status, Some(Status::Ok) | None) && (r.src_addr.is_none() || r.dst_addr.is_none())
    {
        return Err(Reject::MissingAddress);
    }
    if let (Some(s), Some(e)) = (r.start_ms, r.end_ms)
        && e < s
    {
        return Err(Reject::TimeOrder);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("ip"))
    }

    /// The examples of the VPC Flow Logs user guide ("Flow log record examples").
    #[test]
    fn default_format_records_from_the_user_guide() {
        let f = Format::default();
        let r = parse(&f, "2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249 1418530010 1418530070 ACCEPT OK").expect("accepted");
        assert_eq!(r.version, Some(2));
        assert_eq!(r.account_id, Some("123456789010"));
        assert_eq!(r.interface_id, Some("eni-1235b8ca123456789"));
        assert_eq!(
            (r.src_addr, r.dst_addr),
            (ip("172.31.16.139"), ip("172.31.16.21"))
        );
        assert_eq!(
            (r.src_port, r.dst_port, r.protocol),
            (Some(20641), Some(22), Some(6))
        );
        assert_eq!((r.packets, r.bytes), (Some(20), Some(4249)));
        assert_eq!(
            (r.start_ms, r.end_ms),
            (Some(1_418_530_010_000), Some(1_418_530_070_000))
        );
        assert_eq!((r.action, r.status), (Some("ACCEPT"), Some(Status::Ok)));

        let r = parse(&f, "2 123456789010 eni-1235b8ca123456789 172.31.9.69 172.31.9.12 49761 3389 6 20 4249 1418530010 1418530070 REJECT OK").expect("rejected");
        assert_eq!((r.action, r.dst_port), (Some("REJECT"), Some(3389)));

        let r = parse(
            &f,
            "2 123456789010 eni-1235b8ca123456789 - - - - - - - 1431280876 1431280934 - NODATA",
        )
        .expect("nodata");
        assert_eq!(
            (r.status, r.src_addr, r.packets),
            (Some(Status::NoData), None, None)
        );

        let r = parse(
            &f,
            "2 123456789010 eni-11111111aaaaaaaaa - - - - - - - 1431280876 1431280934 - SKIPDATA",
        )
        .expect("skipdata");
        assert_eq!(r.status, Some(Status::SkipData));

        let r = parse(&f, "2 123456789010 eni-1235b8ca123456789 2001:db8:1234:a100:8d6e:3477:df66:f105 2001:db8:1234:a102:3304:8879:34cf:4071 34892 22 6 54 8855 1477913708 1477913820 ACCEPT OK").expect("ipv6");
        assert_eq!(r.src_addr, ip("2001:db8:1234:a100:8d6e:3477:df66:f105"));
    }

    /// A custom format announced by its header, with NAT (pkt-*) and TCP flags, as in the
    /// guide's NAT gateway example.
    #[test]
    fn custom_format_from_its_header_line() {
        let f = Format::from_header("version vpc-id subnet-id instance-id interface-id account-id type srcaddr dstaddr srcport dstport pkt-srcaddr pkt-dstaddr protocol bytes packets start end action tcp-flags log-status").expect("header");
        assert_eq!(f.len(), 21);
        let r = parse(
            &f,
            "3 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 - eni-1235b8ca123456789 123456789010 IPv4 10.0.1.5 10.0.0.220 10.0.1.5 203.0.113.5 10.0.0.220 203.0.113.5 6 1234 10 1566848875 1566848933 ACCEPT 3 OK",
        );
        // Addresses where the ports belong.
        assert_eq!(r, Err(Reject::BadValue(Field::SrcPort)));
        let r = parse(&f, "3 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 - eni-1235b8ca123456789 123456789010 IPv4 10.0.1.5 10.0.0.220 39812 80 10.0.1.5 203.0.113.5 6 1234 10 1566848875 1566848933 ACCEPT 3 OK").expect("nat");
        assert_eq!(
            (r.vpc_id, r.instance_id),
            (Some("vpc-abcdefab012345678"), None)
        );
        assert_eq!(
            (r.pkt_src_addr, r.pkt_dst_addr),
            (ip("10.0.1.5"), ip("203.0.113.5"))
        );
        assert_eq!((r.tcp_flags, r.traffic_type), (Some(3), Some("IPv4")));
        assert_eq!((r.bytes, r.packets), (Some(1234), Some(10)));
    }

    #[test]
    fn version_5_and_8_fields_and_milliseconds() {
        let f = Format::from_header("${version} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status} ${region} ${az-id} ${pkt-src-aws-service} ${pkt-dst-aws-service} ${flow-direction} ${traffic-path} ${reject-reason} ${ecs-cluster-name}").expect("header");
        let r = parse(&f, "8 10.0.0.9 52.94.133.131 50120 443 6 12 3000 1732780800123 1732780860456 REJECT OK us-east-1 use1-az4 - S3 egress 8 BPA my-cluster").expect("v8");
        assert_eq!(
            (r.start_ms, r.end_ms),
            (Some(1_732_780_800_123), Some(1_732_780_860_456))
        );
        assert_eq!((r.region, r.az_id), (Some("us-east-1"), Some("use1-az4")));
        assert_eq!(
            (r.pkt_src_aws_service, r.pkt_dst_aws_service),
            (None, Some("S3"))
        );
        assert_eq!(
            (r.flow_direction, r.traffic_path, r.reject_reason),
            (Some("egress"), Some(8), Some("BPA"))
        );
    }

    /// Transit-gateway flow logs: no log-status, packets lost by cause.
    #[test]
    fn transit_gateway_records() {
        let f = Format::from_header("version resource-type account-id tgw-id tgw-attachment-id tgw-src-vpc-account-id tgw-dst-vpc-account-id tgw-src-vpc-id tgw-dst-vpc-id tgw-src-subnet-id tgw-dst-subnet-id tgw-src-eni tgw-dst-eni tgw-src-az-id tgw-dst-az-id tgw-pair-attachment-id srcaddr dstaddr srcport dstport protocol packets bytes start end log-status type packets-lost-no-route packets-lost-blackhole packets-lost-mtu-exceeded packets-lost-ttl-expired tcp-flags region flow-direction pkt-src-aws-service pkt-dst-aws-service").expect("header");
        let r = parse(&f, "6 TransitGateway 123456789010 tgw-0a1b2c3d4e5f67890 tgw-attach-0a1b2c3d4e5f67890 123456789010 123456789011 vpc-0a1b2c3d4e5f67890 vpc-0f1e2d3c4b5a69870 subnet-0a1b2c3d4e5f67890 subnet-0f1e2d3c4b5a69870 eni-0a1b2c3d4e5f67890 eni-0f1e2d3c4b5a69870 use1-az1 use1-az2 tgw-attach-0f1e2d3c4b5a69870 10.0.1.10 10.1.2.20 44321 5432 6 40 12000 1732780800 1732780860 OK IPv4 0 2 0 1 19 us-east-1 egress - -").expect("tgw");
        assert_eq!(
            (r.resource_type, r.tgw_id),
            (Some("TransitGateway"), Some("tgw-0a1b2c3d4e5f67890"))
        );
        assert_eq!(r.packets_lost, Some(3));
        assert_eq!((r.dst_port, r.tcp_flags), (Some(5432), Some(19)));
        // The source and destination context, and each lost-packet cause, kept apart.
        assert_eq!(
            r.verbatim,
            [
                ("tgw_src_vpc_account_id", "123456789010"),
                ("tgw_dst_vpc_account_id", "123456789011"),
                ("tgw_src_vpc_id", "vpc-0a1b2c3d4e5f67890"),
                ("tgw_dst_vpc_id", "vpc-0f1e2d3c4b5a69870"),
                ("tgw_src_subnet_id", "subnet-0a1b2c3d4e5f67890"),
                ("tgw_dst_subnet_id", "subnet-0f1e2d3c4b5a69870"),
                ("tgw_src_eni", "eni-0a1b2c3d4e5f67890"),
                ("tgw_dst_eni", "eni-0f1e2d3c4b5a69870"),
                ("tgw_src_az_id", "use1-az1"),
                ("tgw_dst_az_id", "use1-az2"),
                ("tgw_pair_attachment_id", "tgw-attach-0f1e2d3c4b5a69870"),
                ("packets_lost_no_route", "0"),
                ("packets_lost_blackhole", "2"),
                ("packets_lost_mtu_exceeded", "0"),
                ("packets_lost_ttl_expired", "1"),
            ]
        );
        let flow = crate::cloud::flows::aws_flow(&r, 0);
        let c = &flow.cloud;
        assert_eq!(
            (c.vpc.as_deref(), c.subnet.as_deref(), c.zone.as_deref()),
            (
                Some("vpc-0a1b2c3d4e5f67890"),
                Some("subnet-0a1b2c3d4e5f67890"),
                Some("use1-az1")
            ),
            "the source side's"
        );
        assert_eq!(c.extra["tgw_dst_vpc_id"], "vpc-0f1e2d3c4b5a69870");
        assert_eq!(c.extra["packets_lost_blackhole"], 2);
        assert_eq!(c.extra["packets_lost_ttl_expired"], 1);
        assert_eq!(c.extra["packets_lost"], 3);
    }

    /// Version 7's ECS fields and version 5's sublocation, in a custom format as the user guide
    /// names them (an ECS task on an Outpost), and a field name this parser does not know: all
    /// kept verbatim in the flow's extras; absent ones not listed.
    #[test]
    fn ecs_and_sublocation_fields_are_kept() {
        let f = Format::from_header("version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status sublocation-type sublocation-id ecs-cluster-name ecs-cluster-arn ecs-container-instance-id ecs-container-instance-arn ecs-service-name ecs-task-definition-arn ecs-task-id ecs-task-arn ecs-container-id ecs-second-container-id some-future-field").expect("header");
        let r = parse(&f, "7 123456789012 eni-0c3b2a1f0e9d8c7b6 10.0.2.15 10.0.4.8 43122 8080 6 12 4210 1732780800 1732780860 ACCEPT OK outpost op-0a1b2c3d4e5f67890 web-cluster arn:aws:ecs:us-east-1:123456789012:cluster/web-cluster 0a1b2c3d4e5f4a5b8c7d6e5f4a3b2c1d arn:aws:ecs:us-east-1:123456789012:container-instance/web-cluster/0a1b2c3d4e5f4a5b8c7d6e5f4a3b2c1d checkout arn:aws:ecs:us-east-1:123456789012:task-definition/checkout:14 1f2e3d4c5b6a47988a7b6c5d4e3f2a1b arn:aws:ecs:us-east-1:123456789012:task/web-cluster/1f2e3d4c5b6a47988a7b6c5d4e3f2a1b 5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f - x-1").expect("ecs");
        let flow = crate::cloud::flows::aws_flow(&r, 0);
        let e = &flow.cloud.extra;
        for (k, v) in [
            ("sublocation_type", "outpost"),
            ("sublocation_id", "op-0a1b2c3d4e5f67890"),
            ("ecs_cluster_name", "web-cluster"),
            (
                "ecs_cluster_arn",
                "arn:aws:ecs:us-east-1:123456789012:cluster/web-cluster",
            ),
            (
                "ecs_container_instance_id",
                "0a1b2c3d4e5f4a5b8c7d6e5f4a3b2c1d",
            ),
            (
                "ecs_container_instance_arn",
                "arn:aws:ecs:us-east-1:123456789012:container-instance/web-cluster/0a1b2c3d4e5f4a5b8c7d6e5f4a3b2c1d",
            ),
            ("ecs_service_name", "checkout"),
            (
                "ecs_task_definition_arn",
                "arn:aws:ecs:us-east-1:123456789012:task-definition/checkout:14",
            ),
            ("ecs_task_id", "1f2e3d4c5b6a47988a7b6c5d4e3f2a1b"),
            (
                "ecs_task_arn",
                "arn:aws:ecs:us-east-1:123456789012:task/web-cluster/1f2e3d4c5b6a47988a7b6c5d4e3f2a1b",
            ),
            (
                "ecs_container_id",
                "5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f",
            ),
            ("some_future_field", "x-1"),
        ] {
            assert_eq!(e.get(k).and_then(|v| v.as_str()), Some(v), "{k}: {e:?}");
        }
        // Absent (`-`): not listed, not an empty string.
        assert!(!e.contains_key("ecs_second_container_id"), "{e:?}");
        assert_eq!(e.len(), 12, "{e:?}");
    }

    #[test]
    fn bad_lines_are_rejected_by_reason() {
        let f = Format::default();
        let cases = [
            (
                "2 123 eni-1 10.0.0.1 10.0.0.2 1 22 6 20 4249 1418530010 1418530070 ACCEPT",
                Reject::FieldCount,
            ),
            (
                "2 123 eni-1 10.0.0.1 10.0.0.2 1 22 6 20 4249 1418530010 1418530070 ACCEPT OK extra",
                Reject::FieldCount,
            ),
            (
                "2 123 eni-1 10.0.0.300 10.0.0.2 1 22 6 20 4249 1418530010 1418530070 ACCEPT OK",
                Reject::BadValue(Field::SrcAddr),
            ),
            (
                "2 123 eni-1 10.0.0.1 10.0.0.2 70000 22 6 20 4249 1418530010 1418530070 ACCEPT OK",
                Reject::BadValue(Field::SrcPort),
            ),
            (
                "2 123 eni-1 10.0.0.1 10.0.0.2 1 22 6 -20 4249 1418530010 1418530070 ACCEPT OK",
                Reject::BadValue(Field::Packets),
            ),
            (
                "2 123 eni-1 10.0.0.1 10.0.0.2 1 22 6 20 4249 1418530010 1418530070 ALLOW OK",
                Reject::BadValue(Field::Action),
            ),
            (
                "2 123 eni-1 10.0.0.1 10.0.0.2 1 22 6 20 4249 1418530010 1418530070 ACCEPT DONE",
                Reject::BadValue(Field::LogStatus),
            ),
            (
                "2 123 eni-1 - 10.0.0.2 1 22 6 20 4249 1418530010 1418530070 ACCEPT OK",
                Reject::MissingAddress,
            ),
            (
                "2 123 eni-1 10.0.0.1 10.0.0.2 1 22 6 20 4249 1418530070 1418530010 ACCEPT OK",
                Reject::TimeOrder,
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse(&f, line), Err(want), "{line}");
        }
        assert_eq!(Reject::BadValue(Field::SrcPort).reason(), "bad_srcport");
    }

    #[test]
    fn header_detection() {
        assert!(Format::from_header(DEFAULT_FIELDS).is_some());
        assert!(Format::from_header("2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249 1418530010 1418530070 ACCEPT OK").is_none());
        assert!(Format::from_header("version account-id interface-id").is_none());
    }
}
