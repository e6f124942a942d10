//! Packet-loss concealment for 8 kHz speech in 20 ms frames, after the
//! method of ITU-T G.711 Appendix I (pitch-period waveform substitution),
//! written from its description:
//!
//! - every good frame goes into a 48.75 ms history (3 × the longest pitch
//!   period plus a quarter of one);
//! - at the start of an erasure the pitch period is estimated by normalised
//!   cross-correlation of the last 20 ms with the history, over lags of
//!   5..15 ms (40..=120 samples), and the last period is repeated;
//! - after 10 ms the last two periods are cycled, after 20 ms the last
//!   three, so that a long erasure does not buzz on one period; each switch
//!   is cross-faded over a quarter period;
//! - from 10 ms on the output is attenuated linearly by 20 % per 10 ms, so
//!   it is silent 60 ms into the erasure;
//! - the first good frame after an erasure is cross-faded with the
//!   synthetic continuation, over a quarter period plus 4 ms per further
//!   20 ms of erasure (at most 10 ms).
//!
//! Unlike the appendix this does not delay its output by 3.75 ms to smooth
//! the junction at the start of an erasure: the jitter buffer in front of
//! it already costs delay, and the junction is smoothed instead inside the
//! repeated period (its last quarter is faded into the samples that precede
//! its start), which is what the appendix's delayed overlap-add achieves
//! for periodic input.

/// Samples in one 20 ms frame at 8 kHz.
pub const FRAME: usize = 160;
/// Shortest pitch period searched (5 ms, 200 Hz).
const PITCH_MIN: usize = 40;
/// Longest pitch period searched (15 ms, 66.7 Hz).
const PITCH_MAX: usize = 120;
/// Length of the window matched against the history (20 ms).
const CORR_LEN: usize = 160;
/// History kept: three periods of the longest pitch plus a quarter.
const HISTORY: usize = 3 * PITCH_MAX + PITCH_MAX / 4;
/// Samples into an erasure at which attenuation starts (10 ms).
const FADE_START: usize = 80;
/// Samples over which the gain falls from 1 to 0 (20 % per 10 ms).
const FADE_LEN: usize = 400;
/// Samples into an erasure after which the output is silent (60 ms).
const SILENT_AFTER: usize = FADE_START + FADE_LEN;
/// Longest cross-fade into the first good frame (10 ms).
const MAX_MERGE: usize = 80;

/// The concealment state of one incoming stream.
#[derive(Clone)]
pub struct Plc {
    /// The last [`HISTORY`] output samples, oldest first.
    history: [f32; HISTORY],
    /// Whether any good frame has been seen: before that there is nothing
    /// to continue and concealment is silence.
    primed: bool,
    /// Samples concealed in the current erasure, 0 when not concealing.
    erased: usize,
    /// The history frozen at the start of the erasure.
    source: [f32; HISTORY],
    /// Pitch period of the erasure, in samples.
    pitch: usize,
    /// Number of pitch periods being cycled (1..=3).
    periods: usize,
    /// Position in the cycled periods.
    pos: usize,
    /// While switching to more periods: the previous period count, its
    /// position, and how many cross-fade samples are done.
    switch: Option<(usize, usize, usize)>,
}

impl Default for Plc {
    fn default() -> Self {
        Self::new()
    }
}

impl Plc {
    /// A concealer with empty history.
    pub fn new() -> Self {
        Self {
            history: [0.0; HISTORY],
            primed: false,
            erased: 0,
            source: [0.0; HISTORY],
            pitch: PITCH_MIN,
            periods: 1,
            pos: 0,
            switch: None,
        }
    }

    /// Whether the next [`conceal`](Self::conceal) still produces signal:
    /// some good audio was seen and the erasure is shorter than 60 ms.
    pub fn can_conceal(&self) -> bool {
        self.primed && self.erased < SILENT_AFTER
    }

    /// Whether an erasure is in progress.
    pub fn is_concealing(&self) -> bool {
        self.erased > 0
    }

    /// A received frame: after an erasure its start is cross-faded with
    /// the synthetic continuation (so `pcm` is modified), then it goes into
    /// the history.
    pub fn good_frame(&mut self, pcm: &mut [i16; FRAME]) {
        if self.erased > 0 {
            let extra_frames = self.erased.saturating_sub(FRAME) / FRAME;
            let merge = (self.pitch / 4 + 32 * extra_frames).min(MAX_MERGE);
            for (i, sample) in pcm.iter_mut().take(merge).enumerate() {
                let synthetic = self.next_synthetic();
                let w = (i + 1) as f32 / (merge + 1) as f32;
                *sample = to_i16(synthetic * (1.0 - w) + f32::from(*sample) * w);
            }
            self.erased = 0;
            self.switch = None;
        }
        self.primed = true;
        self.remember(pcm);
    }

