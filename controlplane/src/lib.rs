//! The control plane as a library: the binary and the tests call these. Dependencies point one
//! way (ARCHITECTURE.md has the map):
//!
//! `util` -> `model` -> `store` -> `detect`, `alerts`, `entities`, `notify`, `cloud` ->
//! `pipeline` -> `grpc`, `listen` -> `api` (with `web`, `auth`) -> `serve` and the binary.
pub mod alerts;
pub mod api;
pub mod auth;
pub mod bus;
pub mod cloud;
pub mod detect;
pub mod entities;
pub mod grpc;
pub mod keys;
pub mod listen;
pub mod model;
pub mod notify;
pub mod pipeline;
pub mod serve;
pub mod store;
pub mod util;
pub mod web;
