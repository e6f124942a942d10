//! Speech recognition: pocketsphinx (`pocketsphinx_continuous`) with the
//! US English model, as a separate process per recognition.
//!
//! - The model is a 16 kHz one and telephone audio has nothing above
//!   4 kHz: fed as is, the empty upper filter bank channels wreck the
//!   features (digit strings come out as one digit). So the call's 8 kHz
//!   audio is padded with 300 ms of silence each side (the engine's voice
//!   detector needs a little), upsampled to 16 kHz, and its upper band is
//!   filled: a mirror image of the telephone band at 0.3 of its level
//!   (speech-shaped energy where fricatives would be) plus a faint fixed
//!   noise floor. Tuned on `benches/asr_accuracy.rs` (espeak-ng and flite
//!   voices, noise, µ-law); the figures there are the honest limits of this
//!   wide-band model on telephone audio.
//! - A grammar ([`Grammar`]) becomes a JSGF file; without one the language
//!   model transcribes. Both go to temporary files that are removed after.
//! - At most `max_concurrent` recognitions run and `max_queue` more wait;
//!   any beyond are refused at once ([`AsrError::Busy`], counted): a burst
//!   of callers cannot pile up engine processes or memory. Post-call
//!   transcripts have their own, smaller pool (half the slots, at least
//!   one) and wait instead of being refused, so a backlog of transcripts
//!   never delays a caller's answer.
//! - Each process is killed after `timeout` (transcripts: `timeout` plus
//!   twice the audio's length) and when the caller gives up.
//! - Resampling and file writing run on the blocking pool; the async
//!   runtime only awaits the child.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dialstack_common::config::{ConfigError, Env};
use tokio::sync::Semaphore;

use super::metrics::AiMetrics;

/// Silence added before and after the audio (samples at 8 kHz: 300 ms).
const PAD: usize = 2_400;
/// RMS of the 4.4-8 kHz noise floor added to the upsampled audio.
pub const NOISE_FILL_RMS: f32 = 30.0;
/// Level of the telephone band's mirror image added in 4.4-8 kHz.
pub const FOLD_GAIN: f32 = 0.3;
/// Most digits a [`Grammar::Digits`] takes.
pub const MAX_DIGITS: u8 = 32;
/// Most words a [`Grammar::Keywords`] takes.
pub const MAX_KEYWORDS: usize = 32;
/// Bytes of the engine's log kept for an error message.
const MAX_LOG: usize = 256 * 1024;

/// Settings.
#[derive(Debug, Clone)]
pub struct AsrConfig {
    /// The engine (`DIALSTACK_ASR_BIN`, default `pocketsphinx_continuous`).
    pub bin: PathBuf,
    /// The model folder (`DIALSTACK_ASR_MODEL_DIR`, default
    /// `/usr/share/pocketsphinx/model/en-us`): `en-us/` (acoustic model),
    /// `cmudict-en-us.dict`, `en-us.lm.bin`.
    pub model_dir: PathBuf,
    /// An MLLR transform applied to the acoustic model's means at load
    /// (`DIALSTACK_ASR_MLLR`, a `mllr_matrix` from sphinxtrain's
    /// `mllr_solve`; default none). `scripts/asr-adapt.sh` builds a fully
    /// adapted model folder instead, which needs none.
    pub mllr: Option<PathBuf>,
    /// Recognitions at once (`DIALSTACK_ASR_CONCURRENCY`, default: cores).
    pub max_concurrent: usize,
    /// Recognitions that may wait for a slot (default 4 per slot).
    pub max_queue: usize,
    /// Longest recognition (10 s).
    pub timeout: Duration,
    /// Where temporary WAVs and grammars go.
    pub tmp_dir: PathBuf,
}

impl Default for AsrConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            bin: "pocketsphinx_continuous".into(),
            model_dir: "/usr/share/pocketsphinx/model/en-us".into(),
            mllr: None,
            max_concurrent: cores,
            max_queue: cores * 4,
            timeout: Duration::from_secs(10),
            tmp_dir: std::env::temp_dir(),
        }
    }
}

