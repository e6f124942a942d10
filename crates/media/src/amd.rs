//! Answering-machine detection: after the callee answers, tell a person
//! from a voicemail greeting by the cadence of the first seconds of audio,
//! within a bounded time.
//!
//! The approach is the classic one (Asterisk's `AMD` application works the
//! same way; this is written from the idea): a person picks up and says a
//! short word or two ("hello?") and then waits for an answer, while a
//! machine either starts late or talks on, in long sentences.
//!
//! - Frames (20 ms) are voiced when their RMS is above the silence
//!   threshold: the configured one, raised to 3.5 dB above the noise floor
//!   (the 10th percentile of the RMS of the frames so far), so that steady
//!   background noise counts as silence.
//! - Voiced runs of at least `min_word_ms` are *words* (shorter ones are
//!   clicks and noise); a word ends after `between_words_silence_ms` of
//!   silence. The *greeting* runs from the start of the first word to the
//!   end of the last one.
//! - **Machine** when the silence before the first word reaches
//!   `initial_silence_ms`, when the greeting grows longer than
//!   `greeting_ms`, when it has more than `max_words` words, or when a
//!   voicemail beep is heard ([`BeepDetector`]).
//! - **Human** when `after_greeting_silence_ms` of silence follow a
//!   greeting that was short enough.
//! - **Unsure** when nothing of this has happened after
//!   `total_analysis_ms`, or when the caller gives up early
//!   ([`AmdDetector::finish`]).
//!
//! Noise only (no speech) ends as Machine at `initial_silence_ms`: once
//! the floor has adapted, steady noise is silence, and a line that stays
//! silent that long is rarely a person.
//!
//! # Layout
//! - this file: configuration, verdicts, the detector
//! - `beep`: [`BeepDetector`], the voicemail tone
//! - `silence`: [`SilenceWaiter`] and the frame level

mod beep;
mod silence;

pub use beep::BeepDetector;
pub use silence::SilenceWaiter;

use silence::frame_rms;

/// Samples per millisecond at 8 kHz.
const PER_MS: u64 = 8;
/// Shortest beep the detector inside [`AmdDetector`] reports, ms.
const BEEP_MIN_MS: u32 = 160;
/// The noise floor is the 10th percentile of the frame levels...
const FLOOR_PERCENTILE: usize = 10;
/// ...of at most this many frames (10 s): later ones no longer move it.
const FLOOR_FRAMES: usize = 500;
/// A frame is voiced above the floor times this, in percent (3.5 dB: the
/// RMS of 20 ms of steady noise varies by about 6 %, and in 10 dB of
/// noise 6 dB would lose the quieter syllables).
const FLOOR_MARGIN_PERCENT: u32 = 150;
/// A voiced frame stays voiced down to this fraction of the threshold
/// (in percent): hysteresis, so that a word does not break up on its
/// quieter frames.
const HOLD_PERCENT: u32 = 75;

/// The timing rules of [`AmdDetector`], all in milliseconds of audio.
#[derive(Debug, Clone, PartialEq)]
pub struct AmdConfig {
    /// Silence this long before any word → Machine.
    pub initial_silence_ms: u32,
    /// A greeting (first word to last, short pauses included) longer than
    /// this → Machine.
    pub greeting_ms: u32,
    /// This much silence after a short greeting → Human.
    pub after_greeting_silence_ms: u32,
    /// No decision by then → Unsure.
    pub total_analysis_ms: u32,
    /// Voiced runs shorter than this are noise, not words.
    pub min_word_ms: u32,
    /// Silence that separates two words.
    pub between_words_silence_ms: u32,
    /// More words than this in the greeting → Machine.
    pub max_words: u32,
    /// Frame RMS below this is silence (16-bit units; 160 is about
    /// −40 dBm0). The detector raises it over a noisy line, never lowers it.
    pub silence_threshold: u16,
}

impl Default for AmdConfig {
    fn default() -> Self {
        Self {
            initial_silence_ms: 2_500,
            greeting_ms: 2_000,
            after_greeting_silence_ms: 800,
            total_analysis_ms: 3_500,
            min_word_ms: 100,
            between_words_silence_ms: 50,
            max_words: 4,
            silence_threshold: 160,
        }
    }
}

