//! Accuracy of the answering-machine detector with its default rules, on a
//! labelled corpus synthesised with `espeak-ng`:
//!
//! - humans: a short greeting ("hello?", "yes hello", "hello, this is
//!   Mark", ...) after 0.2-0.8 s of silence, then silence, or a second
//!   "hello?" after 1.2 s of silence;
//! - machines: a voicemail greeting (a sentence or two, and two short
//!   ones) after 0.2-1.0 s of silence, half of them followed 0.3 s later by
//!   a 1 kHz beep of 0.4 s;
//! - every text in 5 voices at 140, 175 and 210 words per minute (each
//!   voice and rate with a pitch of its own), at a random speech level
//!   between −30 and −12 dBm0, with white noise at no, 20 and 10 dB SNR
//!   (relative to the speech), through G.711 µ-law.
//!
//! Run with `cargo bench -p dialstack-media --bench amd_accuracy`; it
//! prints a markdown table. `AMD_BENCH_VERBOSE=1` lists the errors;
//! `AMD_CFG="greeting_ms=2000,max_words=4"` overrides rules (to tune them).
//! Without `espeak-ng` on the path it says so and exits.

use std::collections::HashMap;
use std::process::Command;

use dialstack_media::amd::{AmdConfig, AmdDecision, AmdDetector, AmdVerdict};
use dialstack_media::g711::{linear_to_ulaw, ulaw_to_linear};

const VOICES: [&str; 5] = ["en-us", "en", "en+f3", "en+m3", "en-gb-x-rp"];
const RATES: [u32; 3] = [140, 175, 210];
const NOISE: [(&str, Option<f64>); 3] =
    [("none", None), ("20 dB", Some(20.0)), ("10 dB", Some(10.0))];

const HUMAN: [&str; 12] = [
    "hello?",
    "hi",
    "yes hello",
    "hello, this is Mark",
    "yeah?",
    "hello, who's calling?",
    "good morning",
    "speaking",
    "yes?",
    "hello, Mark speaking",
    "hi, who is this?",
    "hello, Smith residence",
];

/// Voicemail greetings; the last two are short enough to sound like a
/// person, and only their beep gives them away.
const MACHINE: [&str; 14] = [
    "Hi, you've reached the voicemail of John Smith. I can't take your call right now, please leave a message after the tone.",
    "Hello, this is Sarah. Sorry I missed your call. Leave your name and number and I'll get back to you as soon as I can.",
    "The person you are calling is not available. Please leave a message after the beep.",
    "Hey, it's Mike. I'm not around right now, so leave a message and I'll call you back.",
    "You have reached the office of Doctor Brown. Our office is currently closed. Please call again during business hours.",
    "Thank you for calling Acme Insurance. All of our agents are busy. Please stay on the line or leave a message.",
    "Hi, we can't come to the phone right now. Please leave a message.",
    "Your call has been forwarded to an automatic voice message system. Eight five five, one two three four, is not available.",
    "Hello. You have reached five five five, nine eight seven six. Please leave your message after the tone. Thank you.",
    "Hi there! This is Emma and Tom. We are probably out walking the dog. Leave us a message!",
    "Good afternoon, you have reached the Johnson family. We can't answer the phone right now.",
    "This is Dave, I'm on the other line. Leave your number and I'll call you back.",
    "Hi, it's Anna, leave a message.",
    "Leave a message after the tone.",
];

