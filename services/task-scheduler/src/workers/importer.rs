//! Lead imports: a CSV body streamed through a parser thread into batches
//! (never loaded whole), or a JSON array; every row validated, checked
//! against the do-not-call lists and stored in batches, with a report of
//! what was accepted, what was already there and every rejected row.
//!
//! Memory stays bounded whatever is sent: one batch in flight at a time, at
//! most [`MAX_REPORTED_ERRORS`] errors listed (the rest counted), a record
//! may not exceed [`MAX_RECORD_BYTES`], a body [`MAX_BODY_BYTES`].

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dialstack_dialrules::guard::DestinationGuard;
use futures_util::TryStreamExt;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::db::Repo;
use crate::domain::lead::{Columns, ImportRules, LeadInput, ValidLead};

/// Rows per stored batch.
pub const BATCH_ROWS: usize = 2_000;
/// Rejected rows listed in a report; more are only counted.
pub const MAX_REPORTED_ERRORS: usize = 1_000;
/// Longest CSV record.
pub const MAX_RECORD_BYTES: u64 = 1 << 20;
/// Largest CSV body.
pub const MAX_BODY_BYTES: u64 = 2 << 30;

/// One rejected row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RowError {
    /// Row number: the header is row 1, the first lead row 2; blank lines
    /// are skipped and not counted (for JSON: the array index).
    pub row: u64,
    /// The column at fault.
    pub column: String,
    /// Why.
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ImportReport {
    /// Rows read (header excluded).
    pub rows: u64,
    /// New leads.
    pub accepted: u64,
    /// Numbers the campaign already had (including repeats within the file).
    pub duplicates: u64,
    /// Rows refused.
    pub rejected: u64,
    /// Refused rows, in order (the first 1,000).
    pub errors: Vec<RowError>,
    /// More rows were refused than are listed.
    pub errors_truncated: bool,
    /// Why reading stopped early, if it did (rows before it are kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

impl ImportReport {
    fn reject(&mut self, e: RowError) {
        self.rejected += 1;
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push(e);
        } else {
            self.errors_truncated = true;
        }
    }
}

/// An import that could not start.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The header is unusable.
    #[error("{0}")]
    Header(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// What the import needs to know of its campaign.
#[derive(Debug, Clone)]
pub struct ImportTarget {
    /// The campaign.
    pub campaign_id: String,
    /// Its region for national numbers.
    pub default_region: Option<String>,
    /// The destination guard.
    pub guard: Arc<DestinationGuard>,
}

struct Chunk {
    leads: Vec<(u64, ValidLead)>,
    errors: Vec<RowError>,
    rows: u64,
    stopped: Option<String>,
}

/// Reads at most [`MAX_BODY_BYTES`], and fails when a record grows past
/// [`MAX_RECORD_BYTES`] (the parser marks record ends in `boundary`).
struct Bounded<R> {
    inner: R,
    consumed: u64,
    boundary: Arc<AtomicU64>,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let since = self.consumed - self.boundary.load(Ordering::Relaxed).min(self.consumed);
        if since > MAX_RECORD_BYTES + 64 * 1024 {
            return Err(std::io::Error::other(format!(
                "a record is longer than {MAX_RECORD_BYTES} bytes"
            )));
        }
        if self.consumed >= MAX_BODY_BYTES {
            return Err(std::io::Error::other(format!(
                "the body is larger than {MAX_BODY_BYTES} bytes"
            )));
        }
        let n = self.inner.read(buf)?;
        self.consumed += n as u64;
        Ok(n)
    }
}

/// Imports a CSV body.
pub async fn import_csv(
    repo: &Repo,
    target: &ImportTarget,
    body: axum::body::Body,
    source: &str,
) -> Result<ImportReport, ImportError> {
    let stream = body
        .into_data_stream()
        .map_err(|e| std::io::Error::other(e.to_string()));
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let (tx, mut rx) = mpsc::channel::<Result<Chunk, String>>(2);
    let t = target.clone();
    let parser = tokio::task::spawn_blocking(move || parse(reader, &t, tx));
    let mut report = ImportReport::default();
    let mut first = true;
    while let Some(msg) = rx.recv().await {
        let chunk = match msg {
            Ok(c) => c,
            Err(header) if first => {
                drop(rx);
                let _ = parser.await;
                return Err(ImportError::Header(header));
            }
            Err(other) => {
                report.stopped = Some(other);
                break;
            }
        };
        first = false;
        store(repo, target, chunk, &mut report, source).await?;
    }
    drop(rx);
    let _ = parser.await;
    Ok(report)
}

