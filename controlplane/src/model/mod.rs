//! The domain's types, the same for every source and every backend: flows, sensor batches,
//! alerts and the updates detectors make to them, notification events, roles. No storage, no
//! wire format, no HTTP.

mod access;
pub(crate) mod alert;
mod flow;
mod notification;
mod sensor;

pub use access::Role;
pub use alert::{
    Alert, AlertQuery, AlertUpdate, Change, HistoryEntry, INCIDENT_GAP_NS, MAX_OBSERVATIONS,
    MAX_TARGETS, Sensitivity, Severity, check_alert_type, sensitivity_scope,
};
pub use flow::{Absent, Action, CloudMeta, Flow, FlowSink, ImportedFile, Source};
pub use notification::{Event, event_for};
pub use sensor::{
    GUESSED_INITIATOR, Heartbeat, Interface, LoginEvent, PodContext, ProbeRecord, Registration,
    ScanEvent, SensorBatch, SensorMeta, initiator_guessed,
};