/// One labelled call.
struct Case {
    human: bool,
    noise: usize,
    /// For machines: which kind of greeting ("long" or "short") and
    /// whether a beep follows.
    kind: Option<(&'static str, bool)>,
    label: String,
    pcm: Vec<i16>,
}

fn main() {
    if Command::new("espeak-ng").arg("--version").output().is_err() {
        println!("espeak-ng not found: no corpus, nothing measured");
        return;
    }
    let verbose = std::env::var("AMD_BENCH_VERBOSE").is_ok_and(|v| v == "1");
    let cfg = config_from_env();
    let speech = synthesize_all();
    let cases = corpus(&speech);

    let mut results: Vec<(usize, bool, AmdDecision)> = Vec::new();
    let mut by_kind: HashMap<(&str, bool), (usize, usize)> = HashMap::new();
    for case in &cases {
        let decision = classify(&cfg, &case.pcm);
        let wrong = match decision.verdict {
            AmdVerdict::Human => !case.human,
            AmdVerdict::Machine => case.human,
            AmdVerdict::Unsure => true,
        };
        if verbose && wrong {
            eprintln!(
                "{} [{}] → {} ({}) at {} ms: {:?}",
                if case.human { "human" } else { "machine" },
                case.label,
                decision.verdict.as_str(),
                decision.reason,
                decision.at_ms,
                decision.features
            );
        }
        if let Some(kind) = case.kind {
            let entry = by_kind.entry(kind).or_default();
            entry.0 += 1;
            entry.1 += usize::from(decision.verdict == AmdVerdict::Machine);
        }
        results.push((case.noise, case.human, decision));
    }

    println!("AMD accuracy, default rules ({} calls)\n", results.len());
    if cfg != AmdConfig::default() {
        println!("rules overridden: {cfg:?}\n");
    }
    println!(
        "| noise | calls | accuracy | human ok | machine ok | human→machine | machine→human | unsure | decision p50 | decision p95 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, (name, _)) in NOISE.iter().enumerate() {
        let rows: Vec<_> = results.iter().filter(|r| r.0 == i).collect();
        print_row(name, &rows);
    }
    let all: Vec<_> = results.iter().collect();
    print_row("**all**", &all);
    let mut reasons: HashMap<(&str, &str), usize> = HashMap::new();
    for (_, human, d) in &results {
        *reasons
            .entry((if *human { "human" } else { "machine" }, d.reason))
            .or_default() += 1;
    }
    let mut reasons: Vec<_> = reasons.into_iter().collect();
    reasons.sort();
    println!("\nrules that decided:");
    for ((truth, reason), n) in reasons {
        println!("- {truth} calls, `{reason}`: {n}");
    }
    let mut kinds: Vec<_> = by_kind.into_iter().collect();
    kinds.sort();
    println!("\nmachines found, by greeting:");
    for ((kind, beep), (n, ok)) in kinds {
        let beep = if beep { "with beep" } else { "no beep" };
        println!(
            "- {kind} greeting, {beep}: {ok}/{n} ({:.1} %)",
            100.0 * ok as f64 / n.max(1) as f64
        );
    }
    let mut human_times: Vec<u32> = results
        .iter()
        .filter(|r| r.1 && r.2.verdict == AmdVerdict::Human)
        .map(|r| r.2.at_ms)
        .collect();
    human_times.sort_unstable();
    let longest_human = results
        .iter()
        .filter(|r| r.1)
        .map(|r| (r.2.features.greeting_ms, r.2.features.words))
        .fold((0, 0), |(g, w), (g2, w2)| (g.max(g2), w.max(w2)));
    if let (Some(first), Some(last)) = (human_times.first(), human_times.last()) {
        println!(
            "\nhumans recognised after {first}-{last} ms, median {} ms; their longest greeting {} ms, most words {}",
            human_times[human_times.len() / 2],
            longest_human.0,
            longest_human.1
        );
    }
}

fn print_row(name: &str, rows: &[&(usize, bool, AmdDecision)]) {
    let n = rows.len();
    let humans = rows.iter().filter(|r| r.1).count();
    let machines = n - humans;
    let verdict = |human: bool, v: AmdVerdict| {
        rows.iter()
            .filter(|r| r.1 == human && r.2.verdict == v)
            .count()
    };
    let human_ok = verdict(true, AmdVerdict::Human);
    let machine_ok = verdict(false, AmdVerdict::Machine);
    let h2m = verdict(true, AmdVerdict::Machine);
    let m2h = verdict(false, AmdVerdict::Human);
    let unsure = rows
        .iter()
        .filter(|r| r.2.verdict == AmdVerdict::Unsure)
        .count();
    let mut times: Vec<u32> = rows.iter().map(|r| r.2.at_ms).collect();
    times.sort_unstable();
    let pct = |a: usize, b: usize| 100.0 * a as f64 / b.max(1) as f64;
    let quantile = |q: f64| {
        times
            .get(((times.len().max(1) - 1) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "| {name} | {n} | {:.1} % | {:.1} % | {:.1} % | {:.1} % | {:.1} % | {:.1} % | {} ms | {} ms |",
        pct(human_ok + machine_ok, n),
        pct(human_ok, humans),
        pct(machine_ok, machines),
        pct(h2m, humans),
        pct(m2h, machines),
        pct(unsure, n),
        quantile(0.5),
        quantile(0.95),
    );
}

fn classify(cfg: &AmdConfig, pcm: &[i16]) -> AmdDecision {
    let mut d = AmdDetector::new(cfg.clone());
    for frame in pcm.chunks(160) {
        if let Some(decision) = d.push(frame) {
            return decision;
        }
    }
    d.finish()
}

/// The default rules, with `AMD_CFG="field=value,..."` applied.
fn config_from_env() -> AmdConfig {
    let mut cfg = AmdConfig::default();
    let Ok(spec) = std::env::var("AMD_CFG") else {
        return cfg;
    };
    for item in spec.split(',').filter(|s| !s.is_empty()) {
        let Some((key, value)) = item.split_once('=') else {
            panic!("AMD_CFG: {item} is not field=value");
        };
        let v: u32 = value.trim().parse().expect("AMD_CFG: a number");
        match key.trim() {
            "initial_silence_ms" => cfg.initial_silence_ms = v,
            "greeting_ms" => cfg.greeting_ms = v,
            "after_greeting_silence_ms" => cfg.after_greeting_silence_ms = v,
            "total_analysis_ms" => cfg.total_analysis_ms = v,
            "min_word_ms" => cfg.min_word_ms = v,
            "between_words_silence_ms" => cfg.between_words_silence_ms = v,
            "max_words" => cfg.max_words = v,
            "silence_threshold" => cfg.silence_threshold = u16::try_from(v).expect("u16"),
            other => panic!("AMD_CFG: unknown field {other}"),
        }
    }
    cfg
}

/// Every (voice, rate, text) at 8 kHz, trimmed of leading and trailing
/// silence, synthesised on two threads.
fn synthesize_all() -> HashMap<(usize, usize, String), Vec<i16>> {
    let mut jobs = Vec::new();
    for v in 0..VOICES.len() {
        for r in 0..RATES.len() {
            for text in HUMAN.iter().chain(&MACHINE) {
                jobs.push((v, r, (*text).to_owned()));
            }
        }
    }
    let (a, b) = jobs.split_at(jobs.len() / 2);
    let run = |part: &[(usize, usize, String)]| {
        part.iter()
            .map(|(v, r, text)| {
                // A pitch of its own for each voice and rate (espeak's
                // default is 50).
                let pitch = 30 + ((*v * 7 + *r * 13) % 41) as u32;
                let pcm = espeak(VOICES[*v], RATES[*r], pitch, text);
                ((*v, *r, text.clone()), pcm)
            })
            .collect::<Vec<_>>()
    };
    let (ra, rb) = std::thread::scope(|s| {
        let ha = s.spawn(|| run(a));
        let rb = run(b);
        (ha.join().expect("synthesis thread"), rb)
    });
    ra.into_iter().chain(rb).collect()
}

/// Runs espeak-ng and returns its speech at 8 kHz, trimmed.
fn espeak(voice: &str, rate: u32, pitch: u32, text: &str) -> Vec<i16> {
    let out = Command::new("espeak-ng")
        .args([
            "-v",
            voice,
            "-s",
            &rate.to_string(),
            "-p",
            &pitch.to_string(),
            "--stdout",
            text,
        ])
        .output()
        .expect("espeak-ng runs");
    assert!(out.status.success(), "espeak-ng -v {voice} failed");
    let (rate_hz, pcm) = parse_wav(&out.stdout).expect("a 16-bit mono WAV");
    trim(&resample(&pcm, rate_hz, 8_000))
}

/// The sample rate and samples of a 16-bit mono RIFF WAV. espeak-ng
/// writes a placeholder size into the data chunk when writing to a pipe,
/// so the data runs to the end of the input.
fn parse_wav(bytes: &[u8]) -> Option<(u32, Vec<i16>)> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return None;
    }
    let mut pos = 12;
    let mut rate = None;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let size = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().ok()?) as usize;
        let body = pos + 8;
        if id == b"fmt " {
            let fmt = bytes.get(body..body + 16)?;
            let channels = u16::from_le_bytes([fmt[2], fmt[3]]);
            let bits = u16::from_le_bytes([fmt[14], fmt[15]]);
            if channels != 1 || bits != 16 {
                return None;
            }
            rate = Some(u32::from_le_bytes(fmt[4..8].try_into().ok()?));
        } else if id == b"data" {
            let end = body.saturating_add(size).min(bytes.len());
            let pcm = bytes[body..end]
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect();
            return Some((rate?, pcm));
        }
        pos = body + size + (size & 1);
    }
    None
}