/// Imports a JSON array of leads.
pub async fn import_json(
    repo: &Repo,
    target: &ImportTarget,
    leads: Vec<LeadInput>,
    source: &str,
) -> Result<ImportReport, ImportError> {
    let rules = ImportRules {
        guard: &target.guard,
        default_region: target.default_region.as_deref(),
    };
    let mut report = ImportReport::default();
    let mut chunk = Chunk {
        leads: Vec::new(),
        errors: Vec::new(),
        rows: 0,
        stopped: None,
    };
    for (i, lead) in leads.into_iter().enumerate() {
        chunk.rows += 1;
        match lead.validate(&rules) {
            Ok(v) => chunk.leads.push((i as u64, v)),
            Err((column, reason)) => chunk.errors.push(RowError {
                row: i as u64,
                column,
                reason,
            }),
        }
        if chunk.leads.len() >= BATCH_ROWS {
            let full = std::mem::replace(
                &mut chunk,
                Chunk {
                    leads: Vec::new(),
                    errors: Vec::new(),
                    rows: 0,
                    stopped: None,
                },
            );
            store(repo, target, full, &mut report, source).await?;
        }
    }
    store(repo, target, chunk, &mut report, source).await?;
    Ok(report)
}

/// Checks a chunk against the DNC lists and stores it.
async fn store(
    repo: &Repo,
    target: &ImportTarget,
    chunk: Chunk,
    report: &mut ImportReport,
    source: &str,
) -> Result<(), sqlx::Error> {
    report.rows += chunk.rows;
    let phones: Vec<&str> = chunk.leads.iter().map(|(_, l)| l.phone.as_str()).collect();
    let dnc = repo.dnc_hits(&phones, &target.campaign_id).await?;
    let mut errors = chunk.errors;
    let mut keep = Vec::with_capacity(chunk.leads.len());
    for (row, lead) in chunk.leads {
        if dnc.contains(&lead.phone) {
            errors.push(RowError {
                row,
                column: "phone".into(),
                reason: "DNC: the number is on a do-not-call list".into(),
            });
        } else {
            keep.push(lead);
        }
    }
    errors.sort_by_key(|e| e.row);
    for e in errors {
        report.reject(e);
    }
    if !keep.is_empty() {
        let r = repo
            .import_batch(&target.campaign_id, &keep, source)
            .await?;
        report.accepted += r.accepted;
        report.duplicates += r.duplicates;
    }
    if chunk.stopped.is_some() {
        report.stopped = chunk.stopped;
    }
    Ok(())
}

/// The parser thread: header, then records in chunks of [`BATCH_ROWS`].
fn parse<R: Read>(reader: R, target: &ImportTarget, tx: mpsc::Sender<Result<Chunk, String>>) {
    let boundary = Arc::new(AtomicU64::new(0));
    let bounded = Bounded {
        inner: reader,
        consumed: 0,
        boundary: boundary.clone(),
    };
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bounded);
    let mut record = csv::ByteRecord::new();
    let columns = match csv.read_byte_record(&mut record) {
        Ok(true) => {
            let names: Vec<String> = record
                .iter()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect();
            match Columns::from_header(names.iter().map(String::as_str)) {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
        Ok(false) => {
            let _ = tx.blocking_send(Err("the body is empty: a header row is required".into()));
            return;
        }
        Err(e) => {
            let _ = tx.blocking_send(Err(format!("unreadable header: {e}")));
            return;
        }
    };
    let rules = ImportRules {
        guard: &target.guard,
        default_region: target.default_region.as_deref(),
    };
    let fresh = || Chunk {
        leads: Vec::with_capacity(BATCH_ROWS),
        errors: Vec::new(),
        rows: 0,
        stopped: None,
    };
    let mut chunk = fresh();
    let mut row: u64 = 1;
    loop {
        boundary.store(csv.position().byte(), Ordering::Relaxed);
        match csv.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                chunk.stopped = Some(format!("row {}: {e}", row + 1));
                break;
            }
        }
        row += 1;
        chunk.rows += 1;
        let fields: Result<Vec<&str>, _> = record.iter().map(std::str::from_utf8).collect();
        let result = match fields {
            Err(_) => Err(("".to_owned(), "the row is not UTF-8".to_owned())),
            Ok(f) if f.iter().all(|s| s.trim().is_empty()) => {
                // A blank line is not a lead and not an error.
                chunk.rows -= 1;
                continue;
            }
            Ok(f) => columns.lead(&f).and_then(|l| l.validate(&rules)),
        };
        match result {
            Ok(lead) => chunk.leads.push((row, lead)),
            Err((column, reason)) => chunk.errors.push(RowError {
                row,
                column,
                reason,
            }),
        }
        if chunk.leads.len() + chunk.errors.len() >= BATCH_ROWS
            && tx
                .blocking_send(Ok(std::mem::replace(&mut chunk, fresh())))
                .is_err()
        {
            return;
        }
    }
    let _ = tx.blocking_send(Ok(chunk));
}
