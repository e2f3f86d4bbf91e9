//! Azure flow tuples (NSG v2 and VNet v4) and whole blobs: no input may panic.
#![no_main]

use controlplane::cloud::azure;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for vnet in [false, true] {
        if let Ok(t) = azure::parse_tuple(text, vnet) {
            assert!(matches!(t.state, None | Some('B' | 'C' | 'E' | 'D')));
        }
    }
    let _ = serde_json::from_str::<azure::Blob<'_>>(text);
    let _ = azure::subscription(text);
});
