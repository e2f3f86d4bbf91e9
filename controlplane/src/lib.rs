//! The control plane as a library: the binary and the tests call these. Dependencies point one
//! way (ARCHITECTURE.md has the map):
//!
//! `util` -> `model` -> `store` -> `detect`, `alerts`, `entities`, `notify`, `cloud` ->
//! `pipeline` -> `grpc`, `api` (with `web`, `https`, `auth`) -> `serve` and the binary.
pub mod alerts;
pub mod api;
pub mod auth;
pub mod cloud;
pub mod detect;
pub mod entities;
pub mod grpc;
pub mod https;
pub mod keys;
pub mod model;
pub mod notify;
pub mod pipeline;
pub mod serve;
pub mod store;
pub mod util;
pub mod web;
