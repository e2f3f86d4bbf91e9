//! The control plane as a library: the binary and the tests call these.
pub mod alerts;
pub mod api;
pub mod auth;
pub mod cloud;
pub mod detect;
pub mod entities;
pub mod grpc;
pub mod https;
pub mod import;
pub mod ingest;
pub mod keys;
pub mod model;
pub mod notify;
pub mod store;
pub mod util;
pub mod watch;
pub mod web;