/// Windowed-sinc resampling (Blackman window, 32 taps either side of the
/// input rate, cut-off at 90 % of the output Nyquist frequency).
fn resample(pcm: &[i16], from: u32, to: u32) -> Vec<i16> {
    const HALF: isize = 32;
    let ratio = f64::from(from) / f64::from(to);
    // Cut-off relative to the input rate.
    let fc = 0.45 / ratio;
    let n_out = (pcm.len() as f64 / ratio) as usize;
    (0..n_out)
        .map(|n| {
            let x = n as f64 * ratio;
            let centre = x.floor() as isize;
            let mut acc = 0.0;
            for k in centre - HALF + 1..=centre + HALF {
                if k < 0 || k as usize >= pcm.len() {
                    continue;
                }
                let t = x - k as f64;
                let arg = 2.0 * fc * t;
                let sinc = if arg.abs() < 1e-9 {
                    1.0
                } else {
                    (std::f64::consts::PI * arg).sin() / (std::f64::consts::PI * arg)
                };
                let w = t / HALF as f64;
                let blackman = if w.abs() >= 1.0 {
                    0.0
                } else {
                    let p = std::f64::consts::PI * (w + 1.0);
                    0.42 - 0.5 * p.cos() + 0.08 * (2.0 * p).cos()
                };
                acc += f64::from(pcm[k as usize]) * 2.0 * fc * sinc * blackman;
            }
            acc.round().clamp(-32_768.0, 32_767.0) as i16
        })
        .collect()
}

