//! Text to speech with espeak-ng, run as a separate process (it is GPL:
//! never linked). Per-call prompts are filled in by
//! `dialstack_contract::ivr::render_template` before they get here.
//!
//! - A render is keyed by the SHA-256 of the engine's version line (read
//!   once at start), the voice, the rate and the text. Renders are kept in
//!   memory (the last [`MEMORY_ENTRIES`], at most [`MEMORY_BYTES`]) and on
//!   disk as `<cache_dir>/tts-<key>.pcm`: raw little-endian 16-bit 8 kHz
//!   samples followed by a 40-byte trailer (`DSTTSPCM` and the SHA-256 of
//!   the samples), written to a temporary name and renamed into place. A
//!   file whose trailer does not match (truncated, corrupt) is rendered
//!   again and replaced.
//! - At most `max_concurrent` engines run at once (a semaphore; waits are
//!   counted), each killed at `timeout`.
//! - The text reaches the engine on its standard input (`--stdin`), never
//!   as an argument, so text starting with `-` is text; the voice is
//!   checked against `[A-Za-z0-9_+-]{1,40}` and is one argument (no
//!   shell). SSML (`-m`) is off.
//! - espeak-ng writes its WAV to a pipe with the data size at its maximum;
//!   [`super::audio`] reads the data chunk to the end of the output.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dialstack_common::config::{ConfigError, Env};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use super::audio::{self, AudioError};
use super::metrics::AiMetrics;

/// Renders kept in memory.
pub const MEMORY_ENTRIES: usize = 64;
/// Bytes of samples kept in memory.
pub const MEMORY_BYTES: usize = 32 * 1024 * 1024;
/// Changes whenever the cached samples would differ for the same engine
/// output (resampler, format): old cache files are then never read.
const CACHE_FORMAT: &str = "dialstack-tts-1";
/// The trailer's magic.
const TRAILER_MAGIC: &[u8; 8] = b"DSTTSPCM";
/// Longest engine output accepted (s); [`TtsConfig::max_text_chars`] at
/// the slowest rate stays far below it.
const MAX_OUTPUT_SECONDS: u32 = 1_800;

/// Text-to-speech settings.
#[derive(Debug, Clone)]
pub struct TtsConfig {
    /// The espeak-ng binary (`DIALSTACK_ESPEAK_BIN`, default `espeak-ng`
    /// from `PATH`).
    pub espeak_bin: PathBuf,
    /// Where renders are cached (`DIALSTACK_AUDIO_CACHE`, default
    /// `/var/cache/audio`; created if missing).
    pub cache_dir: PathBuf,
    /// Engines running at once (`DIALSTACK_TTS_CONCURRENCY`, default 4, 1-64).
    pub max_concurrent: usize,
    /// Longest one render may take (5 s).
    pub timeout: Duration,
    /// Longest text (characters, 2000).
    pub max_text_chars: usize,
}

impl Default for TtsConfig {
    fn default() -> Self {
        Self {
            espeak_bin: "espeak-ng".into(),
            cache_dir: "/var/cache/audio".into(),
            max_concurrent: 4,
            timeout: Duration::from_secs(5),
            max_text_chars: 2_000,
        }
    }
}

impl TtsConfig {
    /// The settings from `env`, defaults for what it does not set.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let d = Self::default();
        let max_concurrent = env.parse_or("DIALSTACK_TTS_CONCURRENCY", d.max_concurrent)?;
        if !(1..=64).contains(&max_concurrent) {
            return Err(ConfigError::new(
                "DIALSTACK_TTS_CONCURRENCY",
                "must be 1-64",
            ));
        }
        Ok(Self {
            espeak_bin: env.or("DIALSTACK_ESPEAK_BIN", "espeak-ng").into(),
            cache_dir: env.or("DIALSTACK_AUDIO_CACHE", "/var/cache/audio").into(),
            max_concurrent,
            ..d
        })
    }
}

