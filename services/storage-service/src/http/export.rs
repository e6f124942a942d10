//! `GET /v1/calls/export`: every CDR a listing's filters match, for the
//! caller's access, streamed as CSV or NDJSON. Rows come from the database
//! in keyset chunks ([`crate::db::Repo::export`]) through a bounded channel,
//! so memory stays flat whatever the size and a slow client slows the
//! reads instead of piling rows up. At most `DIALSTACK_EXPORTS` exports run
//! at once; beyond that the answer is 503 with `Retry-After`. A database
//! failure mid-stream aborts the response (the client sees a truncated
//! transfer, never a short file that looks complete).

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, BytesMut};
use dialstack_common::auth::Principal;
use dialstack_common::http::{ApiError, ApiQuery, ErrorBody, ErrorCode};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ListParams, READ};
use crate::db::Cdr;
use crate::AppState;

/// Rows per database query of an export.
pub const CHUNK: i64 = 2000;
/// Rows buffered between the database and the client.
const BUFFER: usize = 512;
/// Bytes gathered before a chunk of the body is sent.
const FLUSH_BYTES: usize = 64 * 1024;

/// The CSV columns, in order.
pub const CSV_COLUMNS: &[&str] = &[
    "call_id",
    "attempt_id",
    "campaign_id",
    "phone",
    "customer_id",
    "team",
    "agent_id",
    "state",
    "outcome",
    "reason",
    "sip_status",
    "disposition",
    "started_at",
    "dialed_at",
    "ringing_at",
    "answered_at",
    "ended_at",
    "ring_ms",
    "talk_ms",
    "rtp_sent",
    "rtp_received",
    "mos",
    "recording_bytes",
    "ivr_result",
    "amd_result",
];

/// `GET /v1/calls/export` query: the listing's filters plus the format.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    /// `csv` (default) or `ndjson`.
    pub format: Option<String>,
    /// As for `GET /v1/calls`.
    pub from: Option<String>,
    /// As for `GET /v1/calls`.
    pub to: Option<String>,
    /// As for `GET /v1/calls`.
    pub campaign_id: Option<String>,
    /// As for `GET /v1/calls`.
    pub outcome: Option<String>,
    /// As for `GET /v1/calls`.
    pub phone: Option<String>,
    /// As for `GET /v1/calls`.
    pub customer_id: Option<String>,
    /// As for `GET /v1/calls`.
    pub agent_id: Option<String>,
    /// As for `GET /v1/calls`.
    pub team: Option<String>,
    /// As for `GET /v1/calls`.
    pub disposition: Option<String>,
    /// As for `GET /v1/calls`.
    #[param(value_type = Option<f64>, minimum = 1.0, maximum = 5.0)]
    pub mos_below: Option<String>,
    /// As for `GET /v1/calls`.
    pub ivr_result: Option<String>,
    /// As for `GET /v1/calls`.
    pub amd: Option<String>,
}

impl ExportParams {
    fn filters(self) -> ListParams {
        ListParams {
            from: self.from,
            to: self.to,
            campaign_id: self.campaign_id,
            outcome: self.outcome,
            phone: self.phone,
            customer_id: self.customer_id,
            agent_id: self.agent_id,
            team: self.team,
            disposition: self.disposition,
            mos_below: self.mos_below,
            ivr_result: self.ivr_result,
            amd: self.amd,
            limit: None,
            cursor: None,
        }
    }
}

/// The export's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// RFC 4180 CSV with a header row.
    Csv,
    /// One JSON object (a CDR as `GET /v1/calls/{id}` gives it) per line.
    Ndjson,
}