/// Drops leading and trailing samples quieter than −50 dBm0 or so.
fn trim(pcm: &[i16]) -> Vec<i16> {
    let loud = |s: &i16| s.unsigned_abs() > 60;
    let start = pcm.iter().position(loud).unwrap_or(pcm.len());
    let end = pcm.iter().rposition(loud).map_or(start, |e| e + 1);
    pcm[start..end].to_vec()
}

fn silence(ms: u32) -> Vec<i16> {
    vec![0; ms as usize * 8]
}

fn power(pcm: &[i16]) -> f64 {
    pcm.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / pcm.len().max(1) as f64
}

/// Scales speech to an RMS of `dbm0` (0 dBm0 is an RMS of about 16 000).
fn at_level(pcm: &[i16], dbm0: f64) -> Vec<i16> {
    let target = 16_000.0 * 10f64.powf(dbm0 / 20.0);
    let gain = target / power(pcm).sqrt().max(1.0);
    pcm.iter()
        .map(|&s| (f64::from(s) * gain).round().clamp(-32_768.0, 32_767.0) as i16)
        .collect()
}

fn beep() -> Vec<i16> {
    (0..3_200)
        .map(|i| {
            (6_000.0 * (std::f64::consts::TAU * 1_000.0 * f64::from(i) / 8_000.0).sin()) as i16
        })
        .collect()
}