impl AsrConfig {
    /// The settings from `env`, defaults for what it does not set.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let d = Self::default();
        let max_concurrent: usize = env.parse_or("DIALSTACK_ASR_CONCURRENCY", d.max_concurrent)?;
        if !(1..=256).contains(&max_concurrent) {
            return Err(ConfigError::new(
                "DIALSTACK_ASR_CONCURRENCY",
                "must be 1-256",
            ));
        }
        Ok(Self {
            bin: env
                .or("DIALSTACK_ASR_BIN", "pocketsphinx_continuous")
                .into(),
            model_dir: env
                .or(
                    "DIALSTACK_ASR_MODEL_DIR",
                    "/usr/share/pocketsphinx/model/en-us",
                )
                .into(),
            mllr: env.get("DIALSTACK_ASR_MLLR").map(PathBuf::from),
            max_concurrent,
            max_queue: max_concurrent * 4,
            ..d
        })
    }

    /// The engine's arguments for one run over `wav`, with the grammar
    /// file `jsgf` or else the language model.
    fn engine_args(&self, wav: &Path, jsgf: Option<&Path>) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec![
            "-infile".into(),
            wav.into(),
            "-hmm".into(),
            self.hmm().into(),
            "-dict".into(),
            self.dict().into(),
            "-time".into(),
            "yes".into(),
        ];
        if let Some(mllr) = &self.mllr {
            args.extend(["-mllr".into(), mllr.into()]);
        }
        match jsgf {
            Some(g) => args.extend(["-jsgf".into(), g.into()]),
            None => args.extend(["-lm".into(), self.lm().into()]),
        }
        args
    }

    fn hmm(&self) -> PathBuf {
        self.model_dir.join("en-us")
    }

    fn dict(&self) -> PathBuf {
        self.model_dir.join("cmudict-en-us.dict")
    }

    fn lm(&self) -> PathBuf {
        self.model_dir.join("en-us.lm.bin")
    }
}

/// What the caller may say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grammar {
    /// yes / no (with yeah, yep, nope); the text is `yes` or `no`.
    YesNo,
    /// Digits (zero-nine, oh); the text is the digit string.
    Digits {
        /// Most digits (1-32).
        max: u8,
    },
    /// One word of the list (lowercase dictionary words); the text is the word.
    Keywords(Vec<String>),
}

const YES: &[&str] = &["yes", "yeah", "yep"];
const NO: &[&str] = &["no", "nope"];
const DIGITS: &[(&str, char)] = &[
    ("zero", '0'),
    ("oh", '0'),
    ("one", '1'),
    ("two", '2'),
    ("three", '3'),
    ("four", '4'),
    ("five", '5'),
    ("six", '6'),
    ("seven", '7'),
    ("eight", '8'),
    ("nine", '9'),
];

impl Grammar {
    /// The JSGF text. Keywords that are not lowercase words are left out
    /// ([`Asr::check`] refuses them first).
    pub fn jsgf(&self) -> String {
        let body = match self {
            Grammar::YesNo => format!("public <answer> = {};", [YES, NO].concat().join(" | ")),
            Grammar::Digits { max } => {
                let words: Vec<&str> = DIGITS.iter().map(|d| d.0).collect();
                let optional = " [<digit>]".repeat(usize::from((*max).clamp(1, MAX_DIGITS)) - 1);
                format!(
                    "public <digits> = <digit>{optional};\n<digit> = {};",
                    words.join(" | ")
                )
            }
            Grammar::Keywords(words) => {
                let words: Vec<&str> = words
                    .iter()
                    .map(String::as_str)
                    .filter(|w| valid_keyword(w))
                    .collect();
                format!("public <word> = {};", words.join(" | "))
            }
        };
        format!("#JSGF V1.0;\ngrammar dialstack;\n{body}\n")
    }

