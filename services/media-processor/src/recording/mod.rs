//! Call recording: the per-call media loop hands stereo audio in chunks to
//! one writer thread (file work never runs on the async runtime), which
//! writes a WAV into the spool folder; when the call ends the file is
//! finished, hashed and described by a sidecar, then uploaded to the
//! recording store with retries, and `call.recording.ready` goes out
//! through the outbox. The spool file is deleted only after both, and a
//! restart uploads whatever a previous run left in the spool: a failed
//! upload never loses a recording.
//!
//! Overload sheds new recordings, not running ones: a recording starts only
//! while fewer than the limit are open and the writer's queue is mostly
//! empty. A full disk fails that recording (counted), never the call.
//!
//! # Layout
//! - [`wav`]: the WAV file

pub mod wav;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dialstack_common::db::OutboxRelay;
use dialstack_common::recordings::RecordingStore;
use dialstack_contract::{CallRef, RecordingReady};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::db::Repo;

/// Stereo frames per chunk handed to the writer (500 ms).
pub const CHUNK_FRAMES: usize = 4_000;
/// Writer queue length (chunks).
const QUEUE: usize = 4_096;
/// Uploads at once.
const UPLOADS: usize = 4;

/// Recording counters.
#[derive(Clone)]
pub struct RecordingMetrics {
    /// `dialstack_recordings_total{result}`: uploaded, failed, shed.
    pub results: prometheus::IntCounterVec,
    /// `dialstack_recording_upload_retries_total`.
    pub upload_retries: prometheus::IntCounter,
    /// `dialstack_recording_chunks_dropped_total`: chunks the writer could not take (filled with silence).
    pub chunks_dropped: prometheus::IntCounter,
    /// `dialstack_recordings_spooled`: finished recordings waiting for upload.
    pub spooled: prometheus::IntGauge,
}

impl RecordingMetrics {
    /// Unregistered metrics.
    pub fn new() -> prometheus::Result<Self> {
        let results = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "dialstack_recordings_total",
                "call recordings by result: uploaded, failed (disk or file error), shed (overload)",
            ),
            &["result"],
        )?;
        for r in ["uploaded", "failed", "shed"] {
            results.with_label_values(&[r]);
        }
        Ok(Self {
            results,
            upload_retries: prometheus::IntCounter::new(
                "dialstack_recording_upload_retries_total",
                "failed recording uploads that will be retried",
            )?,
            chunks_dropped: prometheus::IntCounter::new(
                "dialstack_recording_chunks_dropped_total",
                "recording chunks the writer could not take in time (written as silence)",
            )?,
            spooled: prometheus::IntGauge::new(
                "dialstack_recordings_spooled",
                "finished recordings in the spool waiting for upload",
            )?,
        })
    }

    /// Registers every metric.
    pub fn register(&self, m: &dialstack_common::metrics::Metrics) {
        m.register(&self.results);
        m.register(&self.upload_retries);
        m.register(&self.chunks_dropped);
        m.register(&self.spooled);
    }
}

/// What the spool keeps beside a finished WAV until it is uploaded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sidecar {
    /// The call.
    pub call: CallRef,
    /// Object key in the store.
    pub key: String,
    /// Audio length (ms).
    pub duration_ms: u64,
    /// File size.
    pub bytes: u64,
    /// SHA-256, hex.
    pub sha256: String,
    /// Retention (days).
    pub retention_days: Option<u32>,
    /// Transcribe it after the upload.
    #[serde(default)]
    pub transcribe: bool,
}

/// Speech to text for post-call transcripts.
#[async_trait::async_trait]
pub trait Transcriber: Send + Sync {
    /// The words in `pcm` (8 kHz linear) and a confidence if known.
    async fn transcribe(&self, pcm: &[i16]) -> anyhow::Result<(String, Option<f32>)>;
    /// The engine's name for the transcript.
    fn engine(&self) -> String;
}

