//! The whole import of each provider over arbitrary bytes (gzip or not): no panic, and every
//! non-blank line read is stored, rejected or skipped, never lost.
#![no_main]

use controlplane::{cloud::read::Summary, model::Source, pipeline::import};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for provider in [Source::Aws, Source::Gcp, Source::Azure] {
        let mut stored = 0u64;
        let mut sum = Summary::default();
        let r = import::import_input(
            provider,
            std::io::Cursor::new(data),
            ("fuzz", 1),
            0.5,
            &mut |flows| {
                stored += flows.len() as u64;
                Ok(())
            },
            &mut sum,
        );
        if r.is_ok() {
            assert_eq!(stored, sum.stored);
            if provider == Source::Aws {
                assert_eq!(
                    sum.read,
                    sum.stored + sum.rejected_total() + sum.nodata + sum.skipdata
                );
            }
        }
    }
});