/// What to say and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TtsRequest {
    /// The text (control characters are spoken as spaces).
    pub text: String,
    /// espeak-ng voice, e.g. `en-us`, `en+f3`: `[A-Za-z0-9_+-]{1,40}`.
    pub voice: String,
    /// Words per minute, 80-450.
    pub rate_wpm: u16,
}

impl TtsRequest {
    /// `text` in the default voice (`en-us`) at the default rate (160).
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            ..Self::default()
        }
    }
}

impl Default for TtsRequest {
    fn default() -> Self {
        Self {
            text: String::new(),
            voice: "en-us".into(),
            rate_wpm: 160,
        }
    }
}

/// A render.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// 8 kHz mono samples.
    pub pcm: Arc<Vec<i16>>,
    /// Whether it came from the cache (memory or disk).
    pub cached: bool,
    /// The cache key (hex SHA-256).
    pub key: String,
}

/// Why a render failed.
#[derive(Debug, thiserror::Error)]
pub enum TtsError {
    /// The voice is not a voice name.
    #[error("voice {0:?} must be 1-40 of letters, digits and +-_")]
    BadVoice(String),
    /// The rate is out of range.
    #[error("rate {0} must be 80-450 words per minute")]
    BadRate(u16),
    /// The text is too long.
    #[error("text is {chars} characters, more than {max}")]
    TextTooLong {
        /// Its length.
        chars: usize,
        /// The limit.
        max: usize,
    },
    /// Nothing but blanks.
    #[error("nothing to say: the text is blank")]
    EmptyText,
    /// The engine could not be started (missing binary, no permission).
    #[error("text to speech engine {path}: {reason}")]
    Engine {
        /// The binary.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The engine ran out of time and was killed.
    #[error("text to speech engine timed out after {0:?}")]
    Timeout(Duration),
    /// The engine exited with an error (an unknown voice, for one).
    #[error("text to speech engine failed ({status}): {message}")]
    Failed {
        /// Exit status.
        status: String,
        /// The first line of its standard error.
        message: String,
    },
    /// The engine's output is not audio we read.
    #[error("text to speech engine output: {0}")]
    Output(#[source] AudioError),
    /// The cache directory cannot be created.
    #[error("text to speech cache {path}: {reason}")]
    Cache {
        /// The directory.
        path: String,
        /// The I/O error.
        reason: String,
    },
}

/// The last renders, bounded in count and bytes.
#[derive(Default)]
struct Lru {
    /// Key to samples and the tick of their last use.
    entries: HashMap<String, (Arc<Vec<i16>>, u64)>,
    /// Incremented on every use.
    tick: u64,
    /// Bytes of samples held.
    bytes: usize,
}

impl Lru {
    fn get(&mut self, key: &str) -> Option<Arc<Vec<i16>>> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(key).map(|(pcm, t)| {
            *t = tick;
            pcm.clone()
        })
    }

    fn insert(&mut self, key: String, pcm: Arc<Vec<i16>>) {
        let size = pcm.len() * 2;
        if size > MEMORY_BYTES {
            return;
        }
        self.tick += 1;
        if let Some((old, _)) = self.entries.insert(key, (pcm, self.tick)) {
            self.bytes -= old.len() * 2;
        }
        self.bytes += size;
        while self.entries.len() > MEMORY_ENTRIES || self.bytes > MEMORY_BYTES {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some((old, _)) = self.entries.remove(&oldest) {
                self.bytes -= old.len() * 2;
            }
        }
    }
}

/// The text-to-speech engine.
pub struct Tts {
    /// Settings.
    config: TtsConfig,
    /// The engine's `--version` line, part of every cache key (why it
    /// could not be read, if not).
    version: Result<String, String>,
    /// Whether the cache directory could be created (why not, if not).
    cache: Result<(), String>,
    /// Engine processes running at once.
    slots: Semaphore,
    /// Recent renders; locked only to look up or insert, never across an await.
    memory: Mutex<Lru>,
    /// Counters.
    metrics: AiMetrics,
}

impl Tts {
    /// The engine as configured. Creates the cache directory and reads the
    /// engine's version (blocks briefly: call it at start); [`Tts::check`]
    /// says whether both worked. A missing engine fails each render with
    /// [`TtsError::Engine`] naming the binary; without a usable cache
    /// directory renders still work, uncached on disk (logged).
    pub fn new(config: TtsConfig, metrics: AiMetrics) -> Self {
        let cache = std::fs::create_dir_all(&config.cache_dir).map_err(|e| e.to_string());
        let version = engine_version(&config.espeak_bin);
        Self {
            slots: Semaphore::new(config.max_concurrent.max(1)),
            config,
            version,
            cache,
            memory: Mutex::default(),
            metrics,
        }
    }