    /// The engine's words in the grammar's terms: `yes`/`no` (the first
    /// answer word), the digit string (at most `max`), or the first keyword.
    pub fn canonical(&self, words: &[&str]) -> String {
        match self {
            Grammar::YesNo => words
                .iter()
                .find_map(|w| {
                    if YES.contains(w) {
                        Some("yes")
                    } else if NO.contains(w) {
                        Some("no")
                    } else {
                        None
                    }
                })
                .unwrap_or_default()
                .to_owned(),
            Grammar::Digits { max } => words
                .iter()
                .filter_map(|w| DIGITS.iter().find(|d| d.0 == *w).map(|d| d.1))
                .take(usize::from(*max))
                .collect(),
            Grammar::Keywords(list) => words
                .iter()
                .find(|w| list.iter().any(|k| k == *w))
                .map(|w| (*w).to_owned())
                .unwrap_or_default(),
        }
    }

    /// Whether a recognized word counts for this grammar.
    fn counts(&self, w: &str) -> bool {
        match self {
            Grammar::YesNo => YES.contains(&w) || NO.contains(&w),
            Grammar::Digits { .. } => DIGITS.iter().any(|d| d.0 == w),
            Grammar::Keywords(list) => list.iter().any(|k| k == w),
        }
    }
}

fn valid_keyword(w: &str) -> bool {
    (1..=32).contains(&w.len()) && w.bytes().all(|b| b.is_ascii_lowercase() || b == b'\'')
}

/// A recognition.
#[derive(Debug, Clone, PartialEq)]
pub struct Recognition {
    /// The result in the grammar's terms (`yes`/`no`, `1234`, the keyword;
    /// for transcripts the words); empty when nothing was recognized.
    pub text: String,
    /// 0-1. pocketsphinx reports a posterior of 1.0 for every word of a
    /// grammar search, so for grammars this is the mean posterior times the
    /// share of the caller's speech (an energy detector over the input)
    /// that the recognized words account for: a grammar forced onto a long
    /// out-of-grammar sentence scores low. For transcripts it is the mean
    /// word posterior. 0 when nothing was recognized.
    pub confidence: f32,
    /// The engine's words as printed (fillers left out).
    pub raw: String,
    /// Engine time, preparing the audio included (ms).
    pub elapsed_ms: u32,
}

/// Why a recognition failed.
#[derive(Debug, thiserror::Error)]
pub enum AsrError {
    /// Every slot and the queue are taken.
    #[error("speech recognition is busy (every slot and the queue are taken)")]
    Busy,
    /// A grammar word the dictionary does not have.
    #[error("grammar word '{0}' is not in the recognizer's dictionary")]
    UnknownWord(String),
    /// A grammar that cannot be used.
    #[error("invalid grammar: {0}")]
    Grammar(String),
    /// The engine failed or is missing.
    #[error("speech recognition engine: {0}")]
    Engine(String),
    /// The engine took too long.
    #[error("speech recognition took longer than {0:?}")]
    Timeout(Duration),
}

/// The recognizer.
pub struct Asr {
    /// Settings.
    cfg: AsrConfig,
    /// Recognition processes at once.
    slots: Arc<Semaphore>,
    /// Transcription processes at once.
    transcript_slots: Arc<Semaphore>,
    /// Recognitions running or waiting (bounded by `max_concurrent + max_queue`).
    admitted: AtomicUsize,
    /// Recognition processes running now.
    running: AtomicUsize,
    /// The most recognition processes that ran at once.
    high_water: AtomicUsize,
    /// The dictionary's words, read on first use.
    dictionary: tokio::sync::OnceCell<HashSet<String>>,
    /// Counters.
    metrics: AiMetrics,
}

impl Asr {
    /// The recognizer as configured. Nothing is checked here: a missing
    /// engine or model fails each recognition with [`AsrError::Engine`]
    /// naming it.
    pub fn new(cfg: AsrConfig, metrics: AiMetrics) -> Self {
        let transcripts = (cfg.max_concurrent / 2).max(1);
        Self {
            slots: Arc::new(Semaphore::new(cfg.max_concurrent.max(1))),
            transcript_slots: Arc::new(Semaphore::new(transcripts)),
            cfg,
            admitted: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            high_water: AtomicUsize::new(0),
            dictionary: tokio::sync::OnceCell::new(),
            metrics,
        }
    }

