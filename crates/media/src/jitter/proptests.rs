use super::tests::{drive, pkt, tone_pcm, BASE, MS};
use super::*;

/// The reference: what a stream's counters must be, from the generator's
/// own bookkeeping.
#[derive(Default)]
struct Model {
    pushed: Vec<bool>,
    duplicates: u64,
    reordered: u64,
    highest: Option<usize>,
}

impl Model {
    fn push(&mut self, k: usize) {
        if self.pushed[k] {
            self.duplicates += 1;
            return;
        }
        self.pushed[k] = true;
        if self.highest.is_some_and(|h| k < h) {
            self.reordered += 1;
        }
        self.highest = self.highest.max(Some(k));
    }
}

/// One random stream through the buffer, with every invariant checked.
fn property_run(seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let n = rng.usize(30..250);
    // Force the wraps in some seeds.
    let seq0 = if seed % 4 == 0 {
        0xFFFF - rng.u16(0..40)
    } else {
        rng.u16(..)
    };
    let ts0 = if seed % 4 == 1 {
        u32::MAX - rng.u32(0..160 * 40)
    } else {
        rng.u32(..)
    };
    let mode = if rng.bool() {
        Mode::Fixed
    } else {
        Mode::Adaptive
    };
    let jitter_max = [0, 5, 30, 80, 250][rng.usize(0..5)] * MS;
    let loss = [0.0, 0.02, 0.1, 0.3][rng.usize(0..4)];
    let dup = [0.0, 0.05, 0.2][rng.usize(0..3)];
    let spikes = rng.bool();
    let base = BASE + rng.u64(0..20 * MS);

    let mut pkts = Vec::new();
    for k in 0..n {
        // The first packet arrives first and is never lost, so the
        // stream's range starts at it.
        if k > 0 && rng.f64() < loss {
            continue;
        }
        let mut jitter = if k == 0 || jitter_max == 0 {
            0
        } else {
            rng.u64(0..jitter_max)
        };
        if k > 0 && spikes && rng.u8(0..50) == 0 {
            jitter += rng.u64(100 * MS..600 * MS);
        }
        let mut p = pkt(k, seq0, ts0, 5 * MS + jitter);
        p.arrival += base - BASE;
        pkts.push(p);
        if k > 0 && rng.f64() < dup {
            p.arrival += rng.u64(0..60 * MS);
            pkts.push(p);
        }
    }
    pkts.sort_by_key(|p| p.arrival);
    let mut model = Model {
        pushed: vec![false; n],
        ..Model::default()
    };
    for p in &pkts {
        model.push(p.k);
    }

    let cfg = JitterConfig {
        mode,
        ..JitterConfig::default()
    };
    let mut jb = JitterBuffer::new(cfg);
    let phase = rng.u64(0..20 * MS);
    let last_arrival = pkts.last().map_or(base, |p| p.arrival);
    let pops = drive(
        &mut jb,
        &pkts,
        base - 100 * MS + phase,
        last_arrival + 2_000 * MS,
    );

    let mut prev: Option<PlayedFrame> = None;
    let mut audio = 0;
    for pop in &pops {
        match (pop.kind, pop.played) {
            (FrameKind::Audio, Some(f)) => {
                audio += 1;
                let k = usize::from(f.seq.wrapping_sub(seq0));
                assert!(
                    k < n && model.pushed[k],
                    "seed {seed}: played unknown {f:?}"
                );
                assert_eq!(f.timestamp, ts0.wrapping_add(160 * k as u32), "seed {seed}");
                assert!(
                    f.arrival_us <= pop.now,
                    "seed {seed}: played before arrival"
                );
                if let Some(p) = prev {
                    assert!(f.ext_seq > p.ext_seq, "seed {seed}: {p:?} then {f:?}");
                    assert!(
                        f.timestamp.wrapping_sub(p.timestamp) as i32 > 0,
                        "seed {seed}"
                    );
                }
                // Only the merge after a concealment may change the start.
                assert_eq!(pop.pcm[80..], tone_pcm(k)[80..], "seed {seed}");
                prev = Some(f);
            }
            (FrameKind::Audio, None) => panic!("seed {seed}: audio without a frame"),
            (_, played) => assert!(played.is_none(), "seed {seed}"),
        }
        assert!((20..=200).contains(&pop.stats.target_delay_ms));
    }

    let s = jb.stats();
    let distinct = model.pushed.iter().filter(|&&p| p).count() as u64;
    let highest = model.highest.unwrap_or(0) as u64;
    let ctx = format!(
        "seed {seed}: n {n} mode {mode:?} jitter {jitter_max} loss {loss} dup {dup}: {s:?}"
    );
    assert_eq!(s.received, pkts.len() as u64, "{ctx}");
    assert_eq!(s.received, distinct + s.duplicates, "{ctx}");
    assert_eq!(s.duplicates, model.duplicates, "{ctx}");
    assert_eq!(s.reordered, model.reordered, "{ctx}");
    assert_eq!(s.played_frames, audio, "{ctx}");
    assert_eq!(s.played_frames + s.late + s.discarded, distinct, "{ctx}");
    assert_eq!(s.lost, highest + 1 - distinct, "{ctx}");
    // An accelerate drops a frame that is there, or skips a lost one.
    assert!(s.discarded <= s.accelerated, "{ctx}");
    assert_eq!((s.resyncs, s.oversized), (0, 0), "{ctx}");
    if jitter_max == 0 && !spikes && loss == 0.0 {
        assert_eq!(
            (s.late, s.lost, s.concealed_frames.min(3)),
            (0, 0, s.concealed_frames),
            "{ctx}"
        );
    }
}

