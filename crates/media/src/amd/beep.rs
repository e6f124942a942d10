//! The voicemail beep: one steady tone between 400 and 2100 Hz.
//!
//! Each frame is Hann-windowed and scanned by Goertzel filters every 25 Hz
//! over the band (the window's main lobe is 100 Hz wide either side, so a
//! tone between two filters loses at most 0.35 dB); the strongest filter's
//! frequency is refined by parabolic interpolation of the log powers
//! around it. A frame is *tonal* when that one filter carries 75 % of the
//! frame's power and the frame is louder than −45 dBm0. A beep is a run of
//! tonal frames whose frequencies stay within 30 Hz of the run's mean.

/// Lowest beep frequency, Hz.
const LOW_HZ: f32 = 400.0;
/// Highest beep frequency, Hz.
const HIGH_HZ: f32 = 2_100.0;
/// Spacing of the filters, Hz.
const STEP_HZ: f32 = 25.0;
/// Number of filters from [`LOW_HZ`] to [`HIGH_HZ`].
const FILTERS: usize = ((HIGH_HZ - LOW_HZ) / STEP_HZ) as usize + 1;
/// Share of the frame power the strongest filter must carry.
const MIN_SHARE: f32 = 0.75;
/// Largest deviation from the run's mean frequency, Hz.
const MAX_DRIFT_HZ: f32 = 30.0;
/// Quietest tonal frame: RMS 100 is about −44 dBm0.
const MIN_RMS: f32 = 100.0;
/// Shortest frame analysed (8 ms): below that the filters cannot resolve.
const MIN_FRAME: usize = 64;
/// A beep is reported when it reaches this length, if it has not ended.
const REPORT_AT_MS: u32 = 400;

/// Detects a voicemail beep: one steady tone (a single dominant frequency
/// between 400 and 2100 Hz, stable within ±30 Hz, at least 75 % of each
/// frame's energy) lasting at least `min_ms`, reported once, when it ends
/// or when it reaches 400 ms (or `min_ms`, if that is longer).
///
/// Only whole tonal frames count, so a beep needs `min_ms` plus up to one
/// frame to be sure of detection.
#[derive(Clone)]
pub struct BeepDetector {
    /// Shortest beep, samples.
    min_len: u64,
    /// Length at which a beep still going on is reported, samples.
    report_len: u64,
    /// Goertzel coefficients `2 cos(ω)` of the filters.
    coeffs: [f32; FILTERS],
    /// The windowed frame (reused between frames).
    buf: Vec<f32>,
    /// Length of the current run of tonal frames, samples.
    run: u64,
    /// Sum of the frequencies of the run's frames.
    freq_sum: f32,
    /// Frames in the run.
    run_frames: u32,
    /// Whether the current run has been reported.
    reported: bool,
}

impl BeepDetector {
    /// A detector of beeps of at least `min_ms` (160 is a good default:
    /// voicemail beeps last 0.3-1 s, sustained vowels rarely stay this
    /// pure for that long).
    pub fn new(min_ms: u32) -> Self {
        let mut coeffs = [0.0; FILTERS];
        for (i, c) in coeffs.iter_mut().enumerate() {
            let f = f64::from(LOW_HZ) + f64::from(STEP_HZ) * i as f64;
            *c = (2.0 * (std::f64::consts::TAU * f / 8_000.0).cos()) as f32;
        }
        let min_len = u64::from(min_ms) * 8;
        Self {
            min_len,
            report_len: min_len.max(u64::from(REPORT_AT_MS) * 8),
            coeffs,
            buf: Vec::new(),
            run: 0,
            freq_sum: 0.0,
            run_frames: 0,
            reported: false,
        }
    }

    /// Feeds one frame (20 ms, 160 samples); true when a beep is reported.
    pub fn push(&mut self, frame: &[i16]) -> bool {
        let tone = self.tone_of(frame);
        if let Some(f) = tone {
            if self.run > 0 && (f - self.mean()).abs() <= MAX_DRIFT_HZ {
                self.run += frame.len() as u64;
                self.freq_sum += f;
                self.run_frames += 1;
                if !self.reported && self.run >= self.report_len {
                    self.reported = true;
                    return true;
                }
                return false;
            }
        }
        let ended = !self.reported && self.run >= self.min_len && self.run > 0;
        self.reported = false;
        (self.run, self.freq_sum, self.run_frames) = match tone {
            Some(f) => (frame.len() as u64, f, 1),
            None => (0, 0.0, 0),
        };
        ended
    }

    /// Mean frequency of the current run.
    fn mean(&self) -> f32 {
        self.freq_sum / self.run_frames.max(1) as f32
    }

