//! AWS VPC flow log lines: a header line chooses the format, the rest are records. No input may
//! panic; a record that parses has both addresses unless it is NODATA/SKIPDATA.
#![no_main]

use controlplane::cloud::aws::{self, Format, Status};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.lines();
    let format = lines
        .next()
        .and_then(Format::from_header)
        .unwrap_or_default();
    for line in lines {
        if let Ok(r) = aws::parse(&format, line)
            && matches!(r.status, Some(Status::Ok) | None)
        {
            assert!(r.src_addr.is_some() && r.dst_addr.is_some());
            if let (Some(s), Some(e)) = (r.start_ms, r.end_ms) {
                assert!(s <= e);
            }
        }
    }
});
