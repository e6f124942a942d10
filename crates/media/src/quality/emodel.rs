//! The E-model (ITU-T G.107) reduced to what varies on a G.711 call:
//! packet loss after the jitter buffer, its burstiness, and one-way delay.
//!
//! R = 93.2 − Id − Ie,eff, with
//! - Ie,eff = Ie + (95 − Ie)·Ppl / (Ppl/BurstR + Bpl), Ie = 0 for G.711,
//!   Bpl = 25.1 with packet loss concealment (4.3 without), Ppl in percent;
//! - Id = 0.024·d + 0.11·(d − 177.3)·[d > 177.3], d the one-way mouth-to-ear
//!   delay in ms;
//! - MOS = 1 + 0.035·R + R·(R − 60)·(100 − R)·7·10⁻⁶, 1 below R = 0, 4.5
//!   from R = 100.
//!
//! Inputs are sanitised rather than rejected, so a bad measurement cannot
//! take the call path down: see [`r_factor`].

/// R of a G.711 call with no loss and no delay (G.107 defaults, Ie = 0).
pub const R_G711_NO_IMPAIRMENT: f64 = 93.2;
/// Packet-loss robustness of G.711 with loss concealment (G.113 Appendix I).
pub const BPL_PLC: f64 = 25.1;
/// Packet-loss robustness of G.711 without loss concealment.
pub const BPL_NO_PLC: f64 = 4.3;
/// Audio per packet, counted once in the mouth-to-ear delay.
pub const PACKETIZATION_MS: f64 = 20.0;

/// Knee of the delay impairment: below it Id grows slowly.
const DELAY_KNEE_MS: f64 = 177.3;
/// Ie of G.711.
const IE_G711: f64 = 0.0;

/// Transmission rating R of a G.711 call, 0 to 93.2.
///
/// - `ppl_percent`: frames lost or too late for playout, in percent;
///   clamped to 0..=100, NaN counts as 0.
/// - `burst_r`: BurstR (1 for random loss); NaN and values below 1 count as
///   1 (the model does not credit loss sparser than random).
/// - `one_way_delay_ms`: mouth-to-ear delay; NaN and negative count as 0.
/// - `plc`: whether lost frames are concealed.
pub fn r_factor(ppl_percent: f64, burst_r: f64, one_way_delay_ms: f64, plc: bool) -> f64 {
    let ppl = if ppl_percent.is_nan() {
        0.0
    } else {
        ppl_percent.clamp(0.0, 100.0)
    };
    let burst_r = if burst_r.is_nan() {
        1.0
    } else {
        burst_r.max(1.0)
    };
    let d = if one_way_delay_ms.is_nan() {
        0.0
    } else {
        one_way_delay_ms.max(0.0)
    };
    let bpl = if plc { BPL_PLC } else { BPL_NO_PLC };

    let ie_eff = IE_G711 + (95.0 - IE_G711) * ppl / (ppl / burst_r + bpl);
    let id = 0.024 * d
        + if d > DELAY_KNEE_MS {
            0.11 * (d - DELAY_KNEE_MS)
        } else {
            0.0
        };
    let r = R_G711_NO_IMPAIRMENT - id - ie_eff;
    // An infinite delay gives -inf; NaN cannot occur after the sanitising above.
    r.clamp(0.0, 100.0)
}

/// Estimated mean opinion score (1 to 4.5) for a rating `r` (G.107 Annex B).
///
/// The cubic dips slightly below 1 for 0 < R < 6.5; the result is held at
/// 1 there, so MOS never decreases as R grows. NaN gives 1.
pub fn mos_from_r(r: f64) -> f64 {
    if r.is_nan() || r <= 0.0 {
        return 1.0;
    }
    if r >= 100.0 {
        return 4.5;
    }
    let mos = 1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6;
    mos.clamp(1.0, 4.5)
}

/// What one call's quality is computed from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QualityInputs {
    /// Frames the far end sent that should have been played (RTP packets expected).
    pub expected: u64,
    /// Of those, frames that never arrived.
    pub lost: u64,
    /// Of those, frames that arrived after their playout time and were dropped.
    pub late: u64,
    /// BurstR of the played-out slots ([`super::LossPattern::burst_ratio`]).
    pub burst_ratio: f64,
    /// Mean playout delay the jitter buffer added, in ms.
    pub jitter_buffer_delay_ms: f64,
    /// Round-trip time from RTCP, if one was measured.
    pub rtt_ms: Option<f64>,
    /// Whether lost frames were concealed.
    pub plc: bool,
}