    /// The frequency of the frame's tone, if the frame is tonal.
    fn tone_of(&mut self, frame: &[i16]) -> Option<f32> {
        let n = frame.len();
        if n < MIN_FRAME {
            return None;
        }
        let raw: f32 = frame.iter().map(|&s| f32::from(s) * f32::from(s)).sum();
        if raw < MIN_RMS * MIN_RMS * n as f32 {
            return None;
        }
        self.buf.clear();
        let (mut sum_w, mut sum_w2, mut energy) = (0.0f32, 0.0f32, 0.0f32);
        for (i, &s) in frame.iter().enumerate() {
            let phase = std::f32::consts::TAU * (i as f32 + 0.5) / n as f32;
            let w = 0.5 - 0.5 * phase.cos();
            let v = f32::from(s) * w;
            sum_w += w;
            sum_w2 += w * w;
            energy += v * v;
            self.buf.push(v);
        }
        let total = energy / sum_w2;
        let gain = 2.0 / (sum_w * sum_w);

        let mut power = [0.0f32; FILTERS];
        for (p, &c) in power.iter_mut().zip(&self.coeffs) {
            let (mut s1, mut s2) = (0.0f32, 0.0f32);
            for &v in &self.buf {
                let s0 = v + c * s1 - s2;
                s2 = s1;
                s1 = s0;
            }
            *p = (s1 * s1 + s2 * s2 - c * s1 * s2) * gain;
        }
        let (k, &peak) = power.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1))?;
        if peak < MIN_SHARE * total {
            return None;
        }
        let mut f = LOW_HZ + STEP_HZ * k as f32;
        if k > 0 && k + 1 < FILTERS {
            let (a, b, c) = (
                power[k - 1].max(f32::MIN_POSITIVE).ln(),
                peak.max(f32::MIN_POSITIVE).ln(),
                power[k + 1].max(f32::MIN_POSITIVE).ln(),
            );
            let denom = a - 2.0 * b + c;
            if denom < 0.0 {
                f += STEP_HZ * (0.5 * (a - c) / denom).clamp(-0.5, 0.5);
            }
        }
        Some(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtmf::testsig::{add_noise, power, silence, sine, ulaw, vowel, word, VOWELS};
    use crate::dtmf::tone;

    /// Frames of `pcm` at which the detector reports a beep.
    fn reports(pcm: &[i16]) -> Vec<usize> {
        let mut d = BeepDetector::new(160);
        pcm.chunks(160)
            .enumerate()
            .filter_map(|(i, f)| d.push(f).then_some(i))
            .collect()
    }

    #[test]
    fn frequency_estimate() {
        let mut d = BeepDetector::new(160);
        for f in [400.0, 440.0, 987.0, 1_000.0, 1_412.5, 2_099.0] {
            let pcm = sine(f, 20, 8_000.0);
            let est = d.tone_of(&pcm).expect("tonal");
            assert!((est - f as f32).abs() < 5.0, "{f} → {est}");
        }
        assert_eq!(d.tone_of(&sine(300.0, 20, 8_000.0)), None);
        assert_eq!(d.tone_of(&sine(2_500.0, 20, 8_000.0)), None);
        assert_eq!(d.tone_of(&sine(1_000.0, 20, 50.0)), None);
        assert_eq!(d.tone_of(&[1_000; 40]), None);
    }

    #[test]
    fn beeps_are_reported_once() {
        // 300 ms of 1 kHz: reported when it ends.
        let mut pcm = silence(500);
        pcm.extend(sine(1_000.0, 300, 6_000.0));
        pcm.extend(silence(500));
        let r = reports(&pcm);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!((40..=42).contains(&r[0]), "{r:?}");
        // 2 s of 850 Hz: reported at 400 ms, once.
        let mut pcm = silence(100);
        pcm.extend(sine(850.0, 2_000, 6_000.0));
        pcm.extend(silence(100));
        let r = reports(&pcm);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!((24..=26).contains(&r[0]), "{r:?}");
        // Through µ-law, in noise 15 dB down, at several frequencies.
        let mut rng = fastrand::Rng::with_seed(3);
        for f in [440.0, 1_000.0, 1_400.0, 2_000.0] {
            let beep = sine(f, 400, 4_000.0);
            let reference = power(&beep);
            let mut pcm = silence(300);
            pcm.extend(beep);
            pcm.extend(silence(300));
            add_noise(&mut pcm, reference, 15.0, &mut rng);
            assert_eq!(reports(&ulaw(&pcm)).len(), 1, "{f} Hz");
        }
        // Two beeps, two reports.
        let mut pcm = sine(1_000.0, 300, 6_000.0);
        pcm.extend(silence(200));
        pcm.extend(sine(1_000.0, 300, 6_000.0));
        pcm.extend(silence(100));
        assert_eq!(reports(&pcm).len(), 2);
    }

    #[test]
    fn short_or_unsteady_tones_are_not_beeps() {
        let mut pcm = sine(1_000.0, 120, 6_000.0);
        pcm.extend(silence(200));
        assert!(reports(&pcm).is_empty());
        // A frequency hop of 100 Hz every 100 ms.
        let mut pcm = Vec::new();
        for f in [800.0, 900.0, 1_000.0, 1_100.0, 1_200.0] {
            pcm.extend(sine(f, 100, 6_000.0));
        }
        pcm.extend(silence(100));
        assert!(reports(&pcm).is_empty());
    }

    #[test]
    fn speech_and_dtmf_are_not_beeps() {
        for key in ['1', '5', '9', '0', 'D'] {
            let mut pcm = tone(key, 500, 6_000);
            pcm.extend(silence(100));
            assert!(reports(&pcm).is_empty(), "{key}");
        }
        // Steady harmonic series of every vowel, at several pitches.
        for f0 in [100.0, 120.0, 150.0, 200.0, 250.0] {
            for formants in VOWELS {
                let mut pcm = vowel(f0, f0, &formants, 1_000, 10_000.0);
                pcm.extend(silence(100));
                assert!(reports(&pcm).is_empty(), "{f0} Hz {formants:?}");
            }
        }
        let mut rng = fastrand::Rng::with_seed(9);
        let mut pcm = Vec::new();
        while pcm.len() < 8_000 * 30 {
            let f0 = 85.0 + 175.0 * rng.f64();
            let syllables = rng.usize(1..=4);
            pcm.extend(word(&mut rng, syllables, f0, 8_000.0));
            pcm.extend(silence(rng.u32(20..=300)));
        }
        assert!(reports(&pcm).is_empty());
    }
}
