use super::*;
use crate::dtmf::testsig::{
    add_noise, power, silence, sine, ulaw, vowel, white_noise, word, VOWELS,
};

/// "hello": two syllables, 500 ms.
fn hello() -> Vec<i16> {
    let mut pcm = vowel(150.0, 135.0, &VOWELS[3], 200, 9_000.0);
    pcm.extend(silence(30));
    pcm.extend(vowel(135.0, 110.0, &VOWELS[4], 270, 9_000.0));
    pcm
}

/// Runs a detector with the default rules over `pcm` (then silence, up to
/// 10 s) in frames of `frame` samples.
fn run_frames(pcm: &[i16], frame: usize) -> AmdDecision {
    let mut d = AmdDetector::new(AmdConfig::default());
    let mut padded = pcm.to_vec();
    padded.resize(padded.len().max(80_000), 0);
    for f in padded.chunks(frame) {
        if let Some(decision) = d.push(f) {
            return decision;
        }
    }
    d.finish()
}

fn run(pcm: &[i16]) -> AmdDecision {
    run_frames(pcm, 160)
}

fn concat(parts: &[Vec<i16>]) -> Vec<i16> {
    parts.concat()
}

/// A machine-like greeting: 1-3 syllable words with 100-200 ms pauses,
/// `ms` long.
fn monologue(rng: &mut fastrand::Rng, ms: u32) -> Vec<i16> {
    let mut pcm = Vec::new();
    while pcm.len() < ms as usize * 8 {
        let syllables = rng.usize(1..=3);
        pcm.extend(word(rng, syllables, 120.0, 8_000.0));
        pcm.extend(silence(rng.u32(100..=200)));
    }
    pcm
}

#[test]
fn verdict_names() {
    assert_eq!(AmdVerdict::Human.as_str(), "human");
    assert_eq!(AmdVerdict::Machine.as_str(), "machine");
    assert_eq!(AmdVerdict::Unsure.as_str(), "unsure");
}

#[test]
fn human_says_hello_and_waits() {
    let d = run(&concat(&[silence(300), hello(), silence(3_000)]));
    assert_eq!(d.verdict, AmdVerdict::Human, "{d:?}");
    assert_eq!(d.reason, "silence_after_greeting");
    // End of "hello" at 800 ms, plus 800 ms of silence.
    assert!((1_560..=1_660).contains(&d.at_ms), "{d:?}");
    assert_eq!(d.features.words, 1);
    assert!(
        (260..=340).contains(&d.features.initial_silence_ms),
        "{d:?}"
    );
    assert!((420..=520).contains(&d.features.greeting_ms), "{d:?}");
    assert!(!d.features.beep);
}

#[test]
fn human_says_hello_twice() {
    let d = run(&concat(&[
        silence(400),
        hello(),
        silence(1_000),
        hello(),
        silence(2_000),
    ]));
    assert_eq!(d.verdict, AmdVerdict::Human, "{d:?}");
    assert!((1_660..=1_760).contains(&d.at_ms), "{d:?}");
}

#[test]
fn human_in_noise_and_through_ulaw() {
    for seed in 0..10 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let speech = hello();
        let reference = power(&speech);
        let mut pcm = concat(&[silence(300 + 50 * seed as u32), speech, silence(3_000)]);
        add_noise(&mut pcm, reference, 20.0, &mut rng);
        let d = run(&ulaw(&pcm));
        assert_eq!(d.verdict, AmdVerdict::Human, "seed {seed}: {d:?}");
        assert!(d.features.noise_floor > 0);
    }
}

#[test]
fn machine_talks_on() {
    for seed in 0..20 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let pcm = concat(&[silence(400), monologue(&mut rng, 4_000)]);
        let d = run(&pcm);
        assert_eq!(d.verdict, AmdVerdict::Machine, "seed {seed}: {d:?}");
        assert!(["max_words", "long_greeting"].contains(&d.reason), "{d:?}");
        assert!(d.at_ms < 3_500, "{d:?}");
    }
}

#[test]
fn one_long_utterance_is_a_long_greeting() {
    let mut rng = fastrand::Rng::with_seed(5);
    // Syllables joined by at most 40 ms: a single word that does not stop.
    let pcm = concat(&[silence(400), word(&mut rng, 20, 130.0, 8_000.0)]);
    let d = run(&pcm);
    assert_eq!(
        (d.verdict, d.reason),
        (AmdVerdict::Machine, "long_greeting"),
        "{d:?}"
    );
    // 400 ms of silence and 2 s of greeting.
    assert!((2_400..=2_460).contains(&d.at_ms), "{d:?}");
    assert!(d.features.longest_word_ms > 2_000);
}

#[test]
fn long_initial_silence_is_a_machine() {
    let d = run(&concat(&[silence(3_000), hello()]));
    assert_eq!(
        (d.verdict, d.reason, d.at_ms),
        (AmdVerdict::Machine, "initial_silence", 2_500),
        "{d:?}"
    );
    assert_eq!(d.features.initial_silence_ms, 2_500);
    assert_eq!(d.features.words, 0);
}

/// Steady noise is silence once the floor has adapted: a line with only
/// noise ends as Machine by the initial-silence rule.
#[test]
fn noise_only_is_initial_silence() {
    for (seed, rms) in [(1, 30.0), (2, 200.0), (3, 1_000.0), (4, 5_000.0)] {
        let mut rng = fastrand::Rng::with_seed(seed);
        let noise = white_noise(&mut rng, 8_000 * 5, rms);
        let d = run(&ulaw(&noise));
        assert_eq!(
            (d.verdict, d.reason, d.at_ms),
            (AmdVerdict::Machine, "initial_silence", 2_500),
            "rms {rms}: {d:?}"
        );
        assert!(
            u32::from(d.features.noise_floor) <= (rms * 1.1) as u32,
            "{d:?}"
        );
    }
}

