//! Cloud flow logs: parsers for the providers' documented formats.
pub mod aws;
pub mod azure;
pub mod gcp;
