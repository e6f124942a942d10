//! The Rust half of `scripts/asr-adapt.sh`, which adapts the packaged
//! pocketsphinx en-us acoustic model to the telephone channel.
//!
//! - `corpus <dir> [--utterances N] [--seed S]`: synthesises the
//!   adaptation corpus with espeak-ng and writes `<dir>/wav/*.wav`,
//!   `<dir>/adapt.fileids` and `<dir>/adapt.transcription` (sphinxtrain's
//!   formats). Every utterance goes through a call's channel: 8 kHz,
//!   optional white noise, a G.711 µ-law round trip, then
//!   [`asr::engine_wav`], the very 8 → 16 kHz upsampling and upper-band
//!   filling the recognizer applies before pocketsphinx.
//! - `mixw <sendump> <out>`: the model's mixture weights as sphinxtrain's
//!   `mixture_weights` file, decoded from the 8-bit quantized `sendump`
//!   (the package ships only that; `bw` and `map_adapt` need the float
//!   file).
//! - `tmat <in> <out>`: the transition matrices with each row normalised
//!   (the package's are counts; `bw` expects probabilities).
//!
//! The corpus is disjoint from `benches/asr_accuracy.rs` by construction:
//! none of its voices (the bench's five espeak-ng voices are left out,
//! and so are the `+f3`/`+m3` variants and flite altogether), none of its
//! speaking rates (130/170/210 wpm), its noise seeds start elsewhere, and
//! most utterances are sentences. Isolated digit strings and yes/no words
//! are in it too, as any telephone adaptation set would have them.

use std::path::Path;
use std::sync::Arc;

use media_processor::ai::asr;
use media_processor::ai::metrics::AiMetrics;
use media_processor::ai::tts::{Tts, TtsConfig, TtsRequest};

// The call's channel, shared with the ASR bench.
#[path = "../benches/common/channel.rs"]
mod channel;

/// espeak-ng voices of the corpus. None of them is a voice of the bench.
const VOICES: &[&str] = &[
    "en-us+f1",
    "en-us+f2",
    "en-us+f4",
    "en-us+m1",
    "en-us+m2",
    "en-us+m4",
    "en-us+m5",
    "en-us+m7",
    "en-us+Annie",
    "en-us+klatt",
    "en-us-nyc",
    "en-us-nyc+m2",
    "en-029",
    "en-029+f4",
    "en-gb-scotland",
    "en-gb-scotland+f2",
    "en-gb-x-gbclan",
    "en-gb-x-gbclan+m4",
    "en-gb-x-gbcwmd",
    "en-gb-x-gbcwmd+f1",
];
/// Speaking rates (wpm) are drawn from this range, the bench's three excluded.
const RATES: std::ops::RangeInclusive<u16> = 115..=225;
const BENCH_RATES: &[u16] = &[130, 170, 210];
/// The noise seeds of the bench are the case indices (0, 1, …).
const SEED_BASE: u64 = 0x5eed_0000_0000;
const DIGITS: &[&str] = &[
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];
/// Digit strings inside sentences (`#` is the string).
const DIGIT_CARRIERS: &[&str] = &[
    "my number is #",
    "press #",
    "the code is #",
    "extension # please",
    "i said #",
    "it is #",
    "option #",
    "my pin is #",
    "call me on #",
    "the last digits are #",
    "room #",
    "account # thank you",
];
const YES_NO: &[&str] = &[
    "yes",
    "no",
    "yeah",
    "nope",
    "yep",
    "yes please",
    "no thank you",
    "yeah that is right",
    "no not now",
    "yes i am",
    "nope that is wrong",
    "yep go ahead",
    "yes that is correct",
    "no i do not",
    "oh yes",
    "no no",
    "yeah sure",
    "yes yes",
];
const MENU: &[&str] = &[
    "sales",
    "support",
    "billing",
    "cancel",
    "operator",
    "agent",
    "repeat",
    "help",
    "i need billing",
    "technical support please",
    "cancel my order",
    "talk to sales",
    "a question about my bill",
    "put me through to support",
    "i want to cancel",
    "sales please",
    "main menu",
    "speak to an agent",
];
/// General sentences, written for this corpus to cover English phones.
const SENTENCES: &[&str] = &[
    "the quick brown fox jumps over the lazy dog",
    "she sells sea shells by the sea shore",
    "please hold the line while we check your details",
    "we are open from nine until five on weekdays",
    "thank you for calling have a good day",
    "the weather was cold and the roads were icy",
    "my parcel has not arrived yet",
    "could you spell your last name for me",
    "the meeting moved to thursday afternoon",
    "a judge should be fair to both sides",
    "they measured the garage with a yellow ruler",
    "the children watched birds in the garden",
    "he paid the invoice with a cheque",
    "i would rather get an email than a letter",
    "the engineer will visit between eight and noon",
    "our offices are closed on public holidays",
    "you can change your password online",
    "the zoo keeper fed the hungry lions",
    "which address should we use for the refund",
    "thirty three thousand people joined the march",
    "this call may be recorded for training",
    "the voice on the phone sounded tired",
    "she bought bread milk and orange juice",
    "shipping usually takes three to five days",
    "my daughter plays the violin every evening",
    "push the button and wait for the tone",
    "the vision of the company is simple",
    "we owe you an apology for the delay",
    "the boy threw the ball over the fence",
    "how much would it cost to upgrade",
    "the nurse checked his pulse twice",
    "that sounds good to me",
    "can i pay by card",
    "leave a message after the beep",
    "the year ahead looks busy",
    "every treasure map has a mistake",
    "the choir sang in the church",
    "they usually eat lunch at one",
    "your balance is four hundred and twelve dollars",
    "the plumber fixed the leaking pipe",
    "what is the best time to reach you",
    "i think the total is wrong",
    "please confirm your date of birth",
    "the train to the city leaves at seven",
    "he enjoys reading about ships and whales",
    "we will send a new card in the post",
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("corpus") if args.len() >= 2 => {
            let flag = |name: &str, default: u64| -> anyhow::Result<u64> {
                match args.iter().position(|a| a == name) {
                    Some(i) => Ok(args
                        .get(i + 1)
                        .ok_or_else(|| anyhow::anyhow!("{name} needs a value"))?
                        .parse()?),
                    None => Ok(default),
                }
            };
            let n = usize::try_from(flag("--utterances", 1_200)?)?;
            corpus(Path::new(&args[1]), n, flag("--seed", 12)?).await
        }
        Some("mixw") if args.len() == 3 => mixw(Path::new(&args[1]), Path::new(&args[2])),
        Some("tmat") if args.len() == 3 => tmat(Path::new(&args[1]), Path::new(&args[2])),
        _ => {
            eprintln!(
                "usage: asr_adapt corpus <dir> [--utterances N] [--seed S]\n       asr_adapt mixw <sendump> <mixture_weights>\n       asr_adapt tmat <transition_matrices> <out>"
            );
            std::process::exit(2);
        }
    }
}