#[test]
fn beep_before_a_decision_is_a_machine() {
    let d = run(&concat(&[
        silence(500),
        sine(1_000.0, 400, 6_000.0),
        silence(1_000),
    ]));
    assert_eq!(
        (d.verdict, d.reason),
        (AmdVerdict::Machine, "beep"),
        "{d:?}"
    );
    assert!(d.features.beep);
    assert!((880..=940).contains(&d.at_ms), "{d:?}");
}

#[test]
fn no_rule_in_time_is_unsure() {
    let pcm = concat(&[
        silence(2_400),
        vowel(120.0, 120.0, &VOWELS[0], 300, 8_000.0),
        silence(600),
        vowel(120.0, 120.0, &VOWELS[1], 400, 8_000.0),
    ]);
    let d = run(&pcm);
    assert_eq!(
        (d.verdict, d.reason, d.at_ms),
        (AmdVerdict::Unsure, "max_analysis_time", 3_500),
        "{d:?}"
    );
    assert_eq!(d.features.words, 2);
}

#[test]
fn decided_once_and_finish() {
    let mut d = AmdDetector::new(AmdConfig::default());
    let pcm = concat(&[silence(300), hello(), silence(3_000)]);
    let mut decisions: Vec<AmdDecision> = pcm.chunks(160).filter_map(|f| d.push(f)).collect();
    assert_eq!(decisions.len(), 1);
    let first = decisions.remove(0);
    assert_eq!(d.finish(), first);
    assert_eq!(d.push(&[1_000; 160]), None);

    // Finished early: Unsure, and nothing after.
    let mut d = AmdDetector::new(AmdConfig::default());
    for f in concat(&[silence(300), hello()]).chunks(160) {
        assert_eq!(d.push(f), None);
    }
    let early = d.finish();
    assert_eq!(
        (early.verdict, early.reason),
        (AmdVerdict::Unsure, "finished")
    );
    assert!((800..=820).contains(&early.at_ms), "{early:?}");
    assert_eq!(early.features.words, 1);
    assert_eq!(d.push(&silence(20)), None);
    assert_eq!(d.finish(), early);
    // Nothing heard at all.
    let empty = AmdDetector::new(AmdConfig::default()).finish();
    assert_eq!((empty.verdict, empty.at_ms), (AmdVerdict::Unsure, 0));
}

#[test]
fn frame_length_does_not_change_the_verdict() {
    let pcm = concat(&[silence(300), hello(), silence(3_000)]);
    let whole = run(&pcm);
    for frame in [80, 240, 320] {
        let d = run_frames(&pcm, frame);
        assert_eq!(d.verdict, whole.verdict, "{frame}: {d:?}");
        assert!(d.at_ms.abs_diff(whole.at_ms) <= 60, "{frame}: {d:?}");
    }
}

#[test]
fn threshold_follows_the_noise_floor() {
    let mut d = AmdDetector::new(AmdConfig::default());
    assert_eq!(d.silence_threshold(), 160);
    let mut rng = fastrand::Rng::with_seed(8);
    for f in white_noise(&mut rng, 8_000, 1_000.0).chunks(160) {
        d.push(f);
    }
    let t = d.silence_threshold();
    // 3.5 dB above the 10th percentile of the frame levels.
    assert!((1_300..=1_550).contains(&t), "{t}");
    // The configured threshold is a minimum.
    let cfg = AmdConfig {
        silence_threshold: 4_000,
        ..AmdConfig::default()
    };
    let mut d = AmdDetector::new(cfg);
    d.push(&white_noise(&mut rng, 160, 1_000.0));
    assert_eq!(d.silence_threshold(), 4_000);
}

#[test]
fn arbitrary_input_never_panics() {
    for seed in 0..300 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let cfg = if seed % 3 == 0 {
            AmdConfig {
                initial_silence_ms: rng.u32(..),
                greeting_ms: rng.u32(..),
                after_greeting_silence_ms: rng.u32(..),
                total_analysis_ms: rng.u32(..),
                min_word_ms: rng.u32(..),
                between_words_silence_ms: rng.u32(..),
                max_words: rng.u32(..),
                silence_threshold: rng.u16(..),
            }
        } else {
            AmdConfig::default()
        };
        let mut d = AmdDetector::new(cfg);
        let mut decisions = 0;
        for _ in 0..rng.usize(0..300) {
            let len = rng.usize(0..400);
            let frame: Vec<i16> = match rng.u8(0..3) {
                0 => (0..len).map(|_| rng.i16(..)).collect(),
                1 => vec![if rng.bool() { i16::MIN } else { i16::MAX }; len],
                _ => vec![0; len],
            };
            decisions += usize::from(d.push(&frame).is_some());
        }
        assert!(decisions <= 1);
        let _ = d.finish();
    }
    let mut beep = BeepDetector::new(0);
    let mut waiter = SilenceWaiter::new(0, 0);
    let mut rng = fastrand::Rng::with_seed(1);
    for _ in 0..2_000 {
        let frame: Vec<i16> = (0..rng.usize(0..400)).map(|_| rng.i16(..)).collect();
        beep.push(&frame);
        waiter.push(&frame);
    }
}
