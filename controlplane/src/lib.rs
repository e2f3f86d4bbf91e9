//! The control plane as a library: the binary and the tests call these.
pub mod ingest;
pub mod keys;
pub mod store;
