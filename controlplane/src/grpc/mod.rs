//! The sensor protocol (picket.v1, gRPC): the front that sensors talk to.
pub mod convert;