/// Longest audio transcribed per call (10 min); the rest is left out.
pub const MAX_TRANSCRIBED_SAMPLES: usize = 10 * 60 * 8_000;

enum Job {
    Open {
        id: u64,
        path: PathBuf,
    },
    Chunk {
        id: u64,
        first_frame: u64,
        samples: Vec<i16>,
    },
    Close {
        id: u64,
        done: oneshot::Sender<std::io::Result<Finished>>,
    },
}

struct Finished {
    frames: u64,
    bytes: u64,
    sha256: String,
}

/// Where a stored recording is announced.
#[async_trait::async_trait]
pub trait Announce: Send + Sync {
    /// Makes `ready` durable for delivery (the outbox); an error is retried.
    async fn ready(&self, ready: &RecordingReady) -> Result<(), String>;
    /// Makes a transcript durable for delivery.
    async fn transcript(&self, t: &dialstack_contract::CallTranscript) -> Result<(), String>;
}

/// Announces through the outbox: `call.recording.ready`.
pub struct OutboxAnnounce {
    /// media-processor's repository.
    pub repo: Repo,
    /// Its relay, woken after each write.
    pub relay: OutboxRelay,
}

#[async_trait::async_trait]
impl Announce for OutboxAnnounce {
    async fn ready(&self, ready: &RecordingReady) -> Result<(), String> {
        self.repo
            .emit_recording(crate::NAME, ready)
            .await
            .map_err(|e| e.to_string())?;
        self.relay.notify();
        Ok(())
    }

    async fn transcript(&self, t: &dialstack_contract::CallTranscript) -> Result<(), String> {
        self.repo
            .emit_transcript(crate::NAME, t)
            .await
            .map_err(|e| e.to_string())?;
        self.relay.notify();
        Ok(())
    }
}

/// The recorder of one media processor.
pub struct Recorder {
    jobs: mpsc::Sender<Job>,
    next_id: AtomicU64,
    open: Arc<AtomicUsize>,
    max_open: usize,
    spool: PathBuf,
    store: Arc<RecordingStore>,
    announce: Arc<dyn Announce>,
    uploads: Arc<Semaphore>,
    metrics: RecordingMetrics,
    stop: CancellationToken,
    transcriber: std::sync::OnceLock<Arc<dyn Transcriber>>,
}

impl Recorder {
    /// Where recordings (and IVR messages) are stored.
    pub fn store(&self) -> &Arc<RecordingStore> {
        &self.store
    }

    /// Sets the engine for post-call transcripts (once; later calls are
    /// ignored).
    pub fn set_transcriber(&self, t: Arc<dyn Transcriber>) {
        let _ = self.transcriber.set(t);
    }

