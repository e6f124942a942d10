use super::*;
use crate::dtmf::testsig::{
    add_noise, chirp, power, sample, silence, sine, ulaw, vowel, white_noise, word, VOWELS,
};
use crate::dtmf::{position, tone, tones};

const ALL: &str = "0123456789*#ABCD";

/// Every key the detector reports for `pcm` pushed in slices of `chunk`.
fn detect(pcm: &[i16], chunk: usize) -> String {
    let mut d = DtmfDetector::new();
    let mut out = String::new();
    for c in pcm.chunks(chunk) {
        out.extend(d.push(c));
    }
    out.extend(std::iter::from_fn(|| d.next_digit()));
    out
}

/// A row and a column tone with their own peak amplitudes and an offset
/// of both frequencies (relative, e.g. 0.015 for +1.5 %).
fn dual(key: char, ms: u32, row_amp: f64, col_amp: f64, offset: f64) -> Vec<i16> {
    let (r, c) = position(key).expect("a key");
    let row = sine(ROW_HZ[r] * (1.0 + offset), ms, row_amp);
    let col = sine(COL_HZ[c] * (1.0 + offset), ms, col_amp);
    row.iter()
        .zip(&col)
        .map(|(&a, &b)| a.saturating_add(b))
        .collect()
}

fn with_silence(mut pcm: Vec<i16>, before_ms: u32, after_ms: u32) -> Vec<i16> {
    let mut out = silence(before_ms);
    out.append(&mut pcm);
    out.extend(silence(after_ms));
    out
}

#[test]
fn every_key_at_every_level() {
    for key in ALL.chars() {
        for amp in [1_000, 2_000, 4_000, 8_000, 12_000] {
            let pcm = with_silence(tone(key, 60, amp), 30, 60);
            assert_eq!(detect(&pcm, 160), key.to_string(), "{key} at {amp}");
        }
    }
    assert_eq!(detect(&with_silence(tone('b', 60, 3_000), 0, 0), 160), "B");
}

#[test]
fn sequence_50_on_50_off_in_order_exactly_once() {
    let digits = "1234567890*#ABCD";
    for amp in [1_000, 3_000, 12_000] {
        for lead in [0, 3, 7, 13] {
            let pcm = with_silence(tones(digits, 50, 50, amp), lead, 0);
            assert_eq!(detect(&pcm, 160), digits, "amp {amp}, lead {lead} ms");
        }
    }
}

#[test]
fn survives_ulaw() {
    let digits = "1234567890*#";
    for amp in [1_000, 6_000, 12_000] {
        let pcm = ulaw(&tones(digits, 50, 50, amp));
        assert_eq!(detect(&pcm, 160), digits, "amp {amp}");
    }
}

#[test]
fn survives_white_noise_at_15_db_snr() {
    let digits = "1234567890*#ABCD";
    for seed in 0..20 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let amp = 1_000 + 500 * seed as i16;
        let reference = power(&tone('5', 1_000, amp));
        let mut pcm = tones(digits, 50, 50, amp);
        add_noise(&mut pcm, reference, 15.0, &mut rng);
        assert_eq!(detect(&ulaw(&pcm), 160), digits, "seed {seed}");
    }
}

#[test]
fn twist_limits() {
    // Column 3.5 dB above the row, and 7.5 dB below it: accepted.
    for (row_db, col_db) in [(0.0, 3.5), (0.0, -7.5)] {
        for key in ALL.chars() {
            let row = 3_000.0 * 10f64.powf(row_db / 20.0);
            let col = 3_000.0 * 10f64.powf(col_db / 20.0);
            let pcm = with_silence(dual(key, 60, row, col, 0.0), 10, 40);
            assert_eq!(detect(&pcm, 160), key.to_string(), "{key} {col_db} dB");
        }
    }
    // 6 dB normal twist and 10 dB reverse twist: rejected.
    for col_db in [6.0, -10.0] {
        for key in ALL.chars() {
            let col = 3_000.0 * 10f64.powf(col_db / 20.0);
            let pcm = with_silence(dual(key, 60, 3_000.0, col, 0.0), 10, 40);
            assert_eq!(detect(&pcm, 160), "", "{key} {col_db} dB");
        }
    }
}