    /// Whether the engine answered and the cache directory exists.
    pub fn check(&self) -> Result<(), TtsError> {
        self.version()?;
        self.cache.clone().map_err(|reason| TtsError::Cache {
            path: self.config.cache_dir.display().to_string(),
            reason,
        })
    }

    /// The engine's version line, read at start.
    pub fn version(&self) -> Result<&str, TtsError> {
        self.version.as_deref().map_err(|reason| TtsError::Engine {
            path: self.config.espeak_bin.display().to_string(),
            reason: reason.clone(),
        })
    }

    /// The cache file of a render's key.
    pub fn cache_file(&self, key: &str) -> PathBuf {
        self.config.cache_dir.join(format!("tts-{key}.pcm"))
    }

    /// `req` as 8 kHz audio: from memory, from the disk cache, or rendered
    /// (then cached in both).
    pub async fn render(&self, req: &TtsRequest) -> Result<Rendered, TtsError> {
        let text = self.check_request(req)?;
        let key = cache_key(self.version()?, &req.voice, req.rate_wpm, &text);
        if let Some(r) = self.lookup_cache(&key).await {
            return Ok(r);
        }
        let _slot = match self.slots.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                self.metrics.tts_waits.inc();
                self.slots.acquire().await.map_err(|_| TtsError::Engine {
                    path: self.config.espeak_bin.display().to_string(),
                    reason: "the engine is shut down".into(),
                })?
            }
        };
        // The same text may have been rendered while this one waited.
        if let Some(pcm) = self.memory().get(&key) {
            return Ok(self.hit(pcm, key));
        }
        self.metrics.tts_cache.with_label_values(&["miss"]).inc();
        let started = Instant::now();
        let wav = self.run_engine(req, &text).await?;
        let pcm = tokio::task::spawn_blocking(move || {
            audio::decode_native(&wav, MAX_OUTPUT_SECONDS)
                .map(|(pcm, rate)| dialstack_media::resample::resample(&pcm, rate, audio::RATE))
        })
        .await
        .map_err(|e| TtsError::Engine {
            path: self.config.espeak_bin.display().to_string(),
            reason: format!("decoding its output failed: {e}"),
        })?
        .map_err(TtsError::Output)?;
        self.metrics
            .tts_seconds
            .observe(started.elapsed().as_secs_f64());
        let pcm = Arc::new(pcm);
        self.memory().insert(key.clone(), pcm.clone());
        let path = self.cache_file(&key);
        let to_disk = pcm.clone();
        let written = tokio::task::spawn_blocking(move || write_cache(&path, &to_disk)).await;
        if let Ok(Err(e)) | Err(e) = written.map_err(std::io::Error::other) {
            tracing::warn!(key = %key, error = %e, "text to speech cache file not written");
        }
        Ok(Rendered {
            pcm,
            cached: false,
            key,
        })
    }

    /// The checked request's text (control characters as spaces).
    fn check_request(&self, req: &TtsRequest) -> Result<String, TtsError> {
        if !dialstack_contract::ivr::valid_voice(&req.voice) {
            return Err(TtsError::BadVoice(req.voice.clone()));
        }
        if !(80..=450).contains(&req.rate_wpm) {
            return Err(TtsError::BadRate(req.rate_wpm));
        }
        let chars = req.text.chars().count();
        if chars > self.config.max_text_chars {
            return Err(TtsError::TextTooLong {
                chars,
                max: self.config.max_text_chars,
            });
        }
        let text: String = req
            .text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if text.trim().is_empty() {
            return Err(TtsError::EmptyText);
        }
        Ok(text)
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn hit(&self, pcm: Arc<Vec<i16>>, key: String) -> Rendered {
        self.metrics.tts_cache.with_label_values(&["hit"]).inc();
        Rendered {
            pcm,
            cached: true,
            key,
        }
    }

    async fn lookup_cache(&self, key: &str) -> Option<Rendered> {
        if let Some(pcm) = self.memory().get(key) {
            return Some(self.hit(pcm, key.to_owned()));
        }
        let path = self.cache_file(key);
        let pcm = tokio::task::spawn_blocking(move || read_cache(&path))
            .await
            .ok()
            .flatten()?;
        let pcm = Arc::new(pcm);
        self.memory().insert(key.to_owned(), pcm.clone());
        Some(self.hit(pcm, key.to_owned()))
    }

    /// Runs espeak-ng; its WAV output.
    async fn run_engine(&self, req: &TtsRequest, text: &str) -> Result<Vec<u8>, TtsError> {
        let bin = &self.config.espeak_bin;
        let engine_err = |reason: String| TtsError::Engine {
            path: bin.display().to_string(),
            reason,
        };
        let mut child = tokio::process::Command::new(bin)
            .arg("--stdout")
            .arg("-v")
            .arg(&req.voice)
            .arg("-s")
            .arg(req.rate_wpm.to_string())
            .arg("--stdin")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| engine_err(e.to_string()))?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| engine_err("no standard input".into()))?;
        let input = text.as_bytes().to_vec();
        let run = async move {
            // At most a few KiB: the pipe takes it whole before the engine reads.
            let written = stdin.write_all(&input).await;
            drop(stdin);
            let out = child.wait_with_output().await;
            (written, out)
        };
        let (written, out) = tokio::time::timeout(self.config.timeout, run)
            .await
            .map_err(|_| TtsError::Timeout(self.config.timeout))?;
        let out = out.map_err(|e| engine_err(e.to_string()))?;
        if !out.status.success() {
            let message = String::from_utf8_lossy(&out.stderr)
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("no message")
                .chars()
                .take(200)
                .collect();
            return Err(TtsError::Failed {
                status: out.status.to_string(),
                message,
            });
        }
        written.map_err(|e| engine_err(format!("writing the text: {e}")))?;
        Ok(out.stdout)
    }
}

