//! Time to first audio of per-call prompts: a prompt with lead fields is
//! rendered for each call (uncached: each text is new), then played from
//! its first frame; the playout waits for the whole render (espeak-ng
//! writes the WAV at the end), so the render time is the time to first
//! audio, plus at most one 20 ms tick. Sequential and 4 at once, then the
//! cache hit of a text already rendered.
//!
//! `cargo bench -p media-processor --bench tts_latency`

use std::time::{Duration, Instant};

use media_processor::ai::metrics::AiMetrics;
use media_processor::ai::tts::{Tts, TtsConfig, TtsRequest};

const NAMES: [&str; 20] = [
    "Ann", "Bob", "Carla", "Dmitri", "Eve", "Farouk", "Grace", "Hiro", "Ines", "Jamal", "Kofi",
    "Lena", "Mateo", "Nadia", "Oscar", "Priya", "Quinn", "Rosa", "Sven", "Tomas",
];
const DAYS: [&str; 10] = [
    "Monday the third",
    "Tuesday the fourth",
    "Wednesday the fifth",
    "Thursday the sixth",
    "Friday the seventh",
    "Saturday the eighth",
    "Monday the tenth",
    "Tuesday the eleventh",
    "Wednesday the twelfth",
    "Thursday the thirteenth",
];

fn text(i: usize, run: &str) -> String {
    format!(
        "Hello {} {run}{i}, this is a reminder about your appointment on {}.",
        NAMES[i % NAMES.len()],
        DAYS[(i / NAMES.len()) % DAYS.len()]
    )
}

fn req(t: String) -> TtsRequest {
    TtsRequest {
        text: t,
        voice: "en-us".into(),
        rate_wpm: 160,
    }
}

fn quantiles(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1_000.0;
    (ms(at(0.5)), ms(at(0.95)), ms(*v.last().unwrap()))
}

#[tokio::main]
async fn main() {
    let dir = std::env::temp_dir().join(format!("dialstack-tts-bench-{}", std::process::id()));
    let tts = std::sync::Arc::new(Tts::new(
        TtsConfig {
            cache_dir: dir.clone(),
            ..TtsConfig::default()
        },
        AiMetrics::new().unwrap(),
    ));
    tts.check().expect("espeak-ng installed");
    let n = 200;
    // Unique per run, so nothing comes from the cache.
    let run = format!("r{}", std::process::id());
    let mut seq = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        let r = tts.render(&req(text(i, &run))).await.unwrap();
        assert!(!r.cached && r.pcm.len() > 8_000);
        seq.push(t.elapsed());
    }
    let mut par = Vec::new();
    for chunk in (n..2 * n).collect::<Vec<_>>().chunks(4) {
        let mut tasks = Vec::new();
        for &i in chunk {
            let tts = tts.clone();
            let t = text(i, &run);
            tasks.push(tokio::spawn(async move {
                let start = Instant::now();
                let r = tts.render(&req(t)).await.unwrap();
                assert!(!r.cached);
                start.elapsed()
            }));
        }
        for t in tasks {
            par.push(t.await.unwrap());
        }
    }
    let mut hit = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        let r = tts.render(&req(text(i, &run))).await.unwrap();
        assert!(r.cached);
        hit.push(t.elapsed());
    }
    println!("| renders | p50 | p95 | max |");
    println!("|---|---:|---:|---:|");
    for (what, v) in [
        ("uncached, one at a time", seq),
        ("uncached, 4 at once", par),
        ("cached (memory)", hit),
    ] {
        let count = v.len();
        let (p50, p95, max) = quantiles(v);
        println!("| {what} ({count}) | {p50:.1} ms | {p95:.1} ms | {max:.1} ms |");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