/// One utterance's text, drawn by kind: isolated digit strings and digits
/// in sentences weigh most (the weakest set), then yes/no, the menu and
/// general sentences.
fn text(rng: &mut fastrand::Rng) -> String {
    let digits = |rng: &mut fastrand::Rng, most: usize| -> String {
        (0..rng.usize(1..=most))
            .map(|_| {
                let d = rng.usize(0..10);
                if d == 0 && rng.bool() {
                    "oh"
                } else {
                    DIGITS[d]
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    match rng.usize(0..100) {
        0..=29 => digits(rng, 7),
        30..=44 => DIGIT_CARRIERS[rng.usize(0..DIGIT_CARRIERS.len())].replace('#', &digits(rng, 5)),
        45..=59 => YES_NO[rng.usize(0..YES_NO.len())].to_owned(),
        60..=69 => MENU[rng.usize(0..MENU.len())].to_owned(),
        _ => SENTENCES[rng.usize(0..SENTENCES.len())].to_owned(),
    }
}

async fn corpus(dir: &Path, n: usize, seed: u64) -> anyhow::Result<()> {
    let wav_dir = dir.join("wav");
    std::fs::create_dir_all(&wav_dir)?;
    let metrics = AiMetrics::new()?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let tts = Arc::new(Tts::new(
        TtsConfig {
            cache_dir: dir.join("tts-cache"),
            max_concurrent: cores * 2,
            ..TtsConfig::default()
        },
        metrics,
    ));
    tts.check()?;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut jobs = tokio::task::JoinSet::new();
    let mut lines = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("a{i:05}");
        let voice = VOICES[i % VOICES.len()];
        let rate = loop {
            let r = rng.u16(RATES);
            if !BENCH_RATES.contains(&r) {
                break r;
            }
        };
        // A third clean, the rest 8-30 dB SNR (the bench has 20 and 10).
        let snr = (rng.usize(0..3) != 0).then(|| 8.0 + 22.0 * rng.f64());
        let text = text(&mut rng);
        lines.push(format!("<s> {text} </s> ({id})"));
        let (tts, path) = (tts.clone(), wav_dir.join(format!("{id}.wav")));
        let noise_seed = SEED_BASE + seed * 1_000_000 + i as u64;
        jobs.spawn(async move {
            let pcm = tts
                .render(&TtsRequest {
                    text: text.clone(),
                    voice: voice.into(),
                    rate_wpm: rate,
                })
                .await
                .map_err(|e| anyhow::anyhow!("{voice} {text:?}: {e}"))?
                .pcm;
            let wav = tokio::task::spawn_blocking(move || {
                asr::engine_wav(&channel::degrade(&pcm, snr, noise_seed))
            })
            .await?;
            tokio::fs::write(&path, wav).await?;
            anyhow::Ok(())
        });
        // Bounded: a few renders in flight, not the whole corpus.
        while jobs.len() >= cores * 4 {
            if let Some(r) = jobs.join_next().await {
                r??;
            }
        }
    }
    while let Some(r) = jobs.join_next().await {
        r??;
    }
    let ids: Vec<String> = (0..n).map(|i| format!("a{i:05}\n")).collect();
    std::fs::write(dir.join("adapt.fileids"), ids.concat())?;
    std::fs::write(dir.join("adapt.transcription"), lines.join("\n") + "\n")?;
    let _ = std::fs::remove_dir_all(dir.join("tts-cache"));
    println!("{n} utterances in {}", dir.display());
    Ok(())
}

/// sphinxtrain's binary header: no checksum (readers then check none).
fn s3_header() -> Vec<u8> {
    let mut h = b"s3\nversion 1.0\nendhdr\n".to_vec();
    h.extend_from_slice(&0x1122_3344u32.to_le_bytes());
    h
}

fn push_i32(out: &mut Vec<u8>, v: usize) -> anyhow::Result<()> {
    out.extend_from_slice(&i32::try_from(v)?.to_le_bytes());
    Ok(())
}

/// `sendump` (pocketsphinx's quantized mixture weights: per feature
/// stream and density, one byte per senone, −log₁.₀₀₀₁(w) shifted right
/// by 10 bits) back to a float `mixture_weights` file, each senone's
/// weights per stream normalised to 1.
fn mixw(sendump: &Path, out: &Path) -> anyhow::Result<()> {
    let d = std::fs::read(sendump)?;
    let i32_at = |o: usize| -> anyhow::Result<i32> {
        let b = d
            .get(o..o + 4)
            .ok_or_else(|| anyhow::anyhow!("{}: truncated", sendump.display()))?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut o = 0;
    let mut n_feat = 1;
    loop {
        let len = usize::try_from(i32_at(o)?)?;
        o += 4;
        if len == 0 {
            break;
        }
        let s = String::from_utf8_lossy(&d[o..o + len]);
        let s = s.trim_end_matches('\0');
        if let Some(v) = s.strip_prefix("feature_count ") {
            n_feat = v.trim().parse()?;
        }
        if let Some(v) = s.strip_prefix("cluster_count ") {
            anyhow::ensure!(v.trim() == "0", "clustered sendump not supported");
        }
        o += len;
    }
    let n_density = usize::try_from(i32_at(o)?)?;
    let n_sen = usize::try_from(i32_at(o + 4)?)?;
    o += 8;
    let bytes = &d[o..];
    anyhow::ensure!(
        bytes.len() == n_feat * n_density * n_sen,
        "{}: {} bytes of weights, expected {n_feat}×{n_density}×{n_sen}",
        sendump.display(),
        bytes.len()
    );
    let step = 1024.0 * 1.0001f64.ln();
    let mut w = vec![0f32; n_sen * n_feat * n_density];
    for f in 0..n_feat {
        for k in 0..n_density {
            for s in 0..n_sen {
                let q = bytes[(f * n_density + k) * n_sen + s];
                w[(s * n_feat + f) * n_density + k] = (-f64::from(q) * step).exp() as f32;
            }
        }
    }
    for row in w.chunks_mut(n_density) {
        let sum: f32 = row.iter().sum();
        row.iter_mut().for_each(|v| *v /= sum);
    }
    let mut file = s3_header();
    for v in [n_sen, n_feat, n_density, w.len()] {
        push_i32(&mut file, v)?;
    }
    w.iter()
        .for_each(|v| file.extend_from_slice(&v.to_le_bytes()));
    std::fs::write(out, file)?;
    println!("{n_sen} senones × {n_feat} streams × {n_density} densities");
    Ok(())
}

/// Transition matrices with rows normalised (zero rows stay zero).
fn tmat(input: &Path, out: &Path) -> anyhow::Result<()> {
    let d = std::fs::read(input)?;
    let end = d
        .windows(7)
        .position(|w| w == b"endhdr\n")
        .ok_or_else(|| anyhow::anyhow!("{}: no s3 header", input.display()))?
        + 7;
    let word = |i: usize| {
        [
            d[end + 4 * i],
            d[end + 4 * i + 1],
            d[end + 4 * i + 2],
            d[end + 4 * i + 3],
        ]
    };
    anyhow::ensure!(
        u32::from_le_bytes(word(0)) == 0x1122_3344,
        "big-endian file"
    );
    let dims: Vec<usize> = (1..=4)
        .map(|i| usize::try_from(i32::from_le_bytes(word(i))))
        .collect::<Result<_, _>>()?;
    let (n_tmat, rows, cols, total) = (dims[0], dims[1], dims[2], dims[3]);
    anyhow::ensure!(total == n_tmat * rows * cols, "odd dimensions {dims:?}");
    let mut v: Vec<f32> = (5..5 + total)
        .map(|i| f32::from_le_bytes(word(i)))
        .collect();
    for row in v.chunks_mut(cols) {
        let sum: f32 = row.iter().sum();
        if sum > 0.0 {
            row.iter_mut().for_each(|x| *x /= sum);
        }
    }
    let mut file = s3_header();
    for x in [n_tmat, rows, cols, total] {
        push_i32(&mut file, x)?;
    }
    v.iter()
        .for_each(|x| file.extend_from_slice(&x.to_le_bytes()));
    std::fs::write(out, file)?;
    Ok(())
}