    /// Starts the writer thread and uploads what a previous run left in
    /// `spool`.
    pub fn start(
        spool: PathBuf,
        max_open: usize,
        store: Arc<RecordingStore>,
        announce: Arc<dyn Announce>,
        metrics: RecordingMetrics,
        stop: CancellationToken,
    ) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(&spool)?;
        let (jobs, rx) = mpsc::channel(QUEUE);
        let failed = metrics.results.with_label_values(&["failed"]);
        std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || writer(rx, failed))?;
        let me = Arc::new(Self {
            jobs,
            next_id: AtomicU64::new(1),
            open: Arc::new(AtomicUsize::new(0)),
            max_open,
            spool,
            store,
            announce,
            uploads: Arc::new(Semaphore::new(UPLOADS)),
            metrics,
            stop,
            transcriber: std::sync::OnceLock::new(),
        });
        let leftover = me.clone();
        tokio::spawn(async move { leftover.upload_spool().await });
        Ok(me)
    }

    /// Opens a recording for `call`, or `None` when overloaded (the call
    /// goes on unrecorded; counted as shed).
    pub fn begin(
        self: &Arc<Self>,
        call: CallRef,
        retention_days: Option<u32>,
    ) -> Option<Recording> {
        let busy =
            self.open.load(Ordering::Relaxed) >= self.max_open || self.jobs.capacity() < QUEUE / 2;
        if busy || !safe_id(&call.call_id) {
            self.metrics.results.with_label_values(&["shed"]).inc();
            tracing::warn!(call_id = %call.call_id, "recording shed: recorder overloaded");
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let path = self.spool.join(format!("{}.wav", call.call_id));
        if self.jobs.try_send(Job::Open { id, path }).is_err() {
            self.metrics.results.with_label_values(&["shed"]).inc();
            return None;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        Some(Recording {
            recorder: self.clone(),
            id,
            call,
            retention_days,
            buf: Vec::with_capacity(CHUNK_FRAMES * 2),
            first_frame: 0,
            frames: 0,
            closed: false,
            transcribe: false,
        })
    }

    /// Uploads every finished recording in the spool (after a restart, or
    /// one whose upload gave up at shutdown).
    async fn upload_spool(self: Arc<Self>) {
        let Ok(mut dir) = tokio::fs::read_dir(&self.spool).await else {
            return;
        };
        let mut found = Vec::new();
        while let Ok(Some(e)) = dir.next_entry().await {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                found.push(p);
            }
        }
        for p in found {
            match tokio::fs::read(&p)
                .await
                .ok()
                .and_then(|b| serde_json::from_slice::<Sidecar>(&b).ok())
            {
                Some(side) => {
                    tracing::info!(call_id = %side.call.call_id, "uploading a recording left in the spool");
                    self.metrics.spooled.inc();
                    self.clone().spawn_upload(side);
                }
                None => {
                    tracing::warn!(path = %p.display(), "unreadable recording sidecar left in the spool")
                }
            }
        }
    }

    fn spawn_upload(self: Arc<Self>, side: Sidecar) {
        tokio::spawn(async move {
            let Ok(_permit) = self.uploads.clone().acquire_owned().await else {
                return;
            };
            self.upload(side).await;
        });
    }

    /// Uploads one spooled recording and announces it, retrying with
    /// backoff until it succeeds or the process stops (the spool keeps it).
    async fn upload(&self, side: Sidecar) {
        let wav = self.spool.join(format!("{}.wav", side.call.call_id));
        let meta = self.spool.join(format!("{}.json", side.call.call_id));
        let mut delay = Duration::from_millis(500);
        loop {
            let tried = async {
                self.store
                    .put_file(&side.key, &wav)
                    .await
                    .map_err(|e| format!("upload: {e}"))?;
                let ready = RecordingReady {
                    call: CallRef {
                        at_ms: dialstack_common::now_ms(),
                        ..side.call.clone()
                    },
                    url: self.store.url_for(&side.key),
                    duration_ms: side.duration_ms,
                    bytes: side.bytes,
                    sha256: side.sha256.clone(),
                    retention_days: side.retention_days,
                };
                self.announce
                    .ready(&ready)
                    .await
                    .map_err(|e| format!("announce: {e}"))?;
                Ok::<_, String>(())
            }
            .await;
            match tried {
                Ok(()) => {
                    if side.transcribe {
                        self.transcribe(&side, &wav).await;
                    }
                    let _ = tokio::fs::remove_file(&wav).await;
                    let _ = tokio::fs::remove_file(&meta).await;
                    self.metrics.spooled.dec();
                    self.metrics.results.with_label_values(&["uploaded"]).inc();
                    tracing::info!(call_id = %side.call.call_id, key = %side.key, bytes = side.bytes, "recording stored");
                    return;
                }
                Err(error) => {
                    self.metrics.upload_retries.inc();
                    tracing::warn!(call_id = %side.call.call_id, %error, retry_in_ms = delay.as_millis() as u64, "recording upload failed, kept in the spool");
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(60));
        }
    }
}

impl Recorder {
    /// Transcribes the callee's channel of a stored recording and
    /// announces it; a failure is logged (the recording is kept either way).
    async fn transcribe(&self, side: &Sidecar, wav: &Path) {
        let call_id = &side.call.call_id;
        let Some(engine) = self.transcriber.get() else {
            tracing::warn!(%call_id, "transcript asked for, but no speech engine in this process");
            return;
        };
        let left = match tokio::fs::read(wav).await {
            Ok(bytes) => left_channel(&bytes),
            Err(e) => {
                tracing::warn!(%call_id, error = %e, "cannot read the recording to transcribe");
                return;
            }
        };
        let seconds = left.len() as f64 / 8_000.0;
        match engine.transcribe(&left).await {
            Ok((text, confidence)) => {
                let mut text = text;
                if text.len() > dialstack_contract::MAX_TRANSCRIPT_BYTES {
                    let mut cut = dialstack_contract::MAX_TRANSCRIPT_BYTES;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                }
                let t = dialstack_contract::CallTranscript {
                    call: CallRef {
                        at_ms: dialstack_common::now_ms(),
                        ..side.call.clone()
                    },
                    text,
                    confidence: confidence.filter(|c| (0.0..=1.0).contains(c)),
                    engine: engine.engine(),
                    audio_seconds: seconds,
                };
                match self.announce.transcript(&t).await {
                    Ok(()) => tracing::info!(%call_id, seconds, "transcript stored"),
                    Err(e) => {
                        tracing::warn!(%call_id, error = %e, "cannot announce the transcript")
                    }
                }
            }
            Err(e) => tracing::warn!(%call_id, error = %e, "transcription failed"),
        }
    }
}

/// The left (callee) channel of one of our stereo recordings, at most
/// [`MAX_TRANSCRIBED_SAMPLES`].
fn left_channel(wav: &[u8]) -> Vec<i16> {
    let data = wav.get(44..).unwrap_or(&[]);
    data.chunks_exact(4)
        .take(MAX_TRANSCRIBED_SAMPLES)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// Call ids become file names: only the contract's id characters.
fn safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
}

/// One call's recording, fed by its media loop every 20 ms.
pub struct Recording {
    recorder: Arc<Recorder>,
    id: u64,
    call: CallRef,
    retention_days: Option<u32>,
    buf: Vec<i16>,
    first_frame: u64,
    frames: u64,
    closed: bool,
    transcribe: bool,
}

impl Recording {
    /// Transcribe this recording once stored.
    pub fn set_transcribe(&mut self, on: bool) {
        self.transcribe = on;
    }

    /// Appends one 20 ms stereo frame: `left` heard, `right` sent.
    pub fn push(&mut self, left: &[i16; 160], right: &[i16; 160]) {
        for (l, r) in left.iter().zip(right) {
            self.buf.push(*l);
            self.buf.push(*r);
        }
        self.frames += 160;
        if self.buf.len() >= CHUNK_FRAMES * 2 {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let samples = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_FRAMES * 2));
        let first_frame = self.first_frame;
        self.first_frame = self.frames;
        let job = Job::Chunk {
            id: self.id,
            first_frame,
            samples,
        };
        if self.recorder.jobs.try_send(job).is_err() {
            // The writer is behind: the gap is written as silence, so the
            // recording keeps its length.
            self.recorder.metrics.chunks_dropped.inc();
        }
    }

    /// Ends the recording: the file is finished and queued for upload.
    pub async fn finish(mut self) {
        self.flush();
        self.closed = true;
        let (done, result) = oneshot::channel();
        let rec = self.recorder.clone();
        let sent = rec.jobs.send(Job::Close { id: self.id, done }).await;
        rec.open.fetch_sub(1, Ordering::Relaxed);
        if sent.is_err() {
            return;
        }
        let finished = match result.await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                tracing::warn!(call_id = %self.call.call_id, error = %e, "recording failed");
                return;
            }
            Err(_) => return,
        };
        let side = Sidecar {
            key: format!("{}/{}.wav", self.call.campaign_id, self.call.call_id),
            call: self.call.clone(),
            duration_ms: wav::duration_ms(finished.frames),
            bytes: finished.bytes,
            sha256: finished.sha256,
            retention_days: self.retention_days,
            transcribe: self.transcribe,
        };
        let meta = rec.spool.join(format!("{}.json", self.call.call_id));
        let written = match serde_json::to_vec(&side) {
            Ok(b) => tokio::fs::write(&meta, b).await,
            Err(e) => Err(std::io::Error::other(e)),
        };
        if let Err(e) = written {
            tracing::warn!(call_id = %self.call.call_id, error = %e, "cannot write the recording sidecar; uploading without it");
        }
        rec.metrics.spooled.inc();
        rec.clone().spawn_upload(side);
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if !self.closed {
            // Dropped without finish (the call task was aborted): the writer
            // closes it on a best-effort basis; the file stays in the spool
            // without a sidecar.
            self.recorder.open.fetch_sub(1, Ordering::Relaxed);
            let (done, _) = oneshot::channel();
            let _ = self
                .recorder
                .jobs
                .try_send(Job::Close { id: self.id, done });
        }
    }
}