#[test]
fn random_streams_keep_every_invariant() {
    for seed in 0..500 {
        property_run(seed);
    }
}

#[test]
fn never_panics_on_arbitrary_input() {
    for seed in 0..200 {
        let mut rng = fastrand::Rng::with_seed(1_000 + seed);
        let mut jb = JitterBuffer::new(JitterConfig {
            mode: if rng.bool() {
                Mode::Fixed
            } else {
                Mode::Adaptive
            },
            nominal_ms: rng.u32(..),
            min_ms: rng.u32(..),
            max_ms: rng.u32(0..3_000),
        });
        let payload: Vec<u8> = (0..2_000).map(|_| rng.u8(..)).collect();
        let mut out = [0i16; FRAME];
        let mut now = rng.u64(..);
        let (mut seq, mut ts) = (rng.u16(..), rng.u32(..));
        let mut pushes = 0;
        for _ in 0..1_000 {
            match rng.u8(0..10) {
                0..=4 => {
                    // Mostly near the previous packet, sometimes anywhere.
                    if rng.u8(0..8) == 0 {
                        seq = rng.u16(..);
                        ts = rng.u32(..);
                    } else {
                        seq = seq.wrapping_add(rng.u16(0..5)).wrapping_sub(2);
                        ts = ts.wrapping_add(rng.u32(0..400)).wrapping_sub(80);
                    }
                    let ssrc = rng.u32(0..3);
                    let codec = if rng.bool() { Codec::Pcmu } else { Codec::Pcma };
                    let len = rng.usize(0..payload.len());
                    let arrival = if rng.u8(0..20) == 0 {
                        rng.u64(..)
                    } else {
                        now.wrapping_add(rng.u64(0..100_000))
                    };
                    jb.push(seq, ts, ssrc, codec, &payload[..len], rng.bool(), arrival);
                    pushes += 1;
                }
                _ => {
                    now = if rng.u8(0..30) == 0 {
                        rng.u64(..)
                    } else {
                        now.wrapping_add(20_000)
                    };
                    jb.pop(now, &mut out);
                }
            }
        }
        assert_eq!(jb.stats().received, pushes);
    }
}