/// What answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmdVerdict {
    /// A person.
    Human,
    /// An answering machine or voicemail.
    Machine,
    /// No rule decided in time.
    Unsure,
}

impl AmdVerdict {
    /// `"human"`, `"machine"` or `"unsure"`.
    pub fn as_str(self) -> &'static str {
        match self {
            AmdVerdict::Human => "human",
            AmdVerdict::Machine => "machine",
            AmdVerdict::Unsure => "unsure",
        }
    }
}

/// What the detector measured, as of its decision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AmdFeatures {
    /// Silence before the first word (all of the audio if there was none).
    pub initial_silence_ms: u32,
    /// From the start of the first word to the end of the last.
    pub greeting_ms: u32,
    /// Words in the greeting.
    pub words: u32,
    /// The longest word.
    pub longest_word_ms: u32,
    /// Whether a beep was heard.
    pub beep: bool,
    /// The noise floor (frame RMS, 16-bit units).
    pub noise_floor: u16,
}

/// The verdict, when and why.
#[derive(Debug, Clone, PartialEq)]
pub struct AmdDecision {
    /// What answered.
    pub verdict: AmdVerdict,
    /// Milliseconds of audio (since the first frame) at the decision.
    pub at_ms: u32,
    /// The rule that decided: `initial_silence`, `long_greeting`,
    /// `max_words`, `beep` (Machine), `silence_after_greeting` (Human),
    /// `max_analysis_time` or `finished` (Unsure).
    pub reason: &'static str,
    /// The measurements behind it.
    pub features: AmdFeatures,
}

/// The answering-machine detector of one call, fed the callee's audio from
/// the answer on.
#[derive(Clone)]
pub struct AmdDetector {
    /// The rules.
    cfg: AmdConfig,
    /// The voicemail-beep detector, fed every frame.
    beep: BeepDetector,
    /// Samples fed so far: the detector's clock.
    now: u64,
    /// RMS of the first [`FLOOR_FRAMES`] frames, ascending.
    levels: Vec<u16>,
    /// Whether the last frame was voiced.
    voiced: bool,
    /// End of the last voiced frame.
    last_voiced: Option<u64>,
    /// Start of the current voiced run (a word, or one not yet long enough).
    run_start: Option<u64>,
    /// Whether the current run is long enough to be a word.
    in_word: bool,
    /// Start of the first word.
    greeting_start: Option<u64>,
    /// End of the last voiced frame of a word.
    last_word_end: u64,
    /// Words so far.
    words: u32,
    /// Length of the longest word, samples.
    longest_word: u64,
    /// Whether a beep was heard.
    beep_heard: bool,
    /// The decision, once made.
    decision: Option<AmdDecision>,
}

impl AmdDetector {
    /// A detector at the moment of answer.
    pub fn new(cfg: AmdConfig) -> Self {
        Self {
            cfg,
            beep: BeepDetector::new(BEEP_MIN_MS),
            now: 0,
            levels: Vec::with_capacity(FLOOR_FRAMES),
            voiced: false,
            last_voiced: None,
            run_start: None,
            in_word: false,
            greeting_start: None,
            last_word_end: 0,
            words: 0,
            longest_word: 0,
            beep_heard: false,
            decision: None,
        }
    }

    /// Feeds one 20 ms frame (160 samples; other lengths count for their
    /// duration); returns the decision once, then `None` forever.
    pub fn push(&mut self, frame: &[i16]) -> Option<AmdDecision> {
        if self.decision.is_some() || frame.is_empty() {
            return None;
        }
        let start = self.now;
        self.now += frame.len() as u64;
        let rms = frame_rms(frame);
        self.record_level(rms);
        let threshold = u32::from(self.silence_threshold());
        let bar = if self.voiced {
            threshold * HOLD_PERCENT / 100
        } else {
            threshold
        };
        self.voiced = u32::from(rms) >= bar;

        if self.beep.push(frame) {
            self.beep_heard = true;
            return Some(self.decide(AmdVerdict::Machine, "beep"));
        }
        self.track_words(start);
        let (verdict, reason) = self.rule()?;
        Some(self.decide(verdict, reason))
    }