/// Every CDR matching the filters, streamed.
#[utoipa::path(get, path = "/v1/calls/export", params(ExportParams), security(("bearer" = [])),
    responses(
        (status = 200, description = "CSV (text/csv) or NDJSON (application/x-ndjson)"),
        (status = 400, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn export_calls(
    State(state): State<AppState>,
    who: Principal,
    ApiQuery(p): ApiQuery<ExportParams>,
) -> Result<Response, ApiError> {
    who.require(READ)?;
    let format = match p.format.as_deref().unwrap_or("csv") {
        "csv" => Format::Csv,
        "ndjson" => Format::Ndjson,
        other => {
            return Err(ApiError::invalid(
                "format",
                format!("{other:?} is not csv or ndjson"),
            ))
        }
    };
    let q = p.filters().query(&who, CHUNK)?;
    let Ok(permit) = state.exports.clone().try_acquire_owned() else {
        let mut resp = ApiError::new(
            ErrorCode::Unavailable,
            "too many exports are running; retry later",
        )
        .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return Ok(resp);
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Cdr>(BUFFER);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let repo = state.repo.clone();
    tokio::spawn(async move {
        let result = repo.export(q, tx).await;
        if let Err(e) = &result {
            tracing::warn!(error = %e, "export failed mid-stream");
        }
        let _ = done_tx.send(result.map_err(|e| e.to_string()));
        drop(permit);
    });
    let head = match format {
        Format::Csv => {
            let mut b = BytesMut::new();
            b.put_slice(CSV_COLUMNS.join(",").as_bytes());
            b.put_slice(b"\r\n");
            Some(b.freeze())
        }
        Format::Ndjson => None,
    };
    let stream = futures_util::stream::unfold(
        (rx, Some(done_rx), head),
        move |(mut rx, done, head)| async move {
            if let Some(h) = head {
                return Some((Ok(h), (rx, done, None)));
            }
            let mut buf = BytesMut::new();
            while buf.len() < FLUSH_BYTES {
                let next = if buf.is_empty() {
                    rx.recv().await
                } else {
                    match rx.try_recv() {
                        Ok(c) => Some(c),
                        Err(_) => break,
                    }
                };
                let Some(cdr) = next else { break };
                encode(format, &cdr, &mut buf);
            }
            if !buf.is_empty() {
                return Some((Ok(buf.freeze()), (rx, done, None)));
            }
            // The channel is closed: the export ended, well or not.
            let done = done?;
            match done.await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some((Err(std::io::Error::other(e)), (rx, None, None))),
                Err(_) => Some((
                    Err(std::io::Error::other("export task ended early")),
                    (rx, None, None),
                )),
            }
        },
    );
    let (ty, name) = match format {
        Format::Csv => (
            "text/csv; charset=utf-8",
            "attachment; filename=\"calls.csv\"",
        ),
        Format::Ndjson => (
            "application/x-ndjson",
            "attachment; filename=\"calls.ndjson\"",
        ),
    };
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(ty)),
            (header::CONTENT_DISPOSITION, HeaderValue::from_static(name)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Appends one CDR in `format`.
pub fn encode(format: Format, c: &Cdr, out: &mut BytesMut) {
    match format {
        Format::Ndjson => {
            if let Ok(line) = serde_json::to_vec(c) {
                out.put_slice(&line);
                out.put_u8(b'\n');
            }
        }
        Format::Csv => {
            let int = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
            let mos = c
                .quality
                .as_ref()
                .and_then(|q| q.get("mos"))
                .and_then(|m| m.as_f64())
                .map(|m| format!("{m:.2}"))
                .unwrap_or_default();
            let amd = c
                .amd
                .as_ref()
                .and_then(|a| a.get("result"))
                .and_then(|r| r.as_str());
            let cells: [String; 25] = [
                c.call_id.clone(),
                c.attempt_id.clone(),
                c.campaign_id.clone(),
                c.phone.clone(),
                c.customer_id.clone().unwrap_or_default(),
                c.team.clone().unwrap_or_default(),
                c.agent_id.clone().unwrap_or_default(),
                c.state.clone(),
                c.outcome.clone().unwrap_or_default(),
                text_cell(c.reason.as_deref()),
                int(c.sip_status),
                text_cell(c.disposition.as_deref()),
                c.started_at.to_string(),
                int(c.dialed_at),
                int(c.ringing_at),
                int(c.answered_at),
                int(c.ended_at),
                int(c.ring_ms),
                int(c.talk_ms),
                int(c.rtp_sent),
                int(c.rtp_received),
                mos,
                int(c.recording.as_ref().map(|r| r.bytes)),
                text_cell(c.ivr_result.as_deref()),
                text_cell(amd),
            ];
            for (i, cell) in cells.iter().enumerate() {
                if i > 0 {
                    out.put_u8(b',');
                }
                csv_cell(cell, out);
            }
            out.put_slice(b"\r\n");
        }
    }
}

/// A free-text cell: one a spreadsheet would take for a formula
/// (`=`, `+`, `-`, `@`, tab, CR) gets a leading `'`.
fn text_cell(v: Option<&str>) -> String {
    match v {
        Some(v) if v.starts_with(['=', '+', '-', '@', '\t', '\r']) => format!("'{v}"),
        Some(v) => v.to_owned(),
        None => String::new(),
    }
}

/// Writes one RFC 4180 cell: quoted when it holds a comma, a quote or a
/// line break, with quotes doubled.
fn csv_cell(v: &str, out: &mut BytesMut) {
    if v.contains([',', '"', '\n', '\r']) {
        out.put_u8(b'"');
        out.put_slice(v.replace('"', "\"\"").as_bytes());
        out.put_u8(b'"');
    } else {
        out.put_slice(v.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_formulas_neutralised() {
        let mut b = BytesMut::new();
        csv_cell("a,b \"c\"", &mut b);
        assert_eq!(&b[..], b"\"a,b \"\"c\"\"\"");
        assert_eq!(text_cell(Some("=HYPERLINK(1)")), "'=HYPERLINK(1)");
        assert_eq!(text_cell(Some("sale")), "sale");
        assert_eq!(text_cell(None), "");
    }
}