/// The E-model's verdict on one call, with the figures it was computed from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QualitySummary {
    /// Transmission rating R, 0 to 93.2.
    pub r_factor: f64,
    /// Estimated mean opinion score, 1 to 4.5.
    pub mos: f64,
    /// Loss after the jitter buffer, (lost + late) / expected, in percent.
    pub ppl_percent: f64,
    /// BurstR used (at least 1).
    pub burst_ratio: f64,
    /// One-way delay used: jitter buffer + RTT/2 (0 if unknown) + packetization.
    pub one_way_delay_ms: f64,
}

/// R and MOS of a call, or `None` when nothing was expected (no audio: no score).
pub fn summarize(inputs: &QualityInputs) -> Option<QualitySummary> {
    if inputs.expected == 0 {
        return None;
    }
    let concealed = inputs.lost.saturating_add(inputs.late);
    let ppl_percent = (concealed as f64 / inputs.expected as f64 * 100.0).min(100.0);
    let half_rtt = match inputs.rtt_ms {
        Some(rtt) if rtt.is_finite() && rtt > 0.0 => rtt / 2.0,
        _ => 0.0,
    };
    let jitter_buffer = if inputs.jitter_buffer_delay_ms.is_finite() {
        inputs.jitter_buffer_delay_ms.max(0.0)
    } else {
        0.0
    };
    let one_way_delay_ms = jitter_buffer + half_rtt + PACKETIZATION_MS;
    let burst_ratio = if inputs.burst_ratio.is_nan() {
        1.0
    } else {
        inputs.burst_ratio.max(1.0)
    };
    let r = r_factor(ppl_percent, burst_ratio, one_way_delay_ms, inputs.plc);
    Some(QualitySummary {
        r_factor: r,
        mos: mos_from_r(r),
        ppl_percent,
        burst_ratio,
        one_way_delay_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mos(ppl: f64, burst_r: f64, d: f64, plc: bool) -> f64 {
        mos_from_r(r_factor(ppl, burst_r, d, plc))
    }

    #[test]
    fn no_loss_no_delay_is_4_41() {
        assert_eq!(r_factor(0.0, 1.0, 0.0, true), 93.2);
        // 1 + 3.262 + 93.2·33.2·6.8·7e-6 = 4.40929
        assert!((mos(0.0, 1.0, 0.0, true) - 4.41).abs() < 0.005);
        assert!((mos(0.0, 1.0, 0.0, true) - 4.409_286).abs() < 1e-6);
    }

    #[test]
    fn one_percent_random_loss_with_plc_is_4_33() {
        // Ie,eff = 95·1/(1 + 25.1) = 3.63985; R = 89.56015; MOS = 4.32808.
        let r = r_factor(1.0, 1.0, 0.0, true);
        assert!((r - 89.560_153).abs() < 1e-5, "{r}");
        let m = mos_from_r(r);
        assert!((m - 4.328).abs() < 0.01, "{m}");
        assert!((m - 4.328_075).abs() < 1e-5, "{m}");
    }

    #[test]
    fn one_percent_loss_without_plc_is_much_worse() {
        // Ie,eff = 95/(1 + 4.3) = 17.9245; R = 75.2755; MOS = 3.83365.
        assert!((mos(1.0, 1.0, 0.0, false) - 3.833_651).abs() < 1e-5);
    }

    #[test]
    fn delay_impairment_and_its_knee() {
        // 150 ms, below the knee: Id = 3.6, R = 89.6, MOS = 4.32908.
        assert!((r_factor(0.0, 1.0, 150.0, true) - 89.6).abs() < 1e-9);
        assert!((mos(0.0, 1.0, 150.0, true) - 4.329_077).abs() < 1e-5);
        // 250 ms, past it: Id = 6 + 0.11·72.7 = 13.997, R = 79.203, MOS = 3.99352.
        assert!((r_factor(0.0, 1.0, 250.0, true) - 79.203).abs() < 1e-9);
        assert!((mos(0.0, 1.0, 250.0, true) - 3.993_521).abs() < 1e-5);
        // The slope steps from 0.024 to 0.134 per ms at 177.3 ms.
        let slope_below = r_factor(0.0, 1.0, 170.0, true) - r_factor(0.0, 1.0, 171.0, true);
        let slope_above = r_factor(0.0, 1.0, 190.0, true) - r_factor(0.0, 1.0, 191.0, true);
        assert!((slope_below - 0.024).abs() < 1e-9);
        assert!((slope_above - 0.134).abs() < 1e-9);
    }

    #[test]
    fn burstiness_costs_quality() {
        // 2 % loss, BurstR 2: Ie,eff = 190/(1 + 25.1) = 7.27969; R = 85.92031; MOS = 4.22671.
        assert!((mos(2.0, 2.0, 0.0, true) - 4.226_707).abs() < 1e-5);
        assert!(mos(2.0, 2.0, 0.0, true) < mos(2.0, 1.0, 0.0, true));
    }

    #[test]
    fn mos_ends() {
        assert_eq!(mos_from_r(0.0), 1.0);
        assert_eq!(mos_from_r(-20.0), 1.0);
        assert_eq!(mos_from_r(f64::NEG_INFINITY), 1.0);
        assert_eq!(mos_from_r(f64::NAN), 1.0);
        assert_eq!(mos_from_r(100.0), 4.5);
        assert_eq!(mos_from_r(130.0), 4.5);
        // The cubic's dip below 1 is held at 1.
        assert_eq!(mos_from_r(3.0), 1.0);
        assert!(mos_from_r(7.0) > 1.0);
    }

    #[test]
    fn bad_inputs_do_not_panic_and_stay_in_range() {
        let weird = [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -5.0,
            0.0,
            1e300,
            50.0,
        ];
        for &a in &weird {
            for &b in &weird {
                for &c in &weird {
                    for plc in [true, false] {
                        let r = r_factor(a, b, c, plc);
                        assert!((0.0..=93.2).contains(&r), "{a} {b} {c}: {r}");
                        let m = mos_from_r(r);
                        assert!((1.0..=4.5).contains(&m));
                    }
                }
            }
        }
        // NaN loss and delay count as none.
        assert_eq!(r_factor(f64::NAN, f64::NAN, f64::NAN, true), 93.2);
    }

    #[test]
    fn mos_is_monotonic_in_loss_burstiness_and_delay() {
        let mut rng = fastrand::Rng::with_seed(0x5eed_0004);
        for _ in 0..100_000 {
            let ppl = rng.f64() * 30.0;
            let burst = 1.0 + rng.f64() * 6.0;
            let d = rng.f64() * 600.0;
            let plc = rng.bool();
            let base = mos(ppl, burst, d, plc);
            assert!(mos(ppl + rng.f64() * 5.0, burst, d, plc) <= base);
            assert!(mos(ppl, burst + rng.f64(), d, plc) <= base);
            assert!(mos(ppl, burst, d + rng.f64() * 100.0, plc) <= base);
            assert!(mos(ppl, burst, d, false) <= mos(ppl, burst, d, true));
        }
    }

    #[test]
    fn summary_with_delay_by_hand() {
        // 1 % loss (8 lost + 2 late of 1000), random, PLC; jitter buffer 50 ms,
        // RTT 40 ms: d = 50 + 20 + 20 = 90 ms, Id = 2.16, Ie,eff = 3.63985,
        // R = 93.2 − 2.16 − 3.63985 = 87.40015, MOS = 4.27022.
        let summary = summarize(&QualityInputs {
            expected: 1000,
            lost: 8,
            late: 2,
            burst_ratio: 1.0,
            jitter_buffer_delay_ms: 50.0,
            rtt_ms: Some(40.0),
            plc: true,
        })
        .expect("audio was expected");
        assert!((summary.ppl_percent - 1.0).abs() < 1e-12);
        assert!((summary.one_way_delay_ms - 90.0).abs() < 1e-12);
        assert!((summary.r_factor - 87.400_153).abs() < 1e-5);
        assert!((summary.mos - 4.270_222).abs() < 1e-5);
    }

    #[test]
    fn summary_edge_cases() {
        let none = QualityInputs {
            expected: 0,
            lost: 0,
            late: 0,
            burst_ratio: 1.0,
            jitter_buffer_delay_ms: 0.0,
            rtt_ms: None,
            plc: true,
        };
        assert_eq!(summarize(&none), None);
        // No RTT: only jitter buffer and packetization count.
        let clean = summarize(&QualityInputs {
            expected: 10,
            ..none
        })
        .expect("expected > 0");
        assert_eq!(clean.one_way_delay_ms, 20.0);
        assert_eq!(clean.ppl_percent, 0.0);
        // More concealed than expected (duplicates, counting skew): capped at 100 %.
        let lost = QualityInputs {
            expected: 10,
            lost: u64::MAX,
            late: 5,
            rtt_ms: Some(f64::NAN),
            ..none
        };
        let worst = summarize(&lost).expect("expected > 0");
        assert_eq!(worst.ppl_percent, 100.0);
        assert!(worst.mos >= 1.0 && worst.mos < 2.0);
    }
}