#[test]
fn frequency_tolerance_of_one_and_a_half_percent() {
    for offset in [-0.015, 0.015] {
        for key in ALL.chars() {
            let pcm = with_silence(dual(key, 60, 4_000.0, 4_000.0, offset), 10, 40);
            assert_eq!(detect(&pcm, 160), key.to_string(), "{key} {offset}");
        }
    }
}

#[test]
fn minimum_level() {
    // 400 peak per tone is −32 dBm0 for the pair: below the threshold.
    for key in ALL.chars() {
        assert_eq!(detect(&tone(key, 100, 400), 160), "", "{key}");
        assert_eq!(detect(&tone(key, 100, 700), 160), key.to_string());
    }
}

#[test]
fn duration_limits_at_every_alignment() {
    // Leads in samples: every alignment with the 10 ms analysis grid.
    for lead in (0..=80).step_by(5) {
        for key in ['1', '0', 'D'] {
            let mut short = vec![0; lead];
            short.extend(tone(key, 20, 6_000));
            short.extend(silence(40));
            assert_eq!(detect(&short, 160), "", "20 ms {key} at {lead}");
            let mut short = vec![0; lead];
            short.extend(tone(key, 23, 6_000));
            short.extend(silence(40));
            assert_eq!(detect(&short, 160), "", "23 ms {key} at {lead}");
            let mut long = vec![0; lead];
            long.extend(tone(key, 40, 6_000));
            long.extend(silence(40));
            assert_eq!(detect(&long, 160), key.to_string(), "40 ms {key} at {lead}");
        }
    }
}

#[test]
fn pauses_and_drop_outs() {
    for lead in [0, 3, 5, 8] {
        // A 40 ms pause separates two presses of the same key.
        let mut pcm = silence(lead);
        pcm.extend(tone('5', 60, 5_000));
        pcm.extend(silence(40));
        pcm.extend(tone('5', 60, 5_000));
        assert_eq!(detect(&pcm, 160), "55", "lead {lead}");
        // A 10 ms drop-out does not.
        let mut pcm = silence(lead);
        pcm.extend(tone('5', 60, 5_000));
        pcm.extend(silence(10));
        pcm.extend(tone('5', 60, 5_000));
        assert_eq!(detect(&pcm, 160), "5", "lead {lead}");
        // A new key without any pause is reported at once.
        let mut pcm = silence(lead);
        pcm.extend(tone('5', 60, 5_000));
        pcm.extend(tone('6', 60, 5_000));
        assert_eq!(detect(&pcm, 160), "56", "lead {lead}");
    }
    // A long press is one key.
    assert_eq!(detect(&tone('#', 2_000, 5_000), 160), "#");
}

#[test]
fn slicing_does_not_matter() {
    let mut rng = fastrand::Rng::with_seed(7);
    let reference = power(&tone('1', 1_000, 3_000));
    let mut pcm = tones("159D*0#3", 45, 40, 3_000);
    add_noise(&mut pcm, reference, 20.0, &mut rng);
    let whole = detect(&pcm, 160);
    assert_eq!(whole, "159D*0#3");
    assert_eq!(detect(&pcm, 1), whole);
    assert_eq!(detect(&pcm, 7), whole);
    assert_eq!(detect(&pcm, 80), whole);
    assert_eq!(detect(&pcm, 1_000), whole);
    assert_eq!(detect(&pcm, pcm.len()), whole);
    // Random slices.
    let mut d = DtmfDetector::new();
    let mut out = String::new();
    let mut rest = &pcm[..];
    while !rest.is_empty() {
        let n = rng.usize(0..=400).min(rest.len());
        out.extend(d.push(&rest[..n]));
        rest = &rest[n..];
    }
    out.extend(std::iter::from_fn(|| d.next_digit()));
    assert_eq!(out, whole);
}

