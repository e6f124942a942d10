//! The callee's audio as the IVR hears it: every frame goes through the
//! in-band DTMF detector (unless the peer sends RFC 4733 events, which
//! then are the keys), and speech is captured by an energy detector with
//! an adaptive noise floor.

use std::sync::Arc;

use dialstack_media::dtmf::DtmfDetector;

use crate::rtp::stream::{AudioPipe, BridgeIo, Frame, KeySource, Keys};

/// Reads the callee's leg.
pub struct Listener {
    heard: Arc<AudioPipe>,
    keys: Option<Arc<Keys>>,
    dtmf: DtmfDetector,
    counted: prometheus::IntCounterVec,
}

impl Listener {
    /// Listens on `io`; keys are counted in `counted{source}`.
    pub fn new(io: &BridgeIo, counted: prometheus::IntCounterVec) -> Self {
        Self {
            heard: io.heard.clone(),
            keys: io.keys.clone(),
            dtmf: DtmfDetector::new(),
            counted,
        }
    }

    /// Everything heard since the last call, after in-band key detection.
    pub fn frames(&mut self) -> Vec<Frame> {
        let frames = self.heard.drain();
        if let Some(keys) = &self.keys {
            for f in &frames {
                if let Some(k) = self.dtmf.push(f) {
                    if !keys.rfc4733_seen() {
                        keys.received(k, KeySource::Inband);
                    }
                }
            }
        }
        frames
    }

    /// Whether a key is waiting.
    pub fn has_keys(&self) -> bool {
        self.keys.as_ref().is_some_and(|k| k.has_received())
    }

    /// The next key pressed (counted as it is taken).
    pub fn take_key(&mut self) -> Option<(char, KeySource)> {
        let got = self.keys.as_ref()?.take();
        if let Some((_, src)) = got {
            self.counted.with_label_values(&[src.as_str()]).inc();
        }
        got
    }

    /// Drops keys pressed so far (counted).
    pub fn clear_keys(&mut self) {
        while self.take_key().is_some() {}
    }
}

/// Frame energy (RMS) of speech at the least, whatever the floor.
const MIN_SPEECH_RMS: f64 = 300.0;
/// Speech is this many times louder than the noise floor.
const SPEECH_OVER_FLOOR: f64 = 3.0;
/// Frames of speech before it counts as started (60 ms: clicks are not
/// speech).
const START_FRAMES: u32 = 3;
/// Audio kept from before the start (200 ms), so the first sound is not cut.
const PREROLL_FRAMES: usize = 10;
/// Longest capture by default (8 s).
const DEFAULT_LIMIT_SAMPLES: usize = 8 * 8_000;

/// The RMS of a frame.
pub fn rms(f: &[i16]) -> f64 {
    if f.is_empty() {
        return 0.0;
    }
    let sum: f64 = f.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (sum / f.len() as f64).sqrt()
}

/// One utterance: speech starts after [`START_FRAMES`] loud frames and
/// ends after `end_ms` of quiet; the audio is kept from a little before
/// the start, up to a limit.
pub struct Utterance {
    end_frames: u32,
    floor: f64,
    loud_run: u32,
    quiet_run: u32,
    started: bool,
    preroll: std::collections::VecDeque<Frame>,
    audio: Vec<i16>,
    limit: usize,
}

impl Utterance {
    /// Ends after `end_ms` of quiet once speech started.
    pub fn new(end_ms: u32) -> Self {
        Self {
            end_frames: (end_ms / 20).max(1),
            floor: 0.0,
            loud_run: 0,
            quiet_run: 0,
            started: false,
            preroll: std::collections::VecDeque::with_capacity(PREROLL_FRAMES),
            audio: Vec::new(),
            limit: DEFAULT_LIMIT_SAMPLES,
        }
    }

    /// Keeps at most `ms` of audio.
    pub fn set_limit_ms(&mut self, ms: u64) {
        self.limit = usize::try_from(ms.saturating_mul(8)).unwrap_or(usize::MAX);
    }

    /// Whether the limit is reached.
    pub fn is_full(&self) -> bool {
        self.audio.len() >= self.limit
    }

    /// Whether speech has started.
    pub fn started(&self) -> bool {
        self.started
    }

    /// Takes a frame; true when the utterance has ended.
    pub fn push(&mut self, f: &Frame) -> bool {
        let e = rms(f);
        let threshold = (self.floor * SPEECH_OVER_FLOOR).max(MIN_SPEECH_RMS);
        let loud = e > threshold;
        if !loud {
            // The floor follows quiet frames quickly down, slowly up.
            self.floor = if self.floor == 0.0 || e < self.floor {
                e
            } else {
                self.floor * 0.95 + e * 0.05
            };
        }
        if !self.started {
            if self.preroll.len() == PREROLL_FRAMES {
                self.preroll.pop_front();
            }
            self.preroll.push_back(*f);
            self.loud_run = if loud { self.loud_run + 1 } else { 0 };
            if self.loud_run >= START_FRAMES {
                self.started = true;
                for p in self.preroll.drain(..) {
                    self.audio.extend_from_slice(&p);
                }
            }
            return false;
        }
        if self.audio.len() < self.limit {
            self.audio.extend_from_slice(f);
        }
        self.quiet_run = if loud { 0 } else { self.quiet_run + 1 };
        self.quiet_run >= self.end_frames
    }

    /// The audio captured (empty when speech never started).
    pub fn into_audio(self) -> Vec<i16> {
        self.audio
    }
}

/// The beep before a message is recorded: 1 kHz for 250 ms.
pub fn beep() -> Vec<i16> {
    (0..2_000)
        .map(|i| {
            let t = f64::from(i) / 8_000.0;
            (8_000.0 * (2.0 * std::f64::consts::PI * 1_000.0 * t).sin()) as i16
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(level: i16, n: usize) -> Frame {
        let mut f = [0i16; 160];
        for (i, s) in f.iter_mut().enumerate() {
            let x = ((i + n * 160) as f64 / 8_000.0) * 2.0 * std::f64::consts::PI * 300.0;
            *s = (f64::from(level) * x.sin()) as i16;
        }
        f
    }

    #[test]
    fn an_utterance_starts_on_speech_and_ends_on_quiet() {
        let mut u = Utterance::new(200);
        let mut n = 0;
        for _ in 0..20 {
            assert!(!u.push(&frame(50, n)));
            n += 1;
        }
        assert!(!u.started());
        for _ in 0..25 {
            assert!(!u.push(&frame(6_000, n)));
            n += 1;
        }
        assert!(u.started());
        let mut ended = false;
        for _ in 0..10 {
            ended |= u.push(&frame(50, n));
            n += 1;
        }
        assert!(ended);
        let audio = u.into_audio();
        // Pre-roll + speech + the quiet that ended it.
        assert!(
            audio.len() >= 25 * 160 && audio.len() <= 50 * 160,
            "{}",
            audio.len()
        );
    }

    #[test]
    fn clicks_and_steady_noise_are_not_speech() {
        let mut u = Utterance::new(200);
        for n in 0..200 {
            let level = if n % 50 == 0 { 9_000 } else { 400 };
            u.push(&frame(level, n));
        }
        assert!(!u.started());
        assert!(u.into_audio().is_empty());
    }

    #[test]
    fn capture_is_bounded() {
        let mut u = Utterance::new(10_000);
        u.set_limit_ms(1_000);
        for n in 0..500 {
            u.push(&frame(6_000, n));
        }
        assert!(u.is_full());
        let len = u.into_audio().len();
        assert!((8_000..8_160).contains(&len), "{len}");
    }
}
