//! Sample-rate conversion for speech: a band-limited (Kaiser-windowed
//! sinc) polyphase resampler between any two rates. Used where audio
//! enters or leaves the 8 kHz call path: TTS output (22,050 Hz), uploaded
//! prompts (any rate), the recognizer (16 kHz).
//!
//! The low-pass filter is designed against the lower of the two rates,
//! `f_low`: it passes up to 0.425 × `f_low` (3.4 kHz at 8 kHz, the top of
//! the telephone band) and stops from 0.475 × `f_low` (3.8 kHz) with about
//! 65 dB of attenuation, so downsampling does not alias and upsampling
//! does not image. The filter is centred (no delay): whole buffers are
//! converted at once, which is what uploads, TTS output and ASR input need.
//!
//! Rates whose ratio reduces to at most [`MAX_PHASES`] output phases (every
//! common pair: 22050/44100/48000/16000 ↔ 8000) use exact polyphase
//! coefficients; other ratios interpolate linearly between
//! [`MAX_PHASES`] precomputed phases.

/// Most filter phases kept in the coefficient table.
pub const MAX_PHASES: usize = 1_024;
/// Pass-band edge, as a fraction of the lower rate.
const PASS: f64 = 0.425;
/// Stop-band edge, as a fraction of the lower rate.
const STOP: f64 = 0.475;
/// Stop-band attenuation the Kaiser window is designed for (dB).
const ATTENUATION_DB: f64 = 65.0;

/// `input` (mono samples at `from_hz`) converted to `to_hz`.
///
/// The output has `ceil(input.len() × to_hz / from_hz)` samples; samples
/// outside the input count as silence, and the result saturates at the
/// `i16` range. Equal rates (or a zero rate, which has no meaning) return
/// the input unchanged.
pub fn resample(input: &[i16], from_hz: u32, to_hz: u32) -> Vec<i16> {
    if from_hz == to_hz || from_hz == 0 || to_hz == 0 || input.is_empty() {
        return input.to_vec();
    }
    Resampler::new(from_hz, to_hz).process(input)
}

/// A resampler for one pair of rates; building it computes the filter
/// table, so reuse it for many buffers at the same rates.
#[derive(Debug, Clone)]
pub struct Resampler {
    /// Input rate over the rates' common divisor.
    down: u64,
    /// Output rate over the rates' common divisor.
    up: u64,
    /// Phases in `table` (plus one extra row: the first phase a sample later).
    phases: usize,
    /// Half the filter length in input samples, rounded up.
    half: usize,
    /// `(phases + 1)` rows of `2 × half` coefficients.
    table: Vec<f32>,
}

impl Resampler {
    /// The resampler from `from_hz` to `to_hz` (a zero rate counts as 1 Hz).
    pub fn new(from_hz: u32, to_hz: u32) -> Self {
        let from = u64::from(from_hz.max(1));
        let to = u64::from(to_hz.max(1));
        let g = gcd(from, to);
        let (down, up) = (from / g, to / g);
        let phases = usize::try_from(up).map_or(MAX_PHASES, |u| u.min(MAX_PHASES));
        // Everything below is in input samples: the cut-off and transition
        // of the filter scale with the lower rate over the input rate.
        let low_over_in = from.min(to) as f64 / from as f64;
        let cutoff = 0.5 * (PASS + STOP) * low_over_in;
        let transition = (STOP - PASS) * low_over_in;
        let taps = (ATTENUATION_DB - 8.0) / (2.285 * 2.0 * std::f64::consts::PI * transition);
        let half_width = taps / 2.0;
        let half = half_width.ceil() as usize + 1;
        let beta = 0.1102 * (ATTENUATION_DB - 8.7);
        let i0_beta = bessel_i0(beta);
        let width = 2 * half;
        let mut table = vec![0.0f32; (phases + 1) * width];
        for (row, coeffs) in table.chunks_exact_mut(width).enumerate() {
            let frac = row as f64 / phases as f64;
            for (j, c) in coeffs.iter_mut().enumerate() {
                // Tap j multiplies input sample (i - half + 1 + j) for an
                // output at input time i + frac.
                let tau = frac + half as f64 - 1.0 - j as f64;
                *c = kernel(tau, cutoff, half_width, beta, i0_beta) as f32;
            }
        }
        Self {
            down,
            up,
            phases,
            half,
            table,
        }
    }

    /// Samples out for `n` samples in.
    pub fn output_len(&self, n: usize) -> usize {
        let n = n as u64;
        usize::try_from((n * self.up).div_ceil(self.down)).unwrap_or(usize::MAX)
    }