struct OpenFile {
    writer: Option<wav::WavWriter>,
    path: PathBuf,
}

/// The writer thread: owns every open file.
fn writer(mut rx: mpsc::Receiver<Job>, failed: prometheus::IntCounter) {
    let mut open: HashMap<u64, OpenFile> = HashMap::new();
    let silence = vec![0i16; CHUNK_FRAMES * 2];
    let fail = |f: &mut OpenFile, e: &std::io::Error, failed: &prometheus::IntCounter| {
        if f.writer.take().is_some() {
            failed.inc();
            tracing::warn!(path = %f.path.display(), error = %e, "recording write failed; the call goes on unrecorded");
            let _ = std::fs::remove_file(&f.path);
        }
    };
    while let Some(job) = rx.blocking_recv() {
        match job {
            Job::Open { id, path } => {
                let writer = match wav::WavWriter::create(&path) {
                    Ok(w) => Some(w),
                    Err(e) => {
                        failed.inc();
                        tracing::warn!(path = %path.display(), error = %e, "cannot create recording file");
                        None
                    }
                };
                open.insert(id, OpenFile { writer, path });
            }
            Job::Chunk {
                id,
                first_frame,
                samples,
            } => {
                let Some(f) = open.get_mut(&id) else { continue };
                let Some(w) = f.writer.as_mut() else { continue };
                let mut result = Ok(());
                while result.is_ok() && w.frames < first_frame {
                    let gap = ((first_frame - w.frames) as usize).min(CHUNK_FRAMES);
                    result = w.write_interleaved(&silence[..gap * 2]);
                }
                if result.is_ok() {
                    result = w.write_interleaved(&samples);
                }
                if let Err(e) = result {
                    fail(f, &e, &failed);
                }
            }
            Job::Close { id, done } => {
                let Some(mut f) = open.remove(&id) else {
                    let _ = done.send(Err(std::io::Error::other("unknown recording")));
                    continue;
                };
                let result = match f.writer.take() {
                    None => Err(std::io::Error::other("recording failed earlier")),
                    Some(w) => {
                        let frames = w.frames;
                        let r = w
                            .finish()
                            .and_then(|bytes| Ok((bytes, sha256_file(&f.path)?)))
                            .map(|(bytes, sha256)| Finished {
                                frames,
                                bytes,
                                sha256,
                            });
                        if let Err(e) = &r {
                            failed.inc();
                            tracing::warn!(path = %f.path.display(), error = %e, "cannot finish recording file");
                            let _ = std::fs::remove_file(&f.path);
                        }
                        r
                    }
                };
                let _ = done.send(result);
            }
        }
    }
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
