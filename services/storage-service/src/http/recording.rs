//! `GET /v1/calls/{id}/recording`: the call's WAV, streamed from the
//! recording store, whole or by one byte range.
//!
//! Access is the CDR's: a caller who may not read the call gets 404, as for
//! a call without a recording. Ranges (RFC 9110 §14): `bytes=a-b`,
//! `bytes=a-` and `bytes=-n` get 206 with `Content-Range`; a range starting
//! at or past the end (or a zero suffix) gets 416 with
//! `Content-Range: bytes */size`. A header this server does not serve as a
//! range — another unit, a malformed spec, or several ranges — is ignored
//! as the RFC allows, and the whole file comes back with 200.
//! `ETag` is the recording's SHA-256; `Accept-Ranges: bytes` is always sent.

use std::ops::Range;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use dialstack_common::auth::Principal;
use dialstack_common::http::{ApiError, ErrorBody, ErrorCode};
use dialstack_common::recordings::RecordingError;

use super::{may_read, READ};
use crate::AppState;

/// What a `Range` header asks of an object of a given size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeAsk {
    /// No usable range: send everything (200).
    Whole,
    /// These bytes (206).
    Part(Range<u64>),
    /// Nothing of the object (416).
    Unsatisfiable,
}

/// Reads a `Range` header value against an object of `size` bytes.
pub fn parse_range(value: Option<&str>, size: u64) -> RangeAsk {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeAsk::Whole;
    };
    let spec = spec.trim();
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return RangeAsk::Whole;
    };
    let num = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (first.trim().is_empty(), num(first), num(last)) {
        // bytes=-n: the last n bytes.
        (true, _, Some(n)) => {
            if n == 0 || size == 0 {
                RangeAsk::Unsatisfiable
            } else {
                RangeAsk::Part(size.saturating_sub(n)..size)
            }
        }
        // bytes=a- and bytes=a-b.
        (false, Some(a), end) if last.trim().is_empty() || end.is_some() => {
            if end.is_some_and(|b| b < a) {
                return RangeAsk::Whole;
            }
            if a >= size {
                return RangeAsk::Unsatisfiable;
            }
            let end = end.map_or(size, |b| b.saturating_add(1).min(size));
            RangeAsk::Part(a..end)
        }
        _ => RangeAsk::Whole,
    }
}

/// The call's recording (`audio/wav`), whole or one byte range.
#[utoipa::path(get, path = "/v1/calls/{id}/recording", security(("bearer" = [])),
    params(("id" = String, Path, description = "call id"),
        ("Range" = Option<String>, Header, description = "one range: bytes=a-b, bytes=a- or bytes=-n; several ranges get the whole file")),
    responses(
        (status = 200, description = "the whole WAV", content_type = "audio/wav", body = Vec<u8>),
        (status = 206, description = "the requested bytes, with Content-Range", content_type = "audio/wav", body = Vec<u8>),
        (status = 404, description = "no such call for this caller, or no recording", body = ErrorBody),
        (status = 416, description = "the range starts past the end; Content-Range: bytes */size", body = ErrorBody)))]
pub(crate) async fn get_recording(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    who.require(READ)?;
    let visible = state
        .repo
        .get(&id)
        .await?
        .is_some_and(|c| may_read(&who, &c));
    if !visible {
        return Err(ApiError::not_found("call"));
    }
    let rec = state
        .repo
        .recording(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("recording"))?;
    let size = match state.store.head(&rec.url).await {
        Ok(n) => n,
        Err(RecordingError::NotFound) => return Err(ApiError::not_found("recording")),
        Err(e) => return Err(ApiError::internal(e)),
    };
    let ask = parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        size,
    );
    let etag = HeaderValue::from_str(&format!("\"{}\"", rec.sha256)).ok();
    let range = match ask {
        RangeAsk::Unsatisfiable => {
            let mut r = ApiError::new(
                ErrorCode::RangeNotSatisfiable,
                format!("range not satisfiable: the recording has {size} bytes"),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
        RangeAsk::Whole => None,
        RangeAsk::Part(r) => Some(r),
    };
    // An empty object has no byte to ask for: answer it without a read.
    let body = if size == 0 {
        None
    } else {
        match state.store.get_range(&rec.url, range.clone()).await {
            Ok(b) => Some(b),
            Err(RecordingError::NotFound) => return Err(ApiError::not_found("recording")),
            Err(e) => return Err(ApiError::internal(e)),
        }
    };
    let (status, served) = match &range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.clone()),
        None => (StatusCode::OK, 0..size),
    };
    let mut resp = match body {
        Some(b) => Response::new(Body::from_stream(b.stream)),
        None => Response::new(Body::empty()),
    };
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/wav"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(served.end - served.start),
    );
    if range.is_some() {
        if let Ok(v) =
            HeaderValue::from_str(&format!("bytes {}-{}/{size}", served.start, served.end - 1))
        {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    if let Some(etag) = etag {
        h.insert(header::ETAG, etag);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        use RangeAsk::*;
        let p = |v: &str| parse_range(Some(v), 1000);
        assert_eq!(parse_range(None, 1000), Whole);
        assert_eq!(p("bytes=0-43"), Part(0..44));
        assert_eq!(p("bytes=10-"), Part(10..1000));
        assert_eq!(p("bytes=990-5000"), Part(990..1000));
        assert_eq!(p("bytes=-100"), Part(900..1000));
        assert_eq!(p("bytes=-5000"), Part(0..1000));
        assert_eq!(p("bytes=999-999"), Part(999..1000));
        assert_eq!(p(" bytes= 5 - 9 "), Part(5..10));
        assert_eq!(p("bytes=1000-"), Unsatisfiable);
        assert_eq!(p("bytes=1000-1001"), Unsatisfiable);
        assert_eq!(p("bytes=-0"), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
        // Ignored: another unit, several ranges, malformed specs.
        for v in [
            "items=0-1",
            "bytes=0-1,5-6",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=-",
            "bytes=1",
            "bytes=+1-2",
            "bytes=99999999999999999999999-",
            "",
        ] {
            assert_eq!(p(v), Whole, "{v:?}");
        }
    }

    #[test]
    fn openapi_documents_the_download_and_the_mos_filter() {
        let doc = super::super::openapi();
        let rec = &doc["paths"]["/v1/calls/{id}/recording"]["get"];
        for status in ["200", "206", "404", "416"] {
            assert!(rec["responses"][status].is_object(), "{status}: {rec}");
        }
        assert!(
            rec["responses"]["200"]["content"]["audio/wav"].is_object(),
            "{rec}"
        );
        let list = &doc["paths"]["/v1/calls"]["get"]["parameters"];
        let mos = list
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "mos_below")
            .unwrap_or_else(|| panic!("{list}"));
        assert_eq!(mos["schema"]["maximum"], 5.0, "{mos}");
        assert!(doc["components"]["schemas"]["RecordingLink"].is_object());
    }
}