/// The first line `bin --version` prints.
fn engine_version(bin: &Path) -> Result<String, String> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned);
    match line {
        Some(l) if out.status.success() => Ok(l),
        _ => Err(format!("--version printed no version ({})", out.status)),
    }
}

/// The cache key of a render (hex SHA-256).
fn cache_key(version: &str, voice: &str, rate: u16, text: &str) -> String {
    let mut h = Sha256::new();
    for part in [CACHE_FORMAT, version, voice, &rate.to_string(), text] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex(&h.finalize())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The samples of a cache file, `None` when it is missing or damaged.
fn read_cache(path: &Path) -> Option<Vec<i16>> {
    let bytes = std::fs::read(path).ok()?;
    let body_len = bytes.len().checked_sub(40)?;
    let (body, trailer) = bytes.split_at(body_len);
    if body.len() % 2 != 0 || &trailer[..8] != TRAILER_MAGIC {
        return None;
    }
    if Sha256::digest(body).as_slice() != &trailer[8..] {
        return None;
    }
    Some(
        body.chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect(),
    )
}

/// Writes a cache file atomically (temporary name, then rename).
fn write_cache(path: &Path, pcm: &[i16]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(pcm.len() * 2 + 40);
    for s in pcm {
        bytes.extend_from_slice(&s.to_le_bytes());
    }
    let digest = Sha256::digest(&bytes);
    bytes.extend_from_slice(TRAILER_MAGIC);
    bytes.extend_from_slice(&digest);
    let tmp = path.with_extension(format!("tmp-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_cache_is_bounded_by_count_and_bytes() {
        let mut lru = Lru::default();
        for i in 0..100 {
            lru.insert(format!("k{i}"), Arc::new(vec![0; 10]));
        }
        assert_eq!(lru.entries.len(), MEMORY_ENTRIES);
        assert!(lru.get("k99").is_some() && lru.get("k0").is_none());
        // Using an entry keeps it.
        assert!(lru.get("k36").is_some());
        for i in 100..163 {
            lru.insert(format!("k{i}"), Arc::new(vec![0; 10]));
        }
        assert!(lru.get("k36").is_some() && lru.get("k37").is_none());
        let big = MEMORY_BYTES / 2 / 3;
        for i in 0..5 {
            lru.insert(format!("big{i}"), Arc::new(vec![0; big]));
        }
        assert!(lru.bytes <= MEMORY_BYTES);
        assert_eq!(
            lru.bytes,
            lru.entries
                .values()
                .map(|(p, _)| p.len() * 2)
                .sum::<usize>()
        );
        lru.insert("huge".into(), Arc::new(vec![0; MEMORY_BYTES]));
        assert!(lru.get("huge").is_none());
    }

    #[test]
    fn cache_files_round_trip_and_damage_is_detected() {
        let dir = std::env::temp_dir().join(format!("dialstack-tts-unit-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tts-x.pcm");
        let pcm: Vec<i16> = (0..1000).map(|i| i as i16 * 31).collect();
        write_cache(&path, &pcm).unwrap();
        assert_eq!(read_cache(&path).unwrap(), pcm);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(read_cache(&path).is_none());
        std::fs::write(&path, &bytes[..30]).unwrap();
        assert!(read_cache(&path).is_none());
        assert!(read_cache(&dir.join("missing")).is_none());
        // Only the final file is left behind.
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
        assert_ne!(
            cache_key("v", "en", 160, "a"),
            cache_key("v", "en", 161, "a")
        );
        assert_ne!(
            cache_key("v", "en", 160, "ab"),
            cache_key("v", "ena", 160, "b")
        );
    }

    #[test]
    fn config_comes_from_the_passed_environment() {
        let c = TtsConfig::from_env(&Env::from_pairs([
            ("DIALSTACK_ESPEAK_BIN", "/opt/espeak"),
            ("DIALSTACK_AUDIO_CACHE", "/tmp/c"),
            ("DIALSTACK_TTS_CONCURRENCY", "8"),
        ]))
        .unwrap();
        assert_eq!(c.espeak_bin, PathBuf::from("/opt/espeak"));
        assert_eq!(c.cache_dir, PathBuf::from("/tmp/c"));
        assert_eq!(c.max_concurrent, 8);
        let d = TtsConfig::from_env(&Env::default()).unwrap();
        assert_eq!(d.espeak_bin, PathBuf::from("espeak-ng"));
        assert_eq!(d.cache_dir, PathBuf::from("/var/cache/audio"));
        assert_eq!((d.max_concurrent, d.max_text_chars), (4, 2_000));
        assert_eq!(d.timeout, Duration::from_secs(5));
        for bad in ["0", "65", "many"] {
            let e = TtsConfig::from_env(&Env::from_pairs([("DIALSTACK_TTS_CONCURRENCY", bad)]))
                .unwrap_err();
            assert_eq!(e.var, "DIALSTACK_TTS_CONCURRENCY");
        }
    }
}