    /// A missing frame: writes the synthetic continuation into `out`.
    pub fn conceal(&mut self, out: &mut [i16; FRAME]) {
        if !self.primed {
            out.fill(0);
            return;
        }
        if self.erased == 0 {
            self.source = self.history;
            self.pitch = estimate_pitch(&self.source);
            self.periods = 1;
            self.pos = 0;
            self.switch = None;
        }
        for sample in out.iter_mut() {
            *sample = to_i16(self.next_synthetic());
        }
        // The synthetic signal becomes history too, so that a loss shortly
        // after this one continues from what the listener heard.
        self.remember(out);
    }

    /// One sample of the continuation, advancing the erasure.
    fn next_synthetic(&mut self) -> f32 {
        let n = self.erased;
        self.erased = self.erased.saturating_add(1);
        if n >= SILENT_AFTER {
            return 0.0;
        }
        // One more period at 10 ms and at 20 ms into the erasure.
        if (n == FADE_START && self.periods == 1) || (n == 2 * FADE_START && self.periods == 2) {
            self.switch = Some((self.periods, self.pos, 0));
            self.periods += 1;
        }
        let mut value = self.cycled(self.periods, self.pos);
        self.pos = (self.pos + 1) % (self.periods * self.pitch);
        if let Some((old_periods, old_pos, done)) = self.switch {
            let quarter = self.pitch / 4;
            let w = (done + 1) as f32 / (quarter + 1) as f32;
            value = self.cycled(old_periods, old_pos) * (1.0 - w) + value * w;
            self.switch = if done + 1 >= quarter {
                None
            } else {
                Some((
                    old_periods,
                    (old_pos + 1) % (old_periods * self.pitch),
                    done + 1,
                ))
            };
        }
        let gain = if n < FADE_START {
            1.0
        } else {
            1.0 - (n - FADE_START) as f32 / FADE_LEN as f32
        };
        value * gain
    }

    /// Sample `i` of the last `periods` pitch periods of the frozen
    /// history, repeated end to end. The last quarter period is faded into
    /// the quarter period that precedes the repeated span, so that going
    /// round from its end to its start continues the waveform.
    fn cycled(&self, periods: usize, i: usize) -> f32 {
        let len = periods * self.pitch;
        let quarter = self.pitch / 4;
        let i = i % len;
        let start = HISTORY - len;
        let value = self.source[start + i];
        if i + quarter >= len {
            let j = i + quarter - len;
            let w = (j + 1) as f32 / (quarter + 1) as f32;
            // start >= quarter: HISTORY holds three periods plus a quarter.
            let before = self.source[start - quarter + j];
            value * (1.0 - w) + before * w
        } else {
            value
        }
    }

    fn remember(&mut self, pcm: &[i16; FRAME]) {
        self.history.copy_within(FRAME.., 0);
        for (h, &s) in self.history[HISTORY - FRAME..].iter_mut().zip(pcm) {
            *h = f32::from(s);
        }
    }
}

/// The lag in `PITCH_MIN..=PITCH_MAX` whose history best predicts the last
/// [`CORR_LEN`] samples: the largest cross-correlation normalised by the
/// energy of the lagged segment (scale-free, so a louder older segment does
/// not win by loudness alone).
fn estimate_pitch(history: &[f32; HISTORY]) -> usize {
    let end = HISTORY;
    let start = end - CORR_LEN;
    let mut best = PITCH_MIN;
    let mut best_score = f64::NEG_INFINITY;
    for lag in PITCH_MIN..=PITCH_MAX {
        let mut corr = 0.0f64;
        let mut energy = 0.0f64;
        for i in start..end {
            let lagged = f64::from(history[i - lag]);
            corr += f64::from(history[i]) * lagged;
            energy += lagged * lagged;
        }
        if energy <= 0.0 {
            continue;
        }
        let score = corr / energy.sqrt();
        if score > best_score {
            best_score = score;
            best = lag;
        }
    }
    best
}