#[test]
fn one_long_slice_queues_the_keys() {
    let mut d = DtmfDetector::default();
    assert_eq!(d.push(&tones("123", 60, 60, 4_000)), Some('1'));
    assert_eq!(d.next_digit(), Some('2'));
    // The queue also drains through later pushes, in order.
    assert_eq!(d.push(&silence(20)), Some('3'));
    assert_eq!(d.next_digit(), None);
    assert_eq!(d.push(&[]), None);
}

#[test]
fn silence_and_noise_are_not_keys() {
    assert_eq!(detect(&silence(5_000), 160), "");
    let mut rng = fastrand::Rng::with_seed(1);
    for rms in [30.0, 300.0, 3_000.0, 12_000.0] {
        let noise = white_noise(&mut rng, 8_000 * 5, rms);
        assert_eq!(detect(&noise, 160), "", "rms {rms}");
        assert_eq!(detect(&ulaw(&noise), 160), "", "rms {rms}");
    }
}

#[test]
fn single_tones_and_sweeps_are_not_keys() {
    for f in ROW_HZ
        .iter()
        .chain(&COL_HZ)
        .chain(&[350.0, 440.0, 1_000.0, 2_100.0])
    {
        assert_eq!(detect(&sine(*f, 1_000, 10_000.0), 160), "", "{f} Hz");
    }
    // Dial tone (350 + 440 Hz) and ring-back (440 + 480 Hz).
    for (a, b) in [(350.0, 440.0), (440.0, 480.0), (480.0, 620.0)] {
        let pcm: Vec<i16> = sine(a, 1_000, 6_000.0)
            .iter()
            .zip(sine(b, 1_000, 6_000.0))
            .map(|(&x, y)| x.saturating_add(y))
            .collect();
        assert_eq!(detect(&pcm, 160), "", "{a}+{b} Hz");
    }
    for (f0, f1, ms) in [
        (300.0, 3_400.0, 2_000),
        (3_400.0, 300.0, 2_000),
        (600.0, 1_700.0, 500),
        (600.0, 1_700.0, 5_000),
    ] {
        assert_eq!(detect(&chirp(f0, f1, ms, 10_000.0), 160), "", "{f0}-{f1}");
    }
}

#[test]
fn speech_like_audio_is_not_keys() {
    // The steady 120 Hz harmonic series of every vowel, 1 s each.
    let mut pcm = Vec::new();
    for formants in VOWELS {
        pcm.extend(vowel(120.0, 120.0, &formants, 1_000, 12_000.0));
    }
    // Words from voices between 85 and 260 Hz, about 30 s in all.
    let mut rng = fastrand::Rng::with_seed(42);
    while pcm.len() < 8_000 * 30 {
        let f0 = 85.0 + 175.0 * rng.f64();
        let syllables = rng.usize(1..=4);
        let amp = 2_000.0 + 12_000.0 * rng.f64();
        pcm.extend(word(&mut rng, syllables, f0, amp));
        pcm.extend(silence(rng.u32(20..=300)));
    }
    assert_eq!(detect(&pcm, 160), "");
    assert_eq!(detect(&ulaw(&pcm), 160), "");
}

#[test]
fn arbitrary_input_never_panics() {
    for seed in 0..200 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut d = DtmfDetector::new();
        for _ in 0..50 {
            let len = rng.usize(0..500);
            let pcm: Vec<i16> = match rng.u8(0..4) {
                0 => (0..len).map(|_| rng.i16(..)).collect(),
                1 => (0..len)
                    .map(|_| if rng.bool() { i16::MAX } else { i16::MIN })
                    .collect(),
                2 => (0..len).map(|_| sample(rng.f64() * 4.0 - 2.0)).collect(),
                _ => tone(
                    ALL.chars().nth(rng.usize(..16)).unwrap_or('1'),
                    100,
                    i16::MAX,
                ),
            };
            let _ = d.push(&pcm);
            while d.next_digit().is_some() {}
        }
    }
}
