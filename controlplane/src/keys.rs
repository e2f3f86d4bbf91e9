//! Sensor keys: 32 random bytes shown once as `pks_<hex>`; only their SHA-256 is stored. (A slow
//! password hash buys nothing for a 256-bit random secret, and ingest checks a key per call.)

use sha2::{Digest as _, Sha256};

const PREFIX: &str = "pks_";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn new_key() -> anyhow::Result<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(format!("{PREFIX}{}", hex(&b)))
}

/// The stored form of a key; also the lookup form of a presented one.
pub fn hash(key: &str) -> String {
    hex(&Sha256::digest(key.trim().as_bytes()))
}

/// Whether a presented key has the shape of ours (checked before any lookup).
pub fn well_formed(key: &str) -> bool {
    key.strip_prefix(PREFIX)
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_well_formed_and_hashed() {
        let (a, b) = (new_key().expect("key"), new_key().expect("key"));
        assert_ne!(a, b);
        assert!(well_formed(&a), "{a}");
        assert!(!well_formed("pks_123"));
        assert!(!well_formed(&a.replace("pks_", "xyz_")));
        assert_eq!(
            hash(&a),
            hash(&format!("{a}\n")),
            "a trailing newline from a key file"
        );
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(hash(&a).len(), 64);
    }
}