fn to_i16(v: f32) -> i16 {
    // `as` saturates and maps NaN to 0.
    v.round() as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f64, amplitude: f64, from: usize) -> [i16; FRAME] {
        let mut out = [0i16; FRAME];
        for (i, o) in out.iter_mut().enumerate() {
            let t = (from + i) as f64 / 8_000.0;
            *o = (amplitude * (2.0 * std::f64::consts::PI * freq * t).sin()).round() as i16;
        }
        out
    }

    fn correlation(a: &[i16], b: &[i16]) -> f64 {
        let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
        for (&x, &y) in a.iter().zip(b) {
            let (x, y) = (f64::from(x), f64::from(y));
            ab += x * y;
            aa += x * x;
            bb += y * y;
        }
        ab / (aa * bb).sqrt().max(1e-9)
    }

    fn energy(a: &[i16]) -> f64 {
        a.iter().map(|&x| f64::from(x) * f64::from(x)).sum()
    }

    #[test]
    fn a_sine_continues_with_its_period() {
        for freq in [200.0, 300.0, 425.0, 97.0] {
            let mut plc = Plc::new();
            for k in 0..4 {
                let mut frame = sine(freq, 8_000.0, k * FRAME);
                plc.good_frame(&mut frame);
                assert_eq!(
                    frame,
                    sine(freq, 8_000.0, k * FRAME),
                    "no erasure, no change"
                );
            }
            let mut out = [0i16; FRAME];
            plc.conceal(&mut out);
            let ideal = sine(freq, 8_000.0, 4 * FRAME);
            let c = correlation(&out, &ideal);
            assert!(c > 0.95, "{freq} Hz: correlation {c}");
            // Full level for the first 10 ms.
            let first = energy(&out[..FADE_START]);
            let want = energy(&ideal[..FADE_START]);
            assert!(
                first > 0.8 * want && first < 1.2 * want,
                "{freq} Hz: {first} vs {want}"
            );
        }
    }

    #[test]
    fn energy_decays_to_silence_after_60_ms() {
        let mut plc = Plc::new();
        for k in 0..3 {
            plc.good_frame(&mut sine(300.0, 10_000.0, k * FRAME));
        }
        let mut energies = Vec::new();
        for _ in 0..6 {
            assert!(plc.is_concealing() || energies.is_empty());
            let mut out = [0i16; FRAME];
            plc.conceal(&mut out);
            energies.push(energy(&out));
        }
        assert!(
            energies[0] > energies[1] && energies[1] > energies[2],
            "{energies:?}"
        );
        assert!(energies[2] > 0.0);
        // Frames from 60 ms on are silent.
        assert!(energies[3..].iter().all(|&e| e == 0.0), "{energies:?}");
        assert!(!plc.can_conceal());
    }

    #[test]
    fn first_good_frame_is_merged_smoothly() {
        let mut plc = Plc::new();
        for k in 0..3 {
            plc.good_frame(&mut sine(300.0, 8_000.0, k * FRAME));
        }
        let mut out = [0i16; FRAME];
        plc.conceal(&mut out);
        let last = out[FRAME - 1];
        // The stream comes back in antiphase: the worst case for a splice.
        let mut good = sine(300.0, -8_000.0, 4 * FRAME);
        let raw = good;
        plc.good_frame(&mut good);
        assert!(!plc.is_concealing());
        let jump = (i32::from(good[0]) - i32::from(last)).abs();
        let raw_jump = (i32::from(raw[0]) - i32::from(last)).abs();
        assert!(jump <= raw_jump, "{jump} > {raw_jump}");
        // The end of the frame is the received audio, untouched.
        assert_eq!(good[MAX_MERGE..], raw[MAX_MERGE..]);
    }

    #[test]
    fn after_a_long_erasure_the_stream_fades_in() {
        let mut plc = Plc::new();
        plc.good_frame(&mut sine(300.0, 8_000.0, 0));
        let mut out = [0i16; FRAME];
        for _ in 0..5 {
            plc.conceal(&mut out);
        }
        assert_eq!(out, [0; FRAME]);
        let mut good = sine(300.0, 8_000.0, 6 * FRAME);
        let raw = good;
        plc.good_frame(&mut good);
        assert!(i32::from(good[0]).abs() <= i32::from(raw[0]).abs());
        assert_eq!(good[MAX_MERGE..], raw[MAX_MERGE..]);
    }

    #[test]
    fn nothing_to_conceal_before_any_audio() {
        let mut plc = Plc::new();
        assert!(!plc.can_conceal());
        let mut out = [5i16; FRAME];
        plc.conceal(&mut out);
        assert_eq!(out, [0; FRAME]);
        assert!(!plc.is_concealing());
    }

    #[test]
    fn never_panics_on_silence_full_scale_or_noise() {
        let mut rng = fastrand::Rng::with_seed(7);
        let inputs: [fn(&mut fastrand::Rng, usize) -> i16; 4] = [
            |_, _| 0,
            |_, i| {
                if (i / 37) % 2 == 0 {
                    i16::MAX
                } else {
                    i16::MIN
                }
            },
            |_, _| i16::MIN,
            |r, _| r.i16(..),
        ];
        for make in inputs {
            let mut plc = Plc::new();
            for round in 0..40 {
                if rng.u8(..) % 3 == 0 {
                    let mut out = [0i16; FRAME];
                    plc.conceal(&mut out);
                } else {
                    let mut frame = [0i16; FRAME];
                    for (i, s) in frame.iter_mut().enumerate() {
                        *s = make(&mut rng, round * FRAME + i);
                    }
                    plc.good_frame(&mut frame);
                }
            }
        }
    }
}