    /// The most grammar recognitions that ran at once so far.
    pub fn high_water(&self) -> usize {
        self.high_water.load(Ordering::SeqCst)
    }

    /// The engine's name for transcripts.
    pub fn engine_name(&self) -> String {
        format!(
            "pocketsphinx {}",
            self.cfg
                .model_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        )
    }

    async fn dictionary(&self) -> Result<&HashSet<String>, AsrError> {
        self.dictionary
            .get_or_try_init(|| async {
                let path = self.cfg.dict();
                tokio::task::spawn_blocking(move || read_dictionary(&path))
                    .await
                    .map_err(|e| AsrError::Engine(format!("reading the dictionary: {e}")))?
            })
            .await
    }

    /// Checks a grammar: digits 1-32; 1-32 keywords, each a lowercase word
    /// the dictionary has.
    pub async fn check(&self, g: &Grammar) -> Result<(), AsrError> {
        match g {
            Grammar::YesNo => Ok(()),
            Grammar::Digits { max } if !(1..=MAX_DIGITS).contains(max) => Err(AsrError::Grammar(
                format!("digits: max must be 1-{MAX_DIGITS}, not {max}"),
            )),
            Grammar::Digits { .. } => Ok(()),
            Grammar::Keywords(words) => {
                if words.is_empty() || words.len() > MAX_KEYWORDS {
                    return Err(AsrError::Grammar(format!(
                        "keywords: 1-{MAX_KEYWORDS} words, not {}",
                        words.len()
                    )));
                }
                if let Some(w) = words.iter().find(|w| !valid_keyword(w)) {
                    return Err(AsrError::Grammar(format!(
                        "keyword {w:?} is not 1-32 lowercase letters"
                    )));
                }
                let dict = self.dictionary().await?;
                match words.iter().find(|w| !dict.contains(w.as_str())) {
                    Some(w) => Err(AsrError::UnknownWord(w.clone())),
                    None => Ok(()),
                }
            }
        }
    }

    /// Recognizes `pcm8k` (one utterance, 8 kHz) against `grammar`.
    pub async fn recognize(
        &self,
        pcm8k: &[i16],
        grammar: &Grammar,
    ) -> Result<Recognition, AsrError> {
        self.check(grammar).await?;
        let admitted = self.admitted.fetch_add(1, Ordering::SeqCst);
        let _admission = Counted(&self.admitted);
        if admitted >= self.cfg.max_concurrent + self.cfg.max_queue {
            self.metrics.asr_rejected.inc();
            return Err(AsrError::Busy);
        }
        let _slot = acquire(&self.slots, &self.metrics).await?;
        let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        let _running = Counted(&self.running);
        self.high_water.fetch_max(running, Ordering::SeqCst);
        let started = Instant::now();
        let out = self
            .run(pcm8k, Some(grammar.jsgf()), self.cfg.timeout)
            .await?;
        let words: Vec<&str> = out
            .words
            .iter()
            .filter(|w| grammar.counts(&w.word))
            .map(|w| w.word.as_str())
            .collect();
        let text = grammar.canonical(&words);
        let confidence = if text.is_empty() {
            0.0
        } else {
            let kept: Vec<&Word> = out
                .words
                .iter()
                .filter(|w| grammar.counts(&w.word))
                .collect();
            let posterior = kept.iter().map(|w| w.posterior).sum::<f32>() / kept.len() as f32;
            let spoken: f32 = kept.iter().map(|w| w.seconds).sum();
            let speech = speech_seconds(pcm8k);
            let coverage = if speech > 0.0 {
                (spoken / speech).min(1.0)
            } else {
                0.5
            };
            (posterior * coverage).clamp(0.0, 1.0)
        };
        Ok(self.finish(started, text, confidence, out.raw))
    }

