//! The sensor key, checked in front of the service: a call without a valid key is answered
//! UNAUTHENTICATED from its headers alone, before a byte of its message is read or decoded.
//! The calls that pass carry their sensor in the request's extensions ([`Sensor`]).
//!
//! It also answers a request message that does not decode (not protobuf, cut short, a bad
//! compression flag) with INVALID_ARGUMENT rather than tonic's INTERNAL: the fault is the
//! sender's, and INTERNAL would tell it to look at the control plane.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tonic::{
    Status,
    codegen::http::{self, HeaderMap, HeaderValue},
    server::NamedService,
};
use tracing::warn;

use crate::{keys, store::Stores};

/// The authenticated sensor of a call: its name and its key's hash (to check, later on a long
/// stream, that the key was not revoked since).
#[derive(Clone, Debug)]
pub struct Sensor {
    pub name: String,
    pub key_hash: String,
}

/// `inner` behind the sensor-key check.
#[derive(Clone)]
pub struct SensorAuth<S> {
    inner: S,
    stores: Stores,
}

impl<S> SensorAuth<S> {
    pub fn new(inner: S, stores: Stores) -> Self {
        SensorAuth { inner, stores }
    }
}

impl<S: NamedService> NamedService for SensorAuth<S> {
    const NAME: &'static str = S::NAME;
}

/// Who sent the request, for the log.
fn peer<B>(req: &http::Request<B>) -> String {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let e = req.extensions();
    e.get::<TcpConnectInfo>()
        .and_then(|i| i.remote_addr())
        .or_else(|| {
            e.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
        .map_or_else(|| "unknown peer".into(), |a| a.to_string())
}

/// The sensor behind the `authorization: Bearer <key>` header, if any.
async fn authenticate(stores: &Stores, headers: &HeaderMap, peer: &str) -> Result<Sensor, Status> {
    let Some(value) = headers.get("authorization") else {
        warn!(%peer, "rejected a call without a sensor key");
        return Err(Status::unauthenticated(
            "missing sensor key (authorization: Bearer <key>)",
        ));
    };
    let key = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    if !keys::well_formed(key) {
        warn!(%peer, "rejected a malformed sensor key");
        return Err(Status::unauthenticated("malformed sensor key"));
    }
    let key_hash = keys::hash(key);
    match current(stores, &key_hash).await? {
        Some(name) => Ok(Sensor { name, key_hash }),
        None => {
            warn!(%peer, "rejected an unknown or revoked sensor key");
            Err(Status::unauthenticated("unknown or revoked sensor key"))
        }
    }
}

/// The sensor whose key hashes to `key_hash`, unless it was revoked.
pub async fn current(stores: &Stores, key_hash: &str) -> Result<Option<String>, Status> {
    let (store, hash) = (stores.state.clone(), key_hash.to_string());
    tokio::task::spawn_blocking(move || store.sensor_for_key(&hash))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(super::internal)
}

/// Whether `s` says a request message did not decode.
pub fn undecodable(s: &Status) -> bool {
    s.code() == tonic::Code::Internal
        && [
            "failed to decode",
            "Unexpected EOF decoding",
            "protocol error:",
        ]
        .iter()
        .any(|p| s.message().starts_with(p))
}

impl<S, B> tower::Service<http::Request<B>> for SensorAuth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The clone that was made ready serves this call; the fresh one waits for the next.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let stores = self.stores.clone();
        Box::pin(async move {
            let peer = peer(&req);
            match authenticate(&stores, req.headers(), &peer).await {
                Ok(sensor) => {
                    req.extensions_mut().insert(sensor);
                    let mut response = inner.call(req).await?;
                    // A message that did not decode fails before any answer: the status is in
                    // the headers (trailers-only).
                    if let Some(status) = Status::from_header_map(response.headers())
                        && undecodable(&status)
                    {
                        warn!(%peer, %status, "refused a message that does not decode");
                        response
                            .headers_mut()
                            .insert("grpc-status", HeaderValue::from_static("3"));
                    }
                    Ok(response)
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}
