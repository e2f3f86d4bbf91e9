//! GCP Cloud Logging entries, bare or inside Pub/Sub deliveries: no input may panic; an accepted
//! entry has its times in order.
#![no_main]

use controlplane::cloud::gcp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = gcp::parse(text) {
        assert!(r.start_ns <= r.end_ns);
    }
    for entry in gcp::pubsub_entries(text).into_iter().flatten().flatten() {
        if let Ok(r) = gcp::parse(&entry) {
            assert!(r.start_ns <= r.end_ns);
        }
    }
});