    /// Transcribes `pcm8k` (8 kHz, any length) with the language model.
    pub async fn transcribe(&self, pcm8k: &[i16]) -> Result<Recognition, AsrError> {
        let _slot = acquire(&self.transcript_slots, &self.metrics).await?;
        let started = Instant::now();
        let audio = Duration::from_millis(pcm8k.len() as u64 / 8);
        let out = self.run(pcm8k, None, self.cfg.timeout + audio * 2).await?;
        let confidence = if out.words.is_empty() {
            0.0
        } else {
            out.words.iter().map(|w| w.posterior).sum::<f32>() / out.words.len() as f32
        };
        Ok(self.finish(started, out.raw.clone(), confidence, out.raw))
    }

    fn finish(&self, started: Instant, text: String, confidence: f32, raw: String) -> Recognition {
        let elapsed = started.elapsed();
        self.metrics.asr_seconds.observe(elapsed.as_secs_f64());
        Recognition {
            text,
            confidence,
            raw,
            elapsed_ms: u32::try_from(elapsed.as_millis()).unwrap_or(u32::MAX),
        }
    }

    /// One engine run over `pcm8k` with a grammar (or the language model).
    async fn run(
        &self,
        pcm8k: &[i16],
        jsgf: Option<String>,
        timeout: Duration,
    ) -> Result<Output, AsrError> {
        if pcm8k.is_empty() {
            return Ok(Output::default());
        }
        let id = uuid::Uuid::now_v7().simple().to_string();
        let wav = self.cfg.tmp_dir.join(format!("dialstack-asr-{id}.wav"));
        let gram = jsgf
            .as_ref()
            .map(|_| self.cfg.tmp_dir.join(format!("dialstack-asr-{id}.gram")));
        let _files = TempFiles(std::iter::once(wav.clone()).chain(gram.clone()).collect());
        let pcm = pcm8k.to_vec();
        let (wav_path, gram_path) = (wav.clone(), gram.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::write(&wav_path, engine_wav(&pcm))?;
            if let (Some(path), Some(text)) = (gram_path, jsgf) {
                std::fs::write(path, text)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| AsrError::Engine(format!("preparing the audio: {e}")))?
        .map_err(|e| {
            AsrError::Engine(format!(
                "temporary file in {}: {e}",
                self.cfg.tmp_dir.display()
            ))
        })?;
        let mut cmd = tokio::process::Command::new(&self.cfg.bin);
        cmd.args(self.cfg.engine_args(&wav, gram.as_deref()));
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| AsrError::Engine(format!("{}: {e}", self.cfg.bin.display())))?;
        self.metrics.asr_inflight.inc();
        let _inflight = Inflight(&self.metrics);
        let out = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| AsrError::Timeout(timeout))?
            .map_err(|e| AsrError::Engine(e.to_string()))?;
        if !out.status.success() {
            let log = &out.stderr[out.stderr.len().saturating_sub(MAX_LOG)..];
            let why = String::from_utf8_lossy(log)
                .lines()
                .find(|l| l.starts_with("ERROR") || l.starts_with("FATAL"))
                .map(|l| l.chars().take(300).collect::<String>())
                .unwrap_or_else(|| format!("exited with {}", out.status));
            return Err(AsrError::Engine(why));
        }
        Ok(parse_timed(&String::from_utf8_lossy(&out.stdout)))
    }
}

/// Waits for a slot, counting the wait.
async fn acquire(
    slots: &Arc<Semaphore>,
    metrics: &AiMetrics,
) -> Result<tokio::sync::OwnedSemaphorePermit, AsrError> {
    match slots.clone().try_acquire_owned() {
        Ok(p) => Ok(p),
        Err(_) => {
            metrics.asr_waits.inc();
            slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| AsrError::Engine("the recognizer is shut down".into()))
        }
    }
}

/// The dictionary's words (`word(2)` variants folded into `word`).
fn read_dictionary(path: &Path) -> Result<HashSet<String>, AsrError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AsrError::Engine(format!("{}: {e}", path.display())))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| !w.contains('('))
        .map(str::to_owned)
        .collect())
}

/// The 16 kHz WAV the engine reads for `pcm8k` (one utterance, 8 kHz):
/// exactly what [`Asr::recognize`] writes for it. Acoustic model
/// adaptation (`examples/asr_adapt.rs`) passes its corpus through this so
/// that the model learns the channel calls really have.
pub fn engine_wav(pcm8k: &[i16]) -> Vec<u8> {
    wav_16k(&prepare(pcm8k))
}

