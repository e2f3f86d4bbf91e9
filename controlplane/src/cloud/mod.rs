//! Cloud flow logs: parsers for the providers' documented formats (`aws.rs`, `gcp.rs`,
//! `azure.rs`), their records in the flow model (`flows.rs`), and the reading of whole files
//! (`read.rs`). Nothing here knows what happens to the flows next.
pub mod aws;
pub mod azure;
pub mod flows;
pub mod gcp;
pub mod read;

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};

/// An optional string field that borrows from the input unless it has escapes. serde borrows
/// a `Cow<str>` field only when it is the field's whole type: inside an `Option` it always
/// allocates, and that was most of the time of a GCP entry's parse.
pub(crate) fn borrowed<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed<'de>>::deserialize(d)?.map(|b| b.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct T<'a> {
        #[serde(borrow, default, deserialize_with = "borrowed")]
        s: Option<Cow<'a, str>>,
    }

    #[test]
    fn strings_are_borrowed_unless_escaped() {
        let t: T<'_> = serde_json::from_str(r#"{"s": "plain"}"#).expect("json");
        assert!(matches!(t.s, Some(Cow::Borrowed("plain"))));
        let t: T<'_> = serde_json::from_str(r#"{"s": "a\"b"}"#).expect("json");
        assert!(matches!(t.s.as_deref(), Some("a\"b")));
        assert!(matches!(t.s, Some(Cow::Owned(_))));
        let t: T<'_> = serde_json::from_str(r#"{"s": null}"#).expect("json");
        assert!(t.s.is_none());
        let t: T<'_> = serde_json::from_str("{}").expect("json");
        assert!(t.s.is_none());
        assert!(serde_json::from_str::<T<'_>>(r#"{"s": 5}"#).is_err());
    }
}
