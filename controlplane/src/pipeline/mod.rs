//! What the control plane does with what it receives, stage by stage: the sensor ingest
//! (`ingest.rs`: store, then detect), the one import pipeline of cloud flow logs (`import.rs`,
//! which the watched directory (`watch.rs`) and the `import` command both use), and the
//! periodic maintenance (`maintenance.rs`). In cluster mode, files to import are handed to the
//! bus and imported by one replica at a time through the same pipeline (`import_jobs.rs`). The fronts (gRPC, the CLI) and `serve`'s wiring sit
//! above; detectors, the alerts service and the stores below.

pub mod import;
pub mod import_jobs;
pub mod ingest;
pub mod maintenance;
pub mod watch;