/// The 16 kHz audio the engine reads: padded, upsampled, with a mirror
/// image of the telephone band ([`FOLD_GAIN`]) and a noise floor
/// ([`NOISE_FILL_RMS`]) above 4.4 kHz.
fn prepare(pcm8k: &[i16]) -> Vec<i16> {
    let mut padded = vec![0i16; PAD];
    padded.extend_from_slice(pcm8k);
    padded.extend(std::iter::repeat_n(0i16, PAD));
    let mut up = dialstack_media::resample::resample(&padded, 8_000, 16_000);
    fold_high_band(&mut up, FOLD_GAIN);
    fill_high_band(&mut up, NOISE_FILL_RMS);
    up
}

/// Adds the mirror image of the 0-3.6 kHz band in 4.4-8 kHz, `gain` times
/// as loud: multiplying by (-1)^n shifts the spectrum by half the rate.
fn fold_high_band(x16: &mut [i16], gain: f32) {
    for (i, s) in x16.iter_mut().enumerate() {
        let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
        *s = (f32::from(*s) * (1.0 + gain * sign))
            .round()
            .clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16;
    }
}

/// Adds seeded white noise limited to 4.4-8 kHz at `rms`: noise in the
/// telephone band, upsampled, then mirrored to the top band by flipping
/// the sign of every other sample.
fn fill_high_band(x16: &mut [i16], rms: f32) {
    let mut rng = fastrand::Rng::with_seed(0x00d1_a157_ac4e);
    // Uniform noise has RMS amplitude/√3; the low-pass keeps about 90 %
    // of its power.
    let amplitude = rms * 3f32.sqrt() / 0.9f32.sqrt();
    let white: Vec<i16> = (0..x16.len() / 2 + 1)
        .map(|_| ((rng.f32() * 2.0 - 1.0) * amplitude).round() as i16)
        .collect();
    let band = dialstack_media::resample::resample(&white, 8_000, 16_000);
    for (i, (s, n)) in x16.iter_mut().zip(band).enumerate() {
        let n = if i % 2 == 0 { n } else { n.saturating_neg() };
        *s = s.saturating_add(n);
    }
}

/// Seconds of `pcm8k` (8 kHz) that carry speech: 20 ms frames louder than
/// both the quietest tenth plus 6 dB and the loudest frame minus 30 dB
/// (and than -55 dBFS).
fn speech_seconds(pcm8k: &[i16]) -> f32 {
    let db: Vec<f32> = pcm8k
        .chunks(160)
        .map(|f| {
            let e = f.iter().map(|&v| f32::from(v).powi(2)).sum::<f32>() / f.len() as f32;
            10.0 * (e / (32_768.0f32 * 32_768.0)).max(1e-12).log10()
        })
        .collect();
    if db.is_empty() {
        return 0.0;
    }
    let mut sorted = db.clone();
    sorted.sort_by(f32::total_cmp);
    let floor = sorted[sorted.len() / 10];
    let peak = sorted[sorted.len() - 1];
    let threshold = (floor + 6.0).max(peak - 30.0).max(-55.0);
    db.iter().filter(|&&d| d > threshold).count() as f32 * 0.02
}

/// A recognized word.
#[derive(Debug, Clone, PartialEq)]
struct Word {
    /// The word (pronunciation variant folded).
    word: String,
    /// Its duration (s).
    seconds: f32,
    /// The engine's posterior (0-1).
    posterior: f32,
}

/// What one engine run printed.
#[derive(Debug, Default, PartialEq)]
struct Output {
    /// Recognized words in order.
    words: Vec<Word>,
    /// The words joined by spaces.
    raw: String,
}