/// Every labelled call, for every noise level.
fn corpus(speech: &HashMap<(usize, usize, String), Vec<i16>>) -> Vec<Case> {
    let mut rng = fastrand::Rng::with_seed(0xA3D);
    let mut cases = Vec::new();
    for (noise, (_, snr)) in NOISE.iter().enumerate() {
        for v in 0..VOICES.len() {
            for r in 0..RATES.len() {
                for text in HUMAN {
                    for second_hello in [false, true] {
                        let level = -30.0 + 18.0 * rng.f64();
                        let words = at_level(&speech[&(v, r, text.to_owned())], level);
                        let mut pcm = silence(rng.u32(200..=800));
                        pcm.extend(&words);
                        let mut reference = power(&words);
                        if second_hello {
                            let again = at_level(&speech[&(v, r, HUMAN[0].to_owned())], level);
                            reference = (reference + power(&again)) / 2.0;
                            pcm.extend(silence(1_200));
                            pcm.extend(again);
                        }
                        pcm.resize(8_000 * 6, 0);
                        cases.push(Case {
                            human: true,
                            noise,
                            kind: None,
                            label: format!(
                                "{} {} wpm: {text:?}{}",
                                VOICES[v],
                                RATES[r],
                                if second_hello { " ×2" } else { "" }
                            ),
                            pcm: line(pcm, reference, *snr, &mut rng),
                        });
                    }
                }
                for (m, text) in MACHINE.iter().enumerate() {
                    let level = -30.0 + 18.0 * rng.f64();
                    let words = at_level(&speech[&(v, r, (*text).to_owned())], level);
                    let reference = power(&words);
                    let mut pcm = silence(rng.u32(200..=1_000));
                    pcm.extend(&words);
                    let with_beep = rng.bool();
                    if with_beep {
                        pcm.extend(silence(300));
                        pcm.extend(beep());
                    }
                    pcm.extend(silence(1_000));
                    let kind = if m + 2 >= MACHINE.len() {
                        "short"
                    } else {
                        "long"
                    };
                    cases.push(Case {
                        human: false,
                        noise,
                        kind: Some((kind, with_beep)),
                        label: format!(
                            "{} {} wpm: machine {m}{}",
                            VOICES[v],
                            RATES[r],
                            if with_beep { " + beep" } else { "" }
                        ),
                        pcm: line(pcm, reference, *snr, &mut rng),
                    });
                }
            }
        }
    }
    cases
}

/// Adds white noise `snr` dB below `reference` power, then µ-law.
fn line(mut pcm: Vec<i16>, reference: f64, snr: Option<f64>, rng: &mut fastrand::Rng) -> Vec<i16> {
    if let Some(snr) = snr {
        let rms = (reference / 10f64.powf(snr / 10.0)).sqrt();
        // Sum of 4 uniforms: close enough to Gaussian, variance 4/3.
        let scale = rms / (4.0f64 / 3.0).sqrt();
        for s in &mut pcm {
            let u: f64 = (0..4).map(|_| rng.f64() * 2.0 - 1.0).sum();
            *s = (f64::from(*s) + u * scale)
                .round()
                .clamp(-32_768.0, 32_767.0) as i16;
        }
    }
    pcm.iter()
        .map(|&s| ulaw_to_linear(linear_to_ulaw(s)))
        .collect()
}