    /// Converts one whole buffer.
    pub fn process(&self, input: &[i16]) -> Vec<i16> {
        let x: Vec<f32> = input.iter().map(|&s| f32::from(s)).collect();
        let out_len = self.output_len(input.len());
        let width = 2 * self.half;
        let mut out = Vec::with_capacity(out_len);
        let mut scratch = vec![0.0f32; width];
        for n in 0..out_len as u64 {
            // Output n sits at input time n × down / up = i + p / up.
            let pos = n * self.down;
            let i = (pos / self.up) as usize;
            let p = pos % self.up;
            let start = i as isize - self.half as isize + 1;
            let window: &[f32] = if start >= 0 && start as usize + width <= x.len() {
                &x[start as usize..start as usize + width]
            } else {
                for (j, s) in scratch.iter_mut().enumerate() {
                    let k = start + j as isize;
                    *s = if k >= 0 && (k as usize) < x.len() {
                        x[k as usize]
                    } else {
                        0.0
                    };
                }
                &scratch
            };
            // The phase's row; between two rows when the ratio has more
            // phases than the table.
            let scaled = p * self.phases as u64;
            let row = (scaled / self.up) as usize;
            let rem = scaled % self.up;
            let a = self.row(row);
            let y = if rem == 0 {
                dot(window, a)
            } else {
                let t = rem as f32 / self.up as f32;
                let b = self.row(row + 1);
                (1.0 - t) * dot(window, a) + t * dot(window, b)
            };
            out.push(saturate(y));
        }
        out
    }

    fn row(&self, r: usize) -> &[f32] {
        let width = 2 * self.half;
        &self.table[r * width..(r + 1) * width]
    }
}

/// The windowed-sinc low-pass at `tau` input samples from its centre.
fn kernel(tau: f64, cutoff: f64, half_width: f64, beta: f64, i0_beta: f64) -> f64 {
    if tau.abs() >= half_width {
        return 0.0;
    }
    let x = 2.0 * cutoff * tau;
    let sinc = if x.abs() < 1e-12 {
        1.0
    } else {
        (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x)
    };
    let r = tau / half_width;
    let window = bessel_i0(beta * (1.0 - r * r).max(0.0).sqrt()) / i0_beta;
    2.0 * cutoff * sinc * window
}

/// Modified Bessel function of the first kind, order 0 (power series).
fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    let half = x / 2.0;
    for k in 1..64 {
        term *= half / k as f64;
        let t2 = term * term;
        sum += t2;
        if t2 < sum * 1e-17 {
            break;
        }
    }
    sum
}