/// Words from `-time yes` output: per utterance a hypothesis line, then
/// `word start end posterior` per segment (fillers, `<s>`, `<sil>` and
/// `(NULL)` left out; `word(2)` is a pronunciation variant of `word`).
fn parse_timed(out: &str) -> Output {
    let mut words = Vec::new();
    for line in out.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [w, start, end, posterior] = parts[..] else {
            continue;
        };
        let (Ok(start), Ok(end), Ok(posterior)) = (
            start.parse::<f32>(),
            end.parse::<f32>(),
            posterior.parse::<f32>(),
        ) else {
            continue;
        };
        if w.starts_with(['<', '(', '[', '+']) {
            continue;
        }
        let w = w.split('(').next().unwrap_or(w);
        words.push(Word {
            word: w.to_owned(),
            seconds: (end - start).max(0.0) + 0.01,
            posterior: if posterior.is_finite() {
                posterior.clamp(0.0, 1.0)
            } else {
                0.0
            },
        });
    }
    let raw = words
        .iter()
        .map(|w| w.word.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    Output { words, raw }
}

/// Mono 16-bit WAV at 16 kHz.
fn wav_16k(pcm: &[i16]) -> Vec<u8> {
    let mut w = super::audio::wav_8k(pcm);
    w[24..28].copy_from_slice(&16_000u32.to_le_bytes());
    w[28..32].copy_from_slice(&32_000u32.to_le_bytes());
    w
}

/// Decrements a counter when dropped.
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Decrements the in-flight gauge when dropped.
struct Inflight<'a>(&'a AiMetrics);

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.0.asr_inflight.dec();
    }
}

/// Removes temporary files when dropped (also when the caller gives up).
struct TempFiles(Vec<PathBuf>);

