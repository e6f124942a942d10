//! Infrastructure shared by the five dialstack services. Business rules never
//! live here: if two services need the same rule, one of them owns it.
//!
//! # Layout
//! - [`config`]: environment (passed in as a map) plus an optional TOML file
//! - [`telemetry`]: `tracing` subscriber, JSON or pretty
//! - [`http`]: error envelope, request ids, RED metrics, health, serving with graceful shutdown
//! - [`metrics`]: the Prometheus registry each service exposes on `/metrics`
//! - [`bus`]: one publish/subscribe trait over `memory://`, `amqp://`/`amqps://` and `kafka://`
//! - [`events`]: the CloudEvents envelope and the typed command and event payloads
//! - [`db`]: sqlx pool for `sqlite://` and `mysql://`, migrations, outbox and inbox
//! - [`auth`]: EdDSA JWT signing and verification, JWKS cache, the axum auth layer
//! - `recordings` (feature `recordings`): the recording store, `file://` or `s3://` through `object_store`
//! - [`service`]: the start-up and drain sequence every service shares
//! - [`shutdown`]: the process's root cancellation token and signal handling
//! - [`tls`]: the extra CA bundle and the HTTP client builder of every outbound TLS connection

pub mod auth;
pub mod bus;
pub mod config;
pub mod db;
pub mod events;
pub mod http;
pub mod metrics;
#[cfg(feature = "recordings")]
pub mod recordings;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

/// Milliseconds since the Unix epoch, the one timestamp unit stored in databases.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
