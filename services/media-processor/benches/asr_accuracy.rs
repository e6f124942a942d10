//! Speech recognition accuracy on a corpus synthesised here: espeak-ng
//! voices (formant synthesis, robotic) and flite voices (CMU recordings,
//! closer to natural speech), three speaking rates, white noise at several
//! signal-to-noise ratios, a
//! G.711 µ-law round trip (what a caller's audio goes through), then the
//! recognizer as calls use it: yes/no, digit strings and a keyword menu
//! with grammars, and short sentences transcribed with the language model
//! (word error rate). Prints markdown tables.
//!
//! Usage: `cargo bench -p media-processor --bench asr_accuracy`
//! (`-- --quick`: one voice of each engine, one rate; `-- --sets
//! yesno,digits,keywords,text`; `-- --espeak-only` where flite is not
//! installed: `apt-get install flite`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use dialstack_media::g711;
use media_processor::ai::asr::{Asr, AsrConfig, Grammar, Recognition};
use media_processor::ai::metrics::AiMetrics;
use media_processor::ai::tts::{Tts, TtsConfig, TtsRequest};

/// espeak-ng voices (`espeak-ng --voices=en`).
const ESPEAK: &[&str] = &["en-us", "en", "en+f3", "en+m3", "en-gb-x-rp"];
/// flite voices (`flite -lv`), `flite:` marks them.
const FLITE: &[&str] = &["flite:slt", "flite:rms", "flite:awb", "flite:kal16"];
const RATES: &[u16] = &[130, 170, 210];
/// Signal-to-noise ratios (dB); `None` is clean.
const NOISE: &[Option<f64>] = &[None, Some(20.0), Some(10.0)];
const YES_NO: &[(&str, &str)] = &[
    ("yes", "yes"),
    ("no", "no"),
    ("yeah", "yes"),
    ("nope", "no"),
];
const KEYWORDS: &[&str] = &["sales", "support", "billing", "cancel"];
const DIGIT_WORDS: &[&str] = &[
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];
/// Digit strings per voice, rate and noise level.
const DIGIT_STRINGS: usize = 4;
const SENTENCES: &[&str] = &[
    "i would like to speak to someone about my bill",
    "please call me back tomorrow morning",
    "i am not interested thank you",
    "can you send me more information by email",
    "my account number is on the letter",
    "i already paid last week",
    "what time does the office open",
    "please remove me from your list",
    "the delivery was late again",
    "yes i can talk now",
];

/// One utterance to recognize.
struct Case {
    set: &'static str,
    voice: &'static str,
    rate: u16,
    noise: Option<f64>,
    text: String,
    expected: String,
    grammar: Option<Grammar>,
}

fn label(noise: Option<f64>) -> String {
    noise.map_or("clean".into(), |db| format!("{db:.0} dB SNR"))
}