impl Drop for TempFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timed_output_is_read() {
        let out = "one three\none 0.000 0.140 1.000000\n(NULL) 0.140 0.140 1.000000\n<sil> 0.150 0.530 1.000000\nthree(2) 0.540 0.740 0.500000\n[NOISE] 0.8 0.9 1.0\n";
        let o = parse_timed(out);
        assert_eq!(o.raw, "one three");
        let p: Vec<f32> = o.words.iter().map(|w| w.posterior).collect();
        assert_eq!(p, vec![1.0, 0.5]);
        assert!((o.words[1].seconds - 0.21).abs() < 1e-4);
        assert_eq!(parse_timed(""), Output::default());
        // A hypothesis line of four words is not a segment.
        assert_eq!(parse_timed("one two three four\n").raw, "");
    }

    #[test]
    fn grammars_and_their_results() {
        assert!(Grammar::YesNo
            .jsgf()
            .contains("yes | yeah | yep | no | nope"));
        assert_eq!(Grammar::YesNo.canonical(&["yeah"]), "yes");
        assert_eq!(Grammar::YesNo.canonical(&["nope"]), "no");
        assert_eq!(Grammar::YesNo.canonical(&[]), "");
        let d = Grammar::Digits { max: 3 };
        assert!(
            d.jsgf().contains("<digit> [<digit>] [<digit>];"),
            "{}",
            d.jsgf()
        );
        assert_eq!(d.canonical(&["one", "oh", "nine", "two"]), "109");
        let k = Grammar::Keywords(vec!["sales".into(), "billing".into()]);
        assert!(k.jsgf().contains("sales | billing"));
        assert_eq!(k.canonical(&["billing"]), "billing");
        assert_eq!(k.canonical(&["other"]), "");
        // Words that could break the grammar never reach it.
        let bad = Grammar::Keywords(vec!["ok".into(), "a;b".into(), "<x>".into()]);
        assert!(bad.jsgf().contains("public <word> = ok;"), "{}", bad.jsgf());
    }

    #[test]
    fn the_noise_floor_stays_in_the_top_band() {
        let mut x = vec![0i16; 32_000];
        fill_high_band(&mut x, NOISE_FILL_RMS);
        let rms = (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
        assert!((rms - f64::from(NOISE_FILL_RMS)).abs() < 5.0, "{rms}");
        // Back down to 8 kHz (which keeps 0-3.6 kHz), almost nothing is left.
        let low = dialstack_media::resample::resample(&x, 16_000, 8_000);
        let low_rms =
            (low.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / low.len() as f64).sqrt();
        assert!(low_rms < rms / 30.0, "{low_rms}");
    }

    #[test]
    fn the_fold_mirrors_the_telephone_band() {
        let tone: Vec<i16> = (0..16_000)
            .map(|i| {
                (10_000.0 * (2.0 * std::f32::consts::PI * 1_000.0 * i as f32 / 16_000.0).sin())
                    as i16
            })
            .collect();
        let mut x = tone.clone();
        fold_high_band(&mut x, FOLD_GAIN);
        let level = |x: &[i16], hz: f32| {
            let w = 2.0 * std::f32::consts::PI * hz / 16_000.0;
            let (re, im) = x
                .iter()
                .enumerate()
                .fold((0.0f32, 0.0f32), |(re, im), (i, &v)| {
                    (
                        re + f32::from(v) * (w * i as f32).cos(),
                        im + f32::from(v) * (w * i as f32).sin(),
                    )
                });
            2.0 * (re * re + im * im).sqrt() / x.len() as f32
        };
        assert!((level(&x, 1_000.0) - 10_000.0).abs() < 100.0);
        assert!(
            (level(&x, 7_000.0) - 3_000.0).abs() < 100.0,
            "{}",
            level(&x, 7_000.0)
        );
    }

    #[test]
    fn speech_is_measured_against_the_noise_floor() {
        let mut x = vec![0i16; 16_000];
        for (i, s) in x[4_000..8_000].iter_mut().enumerate() {
            *s = ((i as f32 * 0.3).sin() * 8_000.0) as i16;
        }
        assert!(
            (speech_seconds(&x) - 0.5).abs() < 0.03,
            "{}",
            speech_seconds(&x)
        );
        assert_eq!(speech_seconds(&[0; 8_000]), 0.0);
        assert_eq!(speech_seconds(&[]), 0.0);
    }

    #[test]
    fn config_comes_from_the_passed_environment() {
        let c = AsrConfig::from_env(&Env::from_pairs([
            ("DIALSTACK_ASR_BIN", "/opt/ps"),
            ("DIALSTACK_ASR_MODEL_DIR", "/m"),
            ("DIALSTACK_ASR_CONCURRENCY", "3"),
        ]))
        .unwrap();
        assert_eq!(c.bin, PathBuf::from("/opt/ps"));
        assert_eq!(c.hmm(), PathBuf::from("/m/en-us"));
        assert_eq!(c.dict(), PathBuf::from("/m/cmudict-en-us.dict"));
        assert_eq!(c.lm(), PathBuf::from("/m/en-us.lm.bin"));
        assert_eq!((c.max_concurrent, c.max_queue), (3, 12));
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(c.mllr, None);
        let args = |c: &AsrConfig, jsgf: Option<&str>| -> Vec<String> {
            c.engine_args(Path::new("/t/a.wav"), jsgf.map(Path::new))
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            args(&c, Some("/t/a.gram")).join(" "),
            "-infile /t/a.wav -hmm /m/en-us -dict /m/cmudict-en-us.dict -time yes -jsgf /t/a.gram"
        );
        assert!(args(&c, None).join(" ").ends_with("-lm /m/en-us.lm.bin"));
        // An MLLR transform goes to the engine as -mllr; empty is unset.
        let m = AsrConfig::from_env(&Env::from_pairs([
            ("DIALSTACK_ASR_MODEL_DIR", "/m"),
            ("DIALSTACK_ASR_MLLR", "/a/mllr_matrix"),
        ]))
        .unwrap();
        assert_eq!(m.mllr, Some(PathBuf::from("/a/mllr_matrix")));
        assert!(args(&m, None)
            .join(" ")
            .contains("-time yes -mllr /a/mllr_matrix -lm"));
        let unset = AsrConfig::from_env(&Env::from_pairs([("DIALSTACK_ASR_MLLR", "")])).unwrap();
        assert_eq!(unset.mllr, None);
        for bad in ["0", "257", "x"] {
            let e = AsrConfig::from_env(&Env::from_pairs([("DIALSTACK_ASR_CONCURRENCY", bad)]))
                .unwrap_err();
            assert_eq!(e.var, "DIALSTACK_ASR_CONCURRENCY");
        }
    }
}
