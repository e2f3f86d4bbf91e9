//! The kernel's per-source scan state counts distinct ports and hosts in 128-bit bitmaps
//! (linear counting): the agent turns its thresholds of distinct values into set bits for the
//! kernel, and the kernel's set bits back into estimates for the scan event.

/// The largest scan threshold (distinct ports or hosts) the kernel's 128-bit bitmaps can tell.
pub const MAX_SCAN_THRESHOLD: u32 = 256;

/// The set bits of a scan bitmap that stand for `n` distinct values: the bits expected once `n`
/// distinct values were hashed into it, m(1 - (1 - 1/m)^n), rounded up. 0 stays 0 (off).
pub fn bits_threshold(n: u32) -> u32 {
    if n == 0 {
        return 0;
    }
    let m = f64::from(sensor_common::SCAN_BITMAP_BITS);
    let expected = m * (1.0 - (1.0 - 1.0 / m).powi(n.min(MAX_SCAN_THRESHOLD) as i32));
    // The epsilon keeps an exact integer (n = 1 gives exactly 1 bit) from rounding up to the next.
    ((expected - 1e-9).ceil() as u32).max(1)
}

/// The distinct values estimated from `k` set bits of a scan bitmap (linear counting):
/// ln(1 - k/m) / ln(1 - 1/m), rounded. A full bitmap gives the estimate for m - 1 bits (a
/// lower bound).
pub fn estimate_distinct(k: u32) -> u32 {
    let m = f64::from(sensor_common::SCAN_BITMAP_BITS);
    let k = f64::from(k.min(sensor_common::SCAN_BITMAP_BITS - 1));
    ((1.0 - k / m).ln() / (1.0 - 1.0 / m).ln()).round() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_thresholds_become_bits_and_bits_become_estimates() {
        assert_eq!(bits_threshold(0), 0, "off stays off");
        assert_eq!(bits_threshold(1), 1);
        assert_eq!(bits_threshold(10), 10);
        // 128 (1 - (127/128)^20) = 18.52 and 128 (1 - (127/128)^25) = 22.76.
        assert_eq!(bits_threshold(20), 19);
        assert_eq!(bits_threshold(25), 23);
        assert_eq!(bits_threshold(MAX_SCAN_THRESHOLD), 111);
        assert_eq!(bits_threshold(10_000), 111, "clamped to what 128 bits tell");
        for n in 1..=MAX_SCAN_THRESHOLD {
            let k = bits_threshold(n);
            assert!(k <= n, "no more bits than values");
            // Crossing the threshold's bits means an estimate of at least n distinct values.
            assert!(estimate_distinct(k) >= n, "{n}: {k} bits");
            // One bit fewer is below n (by less than one value: the estimate is rounded).
            assert!(estimate_distinct(k - 1) <= n, "{n}: {} bits", k - 1);
            assert!(
                k == 1 || estimate_distinct(k - 2) < n,
                "{n}: {} bits",
                k - 2
            );
        }
        assert_eq!(estimate_distinct(0), 0);
        assert_eq!(estimate_distinct(10), 10);
        assert_eq!(estimate_distinct(128), estimate_distinct(127));
    }
}
