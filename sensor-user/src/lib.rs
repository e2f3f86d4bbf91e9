//! picket-sensor as a library: everything the binary does is a call here first.
pub mod agent;
pub mod authlog;
pub mod check;
pub mod config;
pub mod error;
pub mod export;
pub mod flowcache;
pub mod k8s;
pub mod metrics;
pub mod preflight;
pub mod programs;
pub mod records;
pub mod scan;
pub mod sensor;
pub mod spool;
pub mod sys;
pub mod tables;

pub use error::SensorError;