/// White noise at `snr` dB under the speech (its RMS over frames louder
/// than -40 dBFS), seeded; then µ-law and back.
fn degrade(pcm: &[i16], snr: Option<f64>, seed: u64) -> Vec<i16> {
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
            // Sum of uniforms: close enough to Gaussian, RMS 1.
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

/// `text` said by a flite voice, at 8 kHz; `rate` (words a minute, 170
/// is flite's own pace) becomes its duration stretch.
fn flite(voice: &str, rate: u16, text: &str, dir: &std::path::Path) -> Vec<i16> {
    let out = dir.join(format!("flite-{}.wav", fastrand::u64(..)));
    let ok = std::process::Command::new("flite")
        .args(["-voice", voice, "--setf"])
        .arg(format!("duration_stretch={:.3}", 170.0 / f64::from(rate)))
        .arg("-t")
        .arg(text)
        .arg("-o")
        .arg(&out)
        .status()
        .expect("flite installed (apt-get install flite), or pass --espeak-only");
    assert!(ok.success(), "flite {voice} {text}");
    let bytes = std::fs::read(&out).expect("flite output");
    let _ = std::fs::remove_file(&out);
    media_processor::ai::audio::decode(&bytes).expect("flite WAV")
}

fn word_errors(reference: &str, hypothesis: &str) -> (usize, usize) {
    let r: Vec<&str> = reference.split_whitespace().collect();
    let h: Vec<&str> = hypothesis.split_whitespace().collect();
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            let sub = prev[j] + usize::from(rw != hw);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    (prev[h.len()], r.len())
}

#[derive(Default)]
struct Tally {
    right: usize,
    total: usize,
    errors: usize,
    words: usize,
    ms: u64,
    confidence_right: f64,
    confidence_wrong: f64,
}

impl Tally {
    fn add(&mut self, ok: bool, errors: usize, words: usize, r: &Recognition) {
        self.total += 1;
        self.errors += errors;
        self.words += words;
        self.ms += u64::from(r.elapsed_ms);
        if ok {
            self.right += 1;
            self.confidence_right += f64::from(r.confidence);
        } else {
            self.confidence_wrong += f64::from(r.confidence);
        }
    }

    fn accuracy(&self) -> String {
        format!(
            "{:.1} % ({}/{})",
            100.0 * self.right as f64 / self.total.max(1) as f64,
            self.right,
            self.total
        )
    }

    fn wer(&self) -> String {
        format!(
            "{:.1} % ({}/{})",
            100.0 * self.errors as f64 / self.words.max(1) as f64,
            self.errors,
            self.words
        )
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let sets: Vec<String> = args
        .iter()
        .position(|a| a == "--sets")
        .and_then(|i| args.get(i + 1))
        .map_or_else(
            || {
                vec![
                    "yesno".into(),
                    "digits".into(),
                    "keywords".into(),
                    "text".into(),
                ]
            },
            |s| s.split(',').map(str::to_owned).collect(),
        );
    let espeak_only = args.iter().any(|a| a == "--espeak-only");
    let mut voices: Vec<&'static str> = if quick {
        ESPEAK[..1].to_vec()
    } else {
        ESPEAK.to_vec()
    };
    if !espeak_only {
        voices.extend_from_slice(if quick { &FLITE[..1] } else { FLITE });
    }
    let rates = if quick { &RATES[1..2] } else { RATES };
    let dir = std::env::temp_dir().join(format!("dialstack-asr-bench-{}", std::process::id()));
    let metrics = AiMetrics::new().expect("metrics");
    let tts = Tts::new(
        TtsConfig {
            cache_dir: dir.join("cache"),
            ..TtsConfig::default()
        },
        metrics.clone(),
    );
    tts.check().expect("espeak-ng installed");
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).expect("temporary folder");
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let asr = Arc::new(Asr::new(
        AsrConfig {
            max_concurrent: cores,
            max_queue: 100_000,
            tmp_dir: tmp,
            ..AsrConfig::default()
        },
        metrics,
    ));
    let mut rng = fastrand::Rng::with_seed(20_26);
    let mut cases = Vec::new();
    let has = |s: &str| sets.iter().any(|x| x == s);
    for &voice in &voices {
        for &rate in rates {
            for &noise in NOISE {
                if has("yesno") {
                    for (said, meant) in YES_NO {
                        cases.push(Case {
                            set: "yes/no",
                            voice,
                            rate,
                            noise,
                            text: (*said).into(),
                            expected: (*meant).into(),
                            grammar: Some(Grammar::YesNo),
                        });
                    }
                }
                if has("digits") {
                    for _ in 0..DIGIT_STRINGS {
                        let n = rng.usize(1..=4);
                        let digits: Vec<usize> = (0..n).map(|_| rng.usize(0..10)).collect();
                        cases.push(Case {
                            set: "digits",
                            voice,
                            rate,
                            noise,
                            text: digits
                                .iter()
                                .map(|&d| DIGIT_WORDS[d])
                                .collect::<Vec<_>>()
                                .join(" "),
                            expected: digits.iter().map(|d| d.to_string()).collect(),
                            grammar: Some(Grammar::Digits { max: 4 }),
                        });
                    }
                }
                if has("keywords") {
                    for word in KEYWORDS {
                        cases.push(Case {
                            set: "keywords",
                            voice,
                            rate,
                            noise,
                            text: (*word).into(),
                            expected: (*word).into(),
                            grammar: Some(Grammar::Keywords(
                                KEYWORDS.iter().map(|w| (*w).to_owned()).collect(),
                            )),
                        });
                    }
                }
                // Transcripts are slow: one rate, two noise levels.
                if has("text") && rate == 170 && noise != Some(10.0) {
                    for s in SENTENCES {
                        cases.push(Case {
                            set: "free text (WER)",
                            voice,
                            rate,
                            noise,
                            text: (*s).into(),
                            expected: (*s).into(),
                            grammar: None,
                        });
                    }
                }
            }
        }
    }
    let started = Instant::now();
    let mut audio = Vec::with_capacity(cases.len());
    for (i, c) in cases.iter().enumerate() {
        let pcm = match c.voice.strip_prefix("flite:") {
            Some(voice) => flite(voice, c.rate, &c.text, &dir),
            None => tts
                .render(&TtsRequest {
                    text: c.text.clone(),
                    voice: c.voice.into(),
                    rate_wpm: c.rate,
                })
                .await
                .unwrap_or_else(|e| panic!("{} {}: {e}", c.voice, c.text))
                .pcm
                .to_vec(),
        };
        audio.push(degrade(&pcm, c.noise, i as u64));
    }
    let mut set = tokio::task::JoinSet::new();
    for (i, (c, pcm)) in cases.iter().zip(audio).enumerate() {
        let asr = asr.clone();
        let grammar = c.grammar.clone();
        set.spawn(async move {
            let r = match grammar {
                Some(g) => asr.recognize(&pcm, &g).await,
                None => asr.transcribe(&pcm).await,
            };
            (i, r.expect("recognition"))
        });
    }
    let mut results: Vec<Option<Recognition>> = vec![None; cases.len()];
    while let Some(r) = set.join_next().await {
        let (i, r) = r.expect("task");
        results[i] = Some(r);
    }
    let mut by_noise: BTreeMap<(&str, String), Tally> = BTreeMap::new();
    let mut by_set: BTreeMap<&str, Tally> = BTreeMap::new();
    let mut by_voice: BTreeMap<(&str, &str), Tally> = BTreeMap::new();
    let mut by_rate: BTreeMap<(&str, u16), Tally> = BTreeMap::new();
    let mut misses: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (c, r) in cases.iter().zip(results) {
        let r = r.expect("every case ran");
        // Digit strings count errors per digit.
        let spaced = |t: &str| t.chars().map(String::from).collect::<Vec<_>>().join(" ");
        let (errors, words) = if c.set == "digits" {
            word_errors(&spaced(&c.expected), &spaced(&r.text))
        } else {
            word_errors(&c.expected, &r.text)
        };
        let ok = r.text == c.expected;
        for t in [
            by_noise.entry((c.set, label(c.noise))).or_default(),
            by_set.entry(c.set).or_default(),
            by_voice.entry((c.set, c.voice)).or_default(),
            by_rate.entry((c.set, c.rate)).or_default(),
        ] {
            t.add(ok, errors, words, &r);
        }
        if !ok && c.grammar.is_some() {
            misses.entry(c.set).or_default().push(format!(
                "{} {} {}: \"{}\" heard \"{}\"",
                c.voice,
                c.rate,
                label(c.noise),
                c.text,
                r.raw
            ));
        }
    }
    println!(
        "\n{} utterances ({} voices x {} rates x {} noise levels), {:.0} s\n",
        cases.len(),
        voices.len(),
        rates.len(),
        NOISE.len(),
        started.elapsed().as_secs_f64()
    );
    println!("| set | noise | accuracy | word (digit) error rate | mean engine ms |");
    println!("| --- | --- | --- | --- | --- |");
    for ((set, noise), t) in &by_noise {
        println!(
            "| {set} | {noise} | {} | {} | {} |",
            t.accuracy(),
            t.wer(),
            t.ms / t.total.max(1) as u64
        );
    }
    println!("\n| set | overall accuracy | WER | mean confidence right / wrong |");
    println!("| --- | --- | --- | --- |");
    for (set, t) in &by_set {
        let wrong = t.total - t.right;
        println!(
            "| {set} | {} | {} | {:.2} / {} |",
            t.accuracy(),
            t.wer(),
            t.confidence_right / t.right.max(1) as f64,
            if wrong == 0 {
                "-".into()
            } else {
                format!("{:.2}", t.confidence_wrong / wrong as f64)
            }
        );
    }
    println!("\n| set | voice | accuracy | WER |");
    println!("| --- | --- | --- | --- |");
    for ((set, voice), t) in &by_voice {
        println!("| {set} | {voice} | {} | {} |", t.accuracy(), t.wer());
    }
    println!("\n| set | rate (wpm) | accuracy | WER |");
    println!("| --- | --- | --- | --- |");
    for ((set, rate), t) in &by_rate {
        println!("| {set} | {rate} | {} | {} |", t.accuracy(), t.wer());
    }
    for (set, list) in &misses {
        println!("\n{set} misses ({}):", list.len());
        for m in list.iter().take(25) {
            println!("- {m}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
