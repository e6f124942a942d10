//! Synthetic test signals shared by the DTMF and AMD tests: sines, sweeps,
//! noise, G.711 round trips and speech-like harmonic series.

use std::f64::consts::TAU;

use crate::g711::{linear_to_ulaw, ulaw_to_linear};

/// Samples per millisecond at 8 kHz.
pub const PER_MS: usize = 8;

/// Clamps and rounds to a sample.
pub fn sample(v: f64) -> i16 {
    v.round().clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16
}

/// `ms` of silence.
pub fn silence(ms: u32) -> Vec<i16> {
    vec![0; ms as usize * PER_MS]
}

/// A sine of `amp` peak.
pub fn sine(freq: f64, ms: u32, amp: f64) -> Vec<i16> {
    (0..ms as usize * PER_MS)
        .map(|i| sample(amp * (TAU * freq * i as f64 / 8_000.0).sin()))
        .collect()
}

/// A linear sweep from `f0` to `f1` Hz.
pub fn chirp(f0: f64, f1: f64, ms: u32, amp: f64) -> Vec<i16> {
    let n = ms as usize * PER_MS;
    let mut phase = 0.0f64;
    (0..n)
        .map(|i| {
            let f = f0 + (f1 - f0) * i as f64 / n as f64;
            phase += TAU * f / 8_000.0;
            sample(amp * phase.sin())
        })
        .collect()
}

/// Gaussian-ish white noise (sum of 4 uniforms) of the given RMS.
pub fn white_noise(rng: &mut fastrand::Rng, n: usize, rms: f64) -> Vec<i16> {
    // The sum of 4 uniforms on [-1, 1] has variance 4/3.
    let scale = rms / (4.0f64 / 3.0).sqrt();
    (0..n)
        .map(|_| {
            let u: f64 = (0..4).map(|_| rng.f64() * 2.0 - 1.0).sum();
            sample(u * scale)
        })
        .collect()
}

/// Mean power of a signal.
pub fn power(pcm: &[i16]) -> f64 {
    if pcm.is_empty() {
        return 0.0;
    }
    pcm.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / pcm.len() as f64
}

/// Adds white noise `snr_db` below the power of `reference`.
pub fn add_noise(pcm: &mut [i16], reference: f64, snr_db: f64, rng: &mut fastrand::Rng) {
    let rms = (reference / 10f64.powf(snr_db / 10.0)).sqrt();
    let noise = white_noise(rng, pcm.len(), rms);
    for (s, n) in pcm.iter_mut().zip(noise) {
        *s = s.saturating_add(n);
    }
}

/// Encodes to µ-law and back.
pub fn ulaw(pcm: &[i16]) -> Vec<i16> {
    pcm.iter()
        .map(|&s| ulaw_to_linear(linear_to_ulaw(s)))
        .collect()
}

/// Formants (centre, bandwidth) of a few vowels, Hz.
pub const VOWELS: [[(f64, f64); 3]; 6] = [
    [(730.0, 90.0), (1090.0, 110.0), (2440.0, 170.0)], // a
    [(270.0, 60.0), (2290.0, 100.0), (3010.0, 200.0)], // i
    [(300.0, 60.0), (870.0, 90.0), (2240.0, 170.0)],   // u
    [(530.0, 70.0), (1840.0, 100.0), (2480.0, 170.0)], // e
    [(570.0, 80.0), (840.0, 90.0), (2410.0, 170.0)],   // o
    [(660.0, 80.0), (1720.0, 100.0), (2410.0, 170.0)], // ae
];

/// A voiced sound: the harmonics of a fundamental gliding from `f0` to
/// `f1`, shaped by the formants (resonance magnitudes, falling 6 dB per
/// octave), with 20 ms raised-cosine attack and release, `amp` peak.
pub fn vowel(f0: f64, f1: f64, formants: &[(f64, f64)], ms: u32, amp: f64) -> Vec<i16> {
    let n = ms as usize * PER_MS;
    let mut phase = 0.0f64;
    let mut out: Vec<f64> = Vec::with_capacity(n);
    for i in 0..n {
        let f = f0 + (f1 - f0) * i as f64 / n.max(1) as f64;
        phase += TAU * f / 8_000.0;
        let mut v = 0.0;
        let mut k = 1.0;
        while k * f < 3_800.0 {
            let h = k * f;
            let gain: f64 = formants
                .iter()
                .map(|&(c, b)| 1.0 / (1.0 + ((h - c) / (b / 2.0)).powi(2)).sqrt())
                .sum();
            v += gain / k * (k * phase).sin();
            k += 1.0;
        }
        out.push(v);
    }
    let peak = out.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-9);
    let ramp = (20 * PER_MS).min(n / 2).max(1);
    out.iter()
        .enumerate()
        .map(|(i, v)| {
            let edge = i.min(n - 1 - i);
            let env = if edge < ramp {
                0.5 - 0.5 * (std::f64::consts::PI * edge as f64 / ramp as f64).cos()
            } else {
                1.0
            };
            sample(v / peak * amp * env)
        })
        .collect()
}

/// A speech-like word: `syllables` vowels of 80-250 ms with random
/// fundamentals around `f0`, joined by 10-40 ms dips.
pub fn word(rng: &mut fastrand::Rng, syllables: usize, f0: f64, amp: f64) -> Vec<i16> {
    let mut out = Vec::new();
    for s in 0..syllables {
        if s > 0 {
            out.extend(silence(rng.u32(10..=40)));
        }
        let start = f0 * (0.85 + 0.3 * rng.f64());
        let end = start * (0.9 + 0.2 * rng.f64());
        let formants = VOWELS[rng.usize(..VOWELS.len())];
        let level = amp * (0.6 + 0.4 * rng.f64());
        out.extend(vowel(start, end, &formants, rng.u32(80..=250), level));
    }
    out
}
