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
//! yesno,digits,keywords,text`; `-- --voices en-us,flite:slt`; `--
//! --espeak-only` where flite is not installed: `apt-get install flite`).
//!
//! The packaged model is always measured. `-- --model DIR` (repeatable;
//! or `DIALSTACK_ASR_ADAPTED_DIR`) measures a model folder laid out like
//! `DIALSTACK_ASR_MODEL_DIR` on the same audio in the same run, e.g. the
//! telephone-adapted one: `-- --model "$(scripts/asr-adapt.sh)"`; `--
//! --mllr FILE` the packaged model with an MLLR transform. None of the
//! voices here is in the adaptation corpus (`examples/asr_adapt.rs`), and
//! flite not at all: its rows measure a synthesizer the adaptation never
//! heard.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use media_processor::ai::asr::{Asr, AsrConfig, Grammar, Recognition};
use media_processor::ai::metrics::AiMetrics;
use media_processor::ai::tts::{Tts, TtsConfig, TtsRequest};

// The call's channel, shared with the adaptation corpus.
#[path = "common/channel.rs"]
mod channel;

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

/// A model under test.
struct Model {
    label: String,
    asr: Arc<Asr>,
}

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
    let values = |flag: &str| -> Vec<String> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .collect()
    };
    let mut voices: Vec<&'static str> = if quick {
        ESPEAK[..1].to_vec()
    } else {
        ESPEAK.to_vec()
    };
    if !espeak_only {
        voices.extend_from_slice(if quick { &FLITE[..1] } else { FLITE });
    }
    if let Some(only) = values("--voices").first() {
        let only: Vec<&str> = only.split(',').collect();
        voices.retain(|v| only.contains(v));
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
    let model = |label: String, cfg: AsrConfig| Model {
        label,
        asr: Arc::new(Asr::new(
            AsrConfig {
                max_concurrent: cores,
                max_queue: 100_000,
                tmp_dir: tmp.clone(),
                ..cfg
            },
            metrics.clone(),
        )),
    };
    let mut models = vec![model("packaged".into(), AsrConfig::default())];
    let mut dirs = values("--model");
    dirs.extend(std::env::var("DIALSTACK_ASR_ADAPTED_DIR").ok());
    for d in dirs.into_iter().filter(|d| !d.is_empty()) {
        let path = std::path::PathBuf::from(&d);
        assert!(
            path.join("en-us/mdef").is_file(),
            "{d}: not a model folder (no en-us/mdef)"
        );
        let name = path
            .file_name()
            .map_or(d.clone(), |n| n.to_string_lossy().into_owned());
        models.push(model(
            name,
            AsrConfig {
                model_dir: path,
                ..AsrConfig::default()
            },
        ));
    }
    for m in values("--mllr") {
        assert!(std::path::Path::new(&m).is_file(), "{m}: no such file");
        models.push(model(
            format!("packaged+mllr {m}"),
            AsrConfig {
                mllr: Some(m.clone().into()),
                ..AsrConfig::default()
            },
        ));
    }
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
        audio.push(channel::degrade(&pcm, c.noise, i as u64));
    }
    let mut set = tokio::task::JoinSet::new();
    for (m, model) in models.iter().enumerate() {
        for (i, (c, pcm)) in cases.iter().zip(&audio).enumerate() {
            let asr = model.asr.clone();
            let grammar = c.grammar.clone();
            let pcm = pcm.clone();
            set.spawn(async move {
                let r = match grammar {
                    Some(g) => asr.recognize(&pcm, &g).await,
                    None => asr.transcribe(&pcm).await,
                };
                (m, i, r.expect("recognition"))
            });
        }
    }
    let mut results: Vec<Vec<Option<Recognition>>> = vec![vec![None; cases.len()]; models.len()];
    while let Some(r) = set.join_next().await {
        let (m, i, r) = r.expect("task");
        results[m][i] = Some(r);
    }
    type Key<'a> = (&'a str, &'a str);
    let mut summary: BTreeMap<(&str, &str, &str, String), Tally> = BTreeMap::new();
    let mut by_noise: BTreeMap<(Key, String), Tally> = BTreeMap::new();
    let mut by_set: BTreeMap<Key, Tally> = BTreeMap::new();
    let mut by_voice: BTreeMap<(Key, &str), Tally> = BTreeMap::new();
    let mut by_rate: BTreeMap<(Key, u16), Tally> = BTreeMap::new();
    let mut misses: BTreeMap<Key, Vec<String>> = BTreeMap::new();
    for (model, results) in models.iter().zip(results) {
        let m = model.label.as_str();
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
            let family = if c.voice.starts_with("flite:") {
                "flite (unseen synthesizer)"
            } else {
                "espeak-ng test voices"
            };
            for (voices, noise) in [
                (family, label(c.noise)),
                (family, "all".into()),
                ("all", label(c.noise)),
                ("all", "all".into()),
            ] {
                summary
                    .entry((c.set, m, voices, noise))
                    .or_default()
                    .add(ok, errors, words, &r);
            }
            for t in [
                by_noise.entry(((c.set, m), label(c.noise))).or_default(),
                by_set.entry((c.set, m)).or_default(),
                by_voice.entry(((c.set, m), c.voice)).or_default(),
                by_rate.entry(((c.set, m), c.rate)).or_default(),
            ] {
                t.add(ok, errors, words, &r);
            }
            if !ok && c.grammar.is_some() {
                misses.entry((c.set, m)).or_default().push(format!(
                    "{} {} {}: \"{}\" heard \"{}\"",
                    c.voice,
                    c.rate,
                    label(c.noise),
                    c.text,
                    r.raw
                ));
            }
        }
    }
    println!(
        "\n{} utterances ({} voices x {} rates x {} noise levels) x {} models, {:.0} s\n",
        cases.len(),
        voices.len(),
        rates.len(),
        NOISE.len(),
        models.len(),
        started.elapsed().as_secs_f64()
    );
    let pct = |t: Option<&Tally>| {
        t.map_or("-".into(), |t| {
            format!("{:.1} %", 100.0 * t.right as f64 / t.total.max(1) as f64)
        })
    };
    println!("| set | model | voices | clean | 20 dB SNR | 10 dB SNR | overall | WER (digits: per digit) |");
    println!("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |");
    let rows: std::collections::BTreeSet<(&str, &str, &str)> =
        summary.keys().map(|k| (k.0, k.1, k.2)).collect();
    for (set, m, family) in rows {
        let get = |noise: &str| summary.get(&(set, m, family, noise.to_owned()));
        let all = get("all").expect("every row has a total");
        println!(
            "| {set} | {m} | {family} | {} | {} | {} | {} | {} |",
            pct(get("clean")),
            pct(get("20 dB SNR")),
            pct(get("10 dB SNR")),
            all.accuracy(),
            all.wer()
        );
    }
    println!("\n| set | model | noise | accuracy | word (digit) error rate | mean engine ms |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (((set, m), noise), t) in &by_noise {
        println!(
            "| {set} | {m} | {noise} | {} | {} | {} |",
            t.accuracy(),
            t.wer(),
            t.ms / t.total.max(1) as u64
        );
    }
    println!("\n| set | model | overall accuracy | WER | mean confidence right / wrong |");
    println!("| --- | --- | --- | --- | --- |");
    for ((set, m), t) in &by_set {
        let wrong = t.total - t.right;
        println!(
            "| {set} | {m} | {} | {} | {:.2} / {} |",
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
    println!("\n| set | model | voice | accuracy | WER |");
    println!("| --- | --- | --- | --- | --- |");
    for (((set, m), voice), t) in &by_voice {
        println!("| {set} | {m} | {voice} | {} | {} |", t.accuracy(), t.wer());
    }
    println!("\n| set | model | rate (wpm) | accuracy | WER |");
    println!("| --- | --- | --- | --- | --- |");
    for (((set, m), rate), t) in &by_rate {
        println!("| {set} | {m} | {rate} | {} | {} |", t.accuracy(), t.wer());
    }
    for ((set, m), list) in &misses {
        println!("\n{set} misses, {m} ({}):", list.len());
        for miss in list.iter().take(25) {
            println!("- {miss}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
