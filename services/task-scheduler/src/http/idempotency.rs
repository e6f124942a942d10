//! `Idempotency-Key` on creating POSTs: the same key from the same caller
//! on the same route within 24 h returns the first response and creates
//! nothing more. The key is reserved before the request runs, so a retry
//! racing the original waits for nothing: it gets 409 until the first
//! finishes. A key reused for a different request is refused.

use std::future::Future;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use dialstack_common::auth::Principal;
use dialstack_common::http::{ApiError, ErrorCode};
use sha2::{Digest, Sha256};

use crate::db::idempotency::Reservation;
use crate::db::Repo;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// Set on a replayed response.
pub const REPLAYED: &str = "idempotent-replayed";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `run` at most once per `Idempotency-Key` (when the request has
/// one). `fingerprint` identifies the request's content.
pub async fn once<F, Fut>(
    repo: &Repo,
    who: &Principal,
    headers: &HeaderMap,
    route: &str,
    fingerprint: &[u8],
    run: F,
) -> Result<Response, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(StatusCode, serde_json::Value), ApiError>>,
{
    let Some(key) = headers.get(HEADER) else {
        let (status, body) = run().await?;
        return Ok((status, axum::Json(body)).into_response());
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::invalid(
                "Idempotency-Key",
                "must be 1-255 printable ASCII characters",
            )
        })?;
    let id = hex(&Sha256::digest(format!("{}\n{route}\n{key}", who.sub)));
    let hash = hex(&Sha256::digest(fingerprint));
    match repo.idem_reserve(&id, &hash).await? {
        Reservation::New => {}
        Reservation::Replay { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let mut resp = (
                status,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response();
            resp.headers_mut()
                .insert(REPLAYED, HeaderValue::from_static("true"));
            return Ok(resp);
        }
        Reservation::InProgress => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "a request with this Idempotency-Key is still running; retry later",
            ))
        }
        Reservation::Mismatch => {
            return Err(ApiError::invalid(
                "Idempotency-Key",
                "was already used for a different request",
            ))
        }
    }
    match run().await {
        Ok((status, body)) => {
            let text = body.to_string();
            if let Err(e) = repo.idem_store(&id, status.as_u16(), &text).await {
                tracing::warn!(error = %e, "cannot store an idempotent response");
            }
            Ok((
                status,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                text,
            )
                .into_response())
        }
        Err(e) => {
            // Nothing was created: a corrected retry may use the key again.
            if let Err(e) = repo.idem_release(&id).await {
                tracing::warn!(error = %e, "cannot release an idempotency key");
            }
            Err(e)
        }
    }
}