    /// The decision now (e.g. the call ended early): the one already made,
    /// or Unsure (`finished`); pushes after it return `None`.
    pub fn finish(&mut self) -> AmdDecision {
        match &self.decision {
            Some(d) => d.clone(),
            None => self.decide(AmdVerdict::Unsure, "finished"),
        }
    }

    /// The silence threshold in use: the configured one or 3.5 dB above the
    /// noise floor, whichever is higher. A [`SilenceWaiter`] built with it
    /// judges silence as the detector did.
    pub fn silence_threshold(&self) -> u16 {
        let floored = u32::from(self.noise_floor()) * FLOOR_MARGIN_PERCENT / 100;
        u16::try_from(floored)
            .unwrap_or(u16::MAX)
            .max(self.cfg.silence_threshold)
    }

    /// What has been measured so far.
    pub fn features(&self) -> AmdFeatures {
        let greeting = self
            .greeting_start
            .map_or(0, |g| self.last_word_end.saturating_sub(g));
        AmdFeatures {
            initial_silence_ms: ms(self.greeting_start.unwrap_or(self.now)),
            greeting_ms: ms(greeting),
            words: self.words,
            longest_word_ms: ms(self.longest_word),
            beep: self.beep_heard,
            noise_floor: self.noise_floor(),
        }
    }

    /// The 10th percentile of the frame levels so far.
    fn noise_floor(&self) -> u16 {
        let n = self.levels.len();
        if n == 0 {
            return 0;
        }
        self.levels[(n - 1) * FLOOR_PERCENTILE / 100]
    }

    fn record_level(&mut self, rms: u16) {
        if self.levels.len() < FLOOR_FRAMES {
            let at = self.levels.partition_point(|&l| l <= rms);
            self.levels.insert(at, rms);
        }
    }

    /// Updates words and greeting with the frame that started at `start`
    /// (and ends at `self.now`).
    fn track_words(&mut self, start: u64) {
        let end = self.now;
        if self.voiced {
            let run_start = *self.run_start.get_or_insert(start);
            self.last_voiced = Some(end);
            if !self.in_word && end - run_start >= samples(self.cfg.min_word_ms) {
                self.in_word = true;
                self.words = self.words.saturating_add(1);
                self.greeting_start.get_or_insert(run_start);
            }
            if self.in_word {
                self.last_word_end = end;
                self.longest_word = self.longest_word.max(end - run_start);
            }
        } else if let Some(last) = self.last_voiced {
            if end - last >= samples(self.cfg.between_words_silence_ms) {
                self.run_start = None;
                self.in_word = false;
            }
        }
    }

    /// The rule that decides at this point, if any.
    fn rule(&self) -> Option<(AmdVerdict, &'static str)> {
        let cfg = &self.cfg;
        let now = self.now;
        match self.greeting_start {
            Some(first) => {
                if self.words > cfg.max_words {
                    return Some((AmdVerdict::Machine, "max_words"));
                }
                if self.last_word_end - first > samples(cfg.greeting_ms) {
                    return Some((AmdVerdict::Machine, "long_greeting"));
                }
                if now - self.last_word_end >= samples(cfg.after_greeting_silence_ms) {
                    return Some((AmdVerdict::Human, "silence_after_greeting"));
                }
            }
            None if now >= samples(cfg.initial_silence_ms) => {
                return Some((AmdVerdict::Machine, "initial_silence"));
            }
            None => {}
        }
        (now >= samples(cfg.total_analysis_ms)).then_some((AmdVerdict::Unsure, "max_analysis_time"))
    }

    fn decide(&mut self, verdict: AmdVerdict, reason: &'static str) -> AmdDecision {
        let decision = AmdDecision {
            verdict,
            at_ms: ms(self.now),
            reason,
            features: self.features(),
        };
        self.decision = Some(decision.clone());
        decision
    }
}

/// Samples in `ms` milliseconds.
fn samples(ms: u32) -> u64 {
    u64::from(ms) * PER_MS
}

/// Milliseconds in `samples`, saturating.
fn ms(samples: u64) -> u32 {
    u32::try_from(samples / PER_MS).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