/// Dot product with independent partial sums (lets the compiler vectorise).
fn dot(x: &[f32], h: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let xc = x.chunks_exact(8);
    let hc = h.chunks_exact(8);
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(hc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in xc.zip(hc) {
        for k in 0..8 {
            acc[k] += a[k] * b[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn saturate(y: f32) -> i16 {
    y.round().clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, hz: f64, amplitude: f64, seconds: f64) -> Vec<i16> {
        let n = (f64::from(rate) * seconds) as usize;
        (0..n)
            .map(|i| {
                let t = i as f64 / f64::from(rate);
                (amplitude * (2.0 * std::f64::consts::PI * hz * t).sin()).round() as i16
            })
            .collect()
    }

    /// Amplitude of the `hz` component (Goertzel over the whole buffer).
    fn goertzel(x: &[i16], rate: u32, hz: f64) -> f64 {
        let w = 2.0 * std::f64::consts::PI * hz / f64::from(rate);
        let coeff = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &v in x {
            let s = f64::from(v) + coeff * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
        2.0 * power.max(0.0).sqrt() / x.len() as f64
    }

    fn rms(x: &[i16]) -> f64 {
        (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
    }

    /// The middle of a buffer, away from the edges where the filter sees silence.
    fn middle(x: &[i16]) -> &[i16] {
        &x[x.len() / 4..x.len() * 3 / 4]
    }

    fn zero_crossings(x: &[i16]) -> usize {
        x.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count()
    }

    const PAIRS: [(u32, u32); 8] = [
        (22_050, 8_000),
        (16_000, 8_000),
        (44_100, 8_000),
        (48_000, 8_000),
        (11_025, 8_000),
        (32_000, 8_000),
        (8_000, 16_000),
        (8_000, 22_050),
    ];

    #[test]
    fn a_1khz_tone_keeps_its_frequency_and_level() {
        for (from, to) in PAIRS {
            let x = sine(from, 1_000.0, 10_000.0, 1.0);
            let y = resample(&x, from, to);
            let mid = middle(&y);
            let level = goertzel(mid, to, 1_000.0);
            let db = 20.0 * (level / 10_000.0).log10();
            assert!(db.abs() < 0.1, "{from}->{to}: 1 kHz at {db:.3} dB");
            // Half a second of 1 kHz crosses zero about 1000 times.
            let zc = zero_crossings(mid) as f64;
            let expected = 2.0 * 1_000.0 * mid.len() as f64 / f64::from(to);
            assert!((zc - expected).abs() <= 2.0, "{from}->{to}: {zc} crossings");
            // Nothing else: the whole level is in the tone.
            let total = rms(mid) * 2f64.sqrt();
            assert!((total / level - 1.0).abs() < 0.01, "{from}->{to}");
        }
    }

    #[test]
    fn tones_from_3800_hz_up_are_stopped_when_downsampling_to_8khz() {
        for from in [16_000u32, 22_050, 44_100, 48_000, 11_025, 32_000] {
            let nyquist = f64::from(from) / 2.0;
            for hz in [
                3_800.0, 4_000.0, 4_200.0, 5_000.0, 7_000.0, 10_000.0, 15_000.0, 21_000.0,
            ] {
                if hz >= nyquist - 50.0 {
                    continue;
                }
                let x = sine(from, hz, 20_000.0, 1.0);
                let y = resample(&x, from, 8_000);
                let ratio = rms(middle(&y)) / rms(middle(&x));
                let db = 20.0 * ratio.max(1e-9).log10();
                assert!(db <= -30.0, "{from} Hz source, {hz} Hz tone: {db:.1} dB");
            }
        }
        // And the top of the telephone band still passes.
        let x = sine(22_050, 3_300.0, 10_000.0, 1.0);
        let y = resample(&x, 22_050, 8_000);
        let db = 20.0 * (goertzel(middle(&y), 8_000, 3_300.0) / 10_000.0).log10();
        assert!(db.abs() < 0.5, "3.3 kHz at {db:.2} dB");
    }

    #[test]
    fn upsampling_makes_no_images() {
        let x = sine(8_000, 1_000.0, 10_000.0, 1.0);
        let y = resample(&x, 8_000, 16_000);
        // The image of 1 kHz would be at 7 kHz.
        let image = goertzel(middle(&y), 16_000, 7_000.0);
        assert!(20.0 * (image / 10_000.0).log10() < -60.0);
    }

    #[test]
    fn lengths_follow_the_ratio() {
        assert_eq!(resample(&vec![0; 22_050], 22_050, 8_000).len(), 8_000);
        assert_eq!(resample(&vec![0; 44_100], 44_100, 8_000).len(), 8_000);
        assert_eq!(resample(&vec![0; 48_000], 48_000, 8_000).len(), 8_000);
        assert_eq!(resample(&vec![0; 16_000], 16_000, 8_000).len(), 8_000);
        assert_eq!(resample(&vec![0; 8_000], 8_000, 16_000).len(), 16_000);
        // Partial samples round up.
        assert_eq!(resample(&[1, 2, 3], 16_000, 8_000).len(), 2);
        assert_eq!(resample(&[1, 2, 3, 4, 5], 48_000, 8_000).len(), 1);
        assert_eq!(resample(&[7], 8_000, 16_000).len(), 2);
        let r = Resampler::new(22_050, 8_000);
        for n in [0, 1, 2, 440, 441, 442, 12_345] {
            assert_eq!(r.process(&vec![0; n]).len(), r.output_len(n));
            assert_eq!(r.output_len(n), (n * 8_000).div_ceil(22_050));
        }
    }

    #[test]
    fn empty_same_rate_and_odd_lengths() {
        assert!(resample(&[], 22_050, 8_000).is_empty());
        let x: Vec<i16> = (0..1001).map(|i| (i * 37 % 2000 - 1000) as i16).collect();
        assert_eq!(resample(&x, 8_000, 8_000), x);
        assert_eq!(resample(&x, 0, 8_000), x);
        for (from, to) in PAIRS {
            for n in [1usize, 2, 3, 7, 99, 1001] {
                let y = resample(&x[..n], from, to);
                assert_eq!(y.len(), (n * to as usize).div_ceil(from as usize));
            }
        }
        // A ratio with more phases than the table (interpolated phases).
        let x = sine(8_001, 1_000.0, 10_000.0, 1.0);
        let y = resample(&x, 8_001, 8_000);
        let db = 20.0 * (goertzel(middle(&y), 8_000, 1_000.0) / 10_000.0).log10();
        assert!(db.abs() < 0.1, "{db}");
    }

    #[test]
    fn full_scale_input_saturates_instead_of_wrapping() {
        // A full-scale square wave overshoots (Gibbs) after filtering.
        let x: Vec<i16> = (0..4_410)
            .map(|i| {
                if (i / 200) % 2 == 0 {
                    i16::MAX
                } else {
                    i16::MIN
                }
            })
            .collect();
        let half: Vec<i16> = x.iter().map(|&v| v / 2).collect();
        let y = resample(&x, 44_100, 8_000);
        let reference = resample(&half, 44_100, 8_000);
        assert!(y.contains(&i16::MAX) && y.contains(&i16::MIN));
        for (a, b) in y.iter().zip(&reference) {
            let expected = (2 * i32::from(*b)).clamp(i32::from(i16::MIN), i32::from(i16::MAX));
            assert!((i32::from(*a) - expected).abs() <= 3, "{a} vs {expected}");
        }
    }
}
