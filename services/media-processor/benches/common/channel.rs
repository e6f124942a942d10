//! The call's channel as the ASR bench (`benches/asr_accuracy.rs`) and the
//! acoustic-model adaptation (`examples/asr_adapt.rs`) both simulate it,
//! included by each with `#[path]`. `scripts/asr-adapt.sh` hashes this
//! file into the adapted model's key: a change here rebuilds the model.

use dialstack_media::g711;

/// White noise at `snr` dB under the speech (its RMS over 20 ms frames
/// louder than -40 dBFS), seeded; then G.711 µ-law and back. `None` adds
/// no noise.
pub fn degrade(pcm: &[i16], snr: Option<f64>, seed: u64) -> Vec<i16> {
    let mut out: Vec<f64> = pcm.iter().map(|&v| f64::from(v)).collect();
    if let Some(snr) = snr {
        let active: Vec<f64> = pcm
            .chunks(160)
            .map(|f| f.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / f.len() as f64)
            .filter(|&e| e > (32_768.0f64 * 0.01).powi(2))
            .collect();
        let speech = (active.iter().sum::<f64>() / active.len().max(1) as f64).sqrt();
        let noise_rms = speech / 10f64.powf(snr / 20.0);
        let mut rng = fastrand::Rng::with_seed(seed);
        for v in &mut out {
            // Sum of twelve uniforms: close enough to Gaussian, unit variance.
            let g: f64 = (0..12).map(|_| rng.f64()).sum::<f64>() - 6.0;
            *v += g * noise_rms;
        }
    }
    out.iter()
        .map(|&v| {
            let s = v.round().clamp(-32_768.0, 32_767.0) as i16;
            g711::ulaw_to_linear(g711::linear_to_ulaw(s))
        })
        .collect()
}
