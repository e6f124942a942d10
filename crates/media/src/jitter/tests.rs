use super::*;
use crate::g711::linear_to_ulaw;
use std::sync::OnceLock;

pub(super) const MS: u64 = 1_000;
const SSRC: u32 = 0x5eed_0001;
pub(super) const BASE: u64 = 1_000 * MS;

/// Frame `k` of a 425 Hz tone in µ-law (a whole number of cycles per
/// second, so the table repeats seamlessly).
fn tone(k: usize) -> [u8; FRAME] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        (0..8_000)
            .map(|i| {
                let t = f64::from(i) / 8_000.0;
                linear_to_ulaw((6_000.0 * (2.0 * std::f64::consts::PI * 425.0 * t).sin()) as i16)
            })
            .collect()
    });
    let mut out = [0u8; FRAME];
    for (i, o) in out.iter_mut().enumerate() {
        *o = table[(k * FRAME + i) % table.len()];
    }
    out
}

pub(super) fn tone_pcm(k: usize) -> [i16; FRAME] {
    let mut pcm = [0i16; FRAME];
    Codec::Pcmu.decode(&tone(k), &mut pcm);
    pcm
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Pkt {
    pub(super) k: usize,
    seq: u16,
    ts: u32,
    ssrc: u32,
    pub(super) arrival: u64,
}

/// Packet `k` of a stream starting at `seq0`/`ts0`, sent every 20 ms
/// from `BASE`, arriving `extra` after its send time.
pub(super) fn pkt(k: usize, seq0: u16, ts0: u32, extra: u64) -> Pkt {
    Pkt {
        k,
        seq: seq0.wrapping_add(k as u16),
        ts: ts0.wrapping_add(160 * k as u32),
        ssrc: SSRC,
        arrival: BASE + 20 * MS * k as u64 + extra,
    }
}

fn push(jb: &mut JitterBuffer, p: &Pkt) {
    jb.push(
        p.seq,
        p.ts,
        p.ssrc,
        Codec::Pcmu,
        &tone(p.k),
        p.k == 0,
        p.arrival,
    );
}

pub(super) struct Pop {
    pub(super) now: u64,
    pub(super) kind: FrameKind,
    pub(super) played: Option<PlayedFrame>,
    pub(super) pcm: [i16; FRAME],
    pub(super) stats: JitterStats,
}

/// Pushes `pkts` in arrival order (stable for equal times), popping every
/// 20 ms from `first_pop` to `last_pop`; a packet arriving at the time of
/// a pop is pushed before it.
pub(super) fn drive(
    jb: &mut JitterBuffer,
    pkts: &[Pkt],
    first_pop: u64,
    last_pop: u64,
) -> Vec<Pop> {
    let mut order: Vec<Pkt> = pkts.to_vec();
    order.sort_by_key(|p| p.arrival);
    let mut next = 0;
    let mut pops = Vec::new();
    let mut now = first_pop;
    while now <= last_pop {
        while next < order.len() && order[next].arrival <= now {
            push(jb, &order[next]);
            next += 1;
        }
        let mut pcm = [0i16; FRAME];
        let kind = jb.pop(now, &mut pcm);
        pops.push(Pop {
            now,
            kind,
            played: jb.last_played(),
            pcm,
            stats: jb.stats().clone(),
        });
        now += 20 * MS;
    }
    pops
}

fn kinds(pops: &[Pop]) -> Vec<FrameKind> {
    pops.iter().map(|p| p.kind).collect()
}

fn played_seqs(pops: &[Pop]) -> Vec<u16> {
    pops.iter()
        .filter_map(|p| p.played.map(|f| f.seq))
        .collect()
}

fn adaptive() -> JitterConfig {
    JitterConfig {
        mode: Mode::Adaptive,
        ..JitterConfig::default()
    }
}

#[test]
fn in_order_stream_plays_everything_at_the_nominal_delay() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let pkts: Vec<Pkt> = (0..100).map(|k| pkt(k, 1_000, 5_000, 0)).collect();
    // Ticks at 10 ms past the arrivals: frame k is due at 50 + 20k ms.
    let pops = drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 2_030 * MS);
    let mut want = vec![FrameKind::Silence; 2];
    want.extend([FrameKind::Audio; 100]);
    assert_eq!(kinds(&pops), want);
    assert_eq!(
        played_seqs(&pops),
        (0..100).map(|k| 1_000 + k).collect::<Vec<u16>>()
    );
    for (k, pop) in pops[2..].iter().enumerate() {
        assert_eq!(pop.pcm, tone_pcm(k));
        assert_eq!(pop.now - pop.played.map_or(0, |f| f.arrival_us), 50 * MS);
    }
    let s = jb.stats();
    assert_eq!(
        (s.received, s.played_frames, s.lost, s.late),
        (100, 100, 0, 0)
    );
    assert_eq!((s.underflows, s.concealed_frames, s.discarded), (0, 0, 0));
    assert_eq!((s.current_delay_ms, s.target_delay_ms), (50, 50));
    assert_eq!(s.delay_ms_sum, 50 * 100);
    assert_eq!((s.expanded, s.accelerated, s.resyncs), (0, 0, 0));
}

#[test]
fn before_the_first_packet_pops_are_underflows() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let mut pcm = [1i16; FRAME];
    for i in 0..5 {
        assert_eq!(jb.pop(i * 20 * MS, &mut pcm), FrameKind::Silence);
        assert_eq!(pcm, [0; FRAME]);
    }
    assert_eq!(jb.stats().underflows, 5);
    // Waiting for the first packet to be due is not an underflow.
    jb.push(7, 0, SSRC, Codec::Pcma, &[0xD5; 160], true, 100 * MS);
    assert_eq!(jb.pop(110 * MS, &mut pcm), FrameKind::Silence);
    assert_eq!(jb.stats().underflows, 5);
    assert_eq!(jb.pop(150 * MS, &mut pcm), FrameKind::Audio);
    assert_eq!(pcm, [8; FRAME]);
    assert_eq!(jb.pop(170 * MS, &mut pcm), FrameKind::Concealed);
    assert_eq!(jb.stats().underflows, 6);
}

#[test]
fn a_packet_later_than_the_delay_is_late_and_its_frame_concealed() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let pkts: Vec<Pkt> = (0..60)
        .map(|k| pkt(k, 300, 0, if k == 10 { 100 * MS } else { 0 }))
        .collect();
    let pops = drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 1_230 * MS);
    // Frame 10 is due at 250 ms.
    let at = pops.iter().position(|p| p.now == BASE + 250 * MS).unwrap();
    assert_eq!(pops[at].kind, FrameKind::Concealed);
    assert_eq!(pops[at].stats.lost, 1);
    assert_eq!(pops[at + 1].kind, FrameKind::Audio);
    assert_eq!(pops[at + 1].played.map(|f| f.seq), Some(311));
    let s = jb.stats();
    assert_eq!(
        (s.late, s.lost, s.played_frames, s.concealed_frames),
        (1, 0, 59, 1)
    );
    assert_eq!((s.reordered, s.duplicates, s.underflows), (1, 0, 0));
    assert_eq!(s.current_delay_ms, 50);
}

#[test]
fn duplicates_are_counted_once() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let mut pkts: Vec<Pkt> = (0..40).map(|k| pkt(k, 9, 77, 0)).collect();
    // One duplicate while buffered, one after its frame played.
    pkts.push(pkt(5, 9, 77, MS));
    pkts.push(pkt(20, 9, 77, 300 * MS));
    let pops = drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 900 * MS);
    assert_eq!(
        played_seqs(&pops),
        (0..40).map(|k| 9 + k).collect::<Vec<u16>>()
    );
    let s = jb.stats();
    assert_eq!((s.received, s.duplicates, s.played_frames), (42, 2, 40));
    assert_eq!((s.late, s.lost, s.reordered), (0, 0, 0));
}

#[test]
fn ssrc_change_resyncs() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let mut pkts: Vec<Pkt> = (0..50)
        .filter(|&k| k != 47)
        .map(|k| pkt(k, 100, 0, 0))
        .collect();
    // The new source starts 100 ms after the old one ends, with its
    // own numbering and clock.
    for k in 55..105 {
        let mut p = pkt(k, 40_000, 123_456, 0);
        p.ssrc = 0xB;
        pkts.push(p);
    }
    // Stragglers of the old source after the switch: a duplicate, and a
    // packet whose frame was already concealed.
    pkts.push(pkt(45, 100, 0, 300 * MS));
    pkts.push(pkt(47, 100, 0, 300 * MS));
    let pops = drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 2_200 * MS);
    let played = played_seqs(&pops);
    let mut want: Vec<u16> = (0..50).filter(|&k| k != 47).map(|k| 100 + k).collect();
    want.extend((55..105).map(|k| 40_000u16.wrapping_add(k)));
    assert_eq!(played, want);
    let exts: Vec<u64> = pops
        .iter()
        .filter_map(|p| p.played.map(|f| f.ext_seq))
        .collect();
    assert!(exts.windows(2).all(|w| w[0] < w[1]));
    let s = jb.stats();
    assert_eq!(s.resyncs, 1);
    assert_eq!(
        (s.played_frames, s.late, s.lost, s.duplicates),
        (99, 1, 0, 1)
    );
    assert_eq!(s.discarded, 0);
    assert_eq!(s.current_delay_ms, 50);
}

#[test]
fn ssrc_change_flushes_what_is_buffered() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let mut pkts: Vec<Pkt> = (0..10).map(|k| pkt(k, 0, 0, 0)).collect();
    let mut p = pkt(10, 500, 0, 0);
    p.ssrc = 0xC;
    pkts.push(p);
    let pops = drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 400 * MS);
    // Frames 8 and 9 were still waiting when the new source came.
    assert_eq!(
        played_seqs(&pops),
        (0..8).chain([510]).collect::<Vec<u16>>()
    );
    let s = jb.stats();
    assert_eq!(
        (s.resyncs, s.discarded, s.lost, s.played_frames),
        (1, 2, 0, 9)
    );
}

#[test]
fn switching_back_to_an_earlier_ssrc_is_a_new_stream() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let mut out = [0i16; FRAME];
    let mut t = BASE;
    for (ssrc, seq) in [(1u32, 10u16), (2, 500), (1, 2_000)] {
        for i in 0..5u16 {
            jb.push(
                seq + i,
                u32::from(seq + i) * 160,
                ssrc,
                Codec::Pcmu,
                &tone(0),
                false,
                t,
            );
            t += 20 * MS;
            jb.pop(t, &mut out);
        }
    }
    assert_eq!(jb.stats().resyncs, 2);
    assert_eq!(jb.stats().late, 0);
}

#[test]
fn sequence_numbers_wrap() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let pkts: Vec<Pkt> = (0..60).map(|k| pkt(k, 0xFFF0, 1_000, 0)).collect();
    let pops = drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 1_300 * MS);
    let want: Vec<u16> = (0..60).map(|k| 0xFFF0u16.wrapping_add(k)).collect();
    assert_eq!(played_seqs(&pops), want);
    let exts: Vec<u64> = pops
        .iter()
        .filter_map(|p| p.played.map(|f| f.ext_seq))
        .collect();
    assert!(exts.windows(2).all(|w| w[1] == w[0] + 1));
    let s = jb.stats();
    assert_eq!((s.played_frames, s.lost, s.late, s.resyncs), (60, 0, 0, 0));
}

#[test]
fn timestamps_wrap() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let ts0 = u32::MAX - 1_000;
    let pkts: Vec<Pkt> = (0..60).map(|k| pkt(k, 42, ts0, 0)).collect();
    let pops = drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 1_300 * MS);
    let ts: Vec<u32> = pops
        .iter()
        .filter_map(|p| p.played.map(|f| f.timestamp))
        .collect();
    assert_eq!(
        ts,
        (0..60)
            .map(|k| ts0.wrapping_add(160 * k))
            .collect::<Vec<u32>>()
    );
    let s = jb.stats();
    assert_eq!((s.played_frames, s.lost, s.late, s.resyncs), (60, 0, 0, 0));
    assert_eq!(s.delay_ms_sum, 50 * 60);
}

#[test]
fn a_confirmed_sequence_jump_resyncs_and_a_stray_packet_does_not() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    // The sender renumbers at frame 50; its clock continues.
    let pkts: Vec<Pkt> = (0..100)
        .map(|k| {
            let mut p = pkt(k, 100, 0, 0);
            if k >= 50 {
                p.seq = 30_000 + k as u16;
            }
            p
        })
        .collect();
    let pops = drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 2_200 * MS);
    let s = jb.stats();
    assert_eq!(s.resyncs, 1);
    // The frame still waiting when the jump is confirmed is dropped; the
    // first packet of the new numbering is kept.
    assert_eq!(
        (s.played_frames, s.discarded, s.lost, s.late),
        (99, 1, 0, 0)
    );
    assert_eq!(played_seqs(&pops).last(), Some(&(30_099)));

    let mut jb = JitterBuffer::new(JitterConfig::default());
    let mut pkts: Vec<Pkt> = (0..50).map(|k| pkt(k, 100, 0, 0)).collect();
    let mut stray = pkt(20, 100, 0, MS);
    stray.seq = 20_000;
    pkts.push(stray);
    drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 1_100 * MS);
    let s = jb.stats();
    assert_eq!(
        (s.resyncs, s.discarded, s.played_frames, s.lost),
        (0, 1, 50, 0)
    );
}

#[test]
fn a_timestamp_jump_resyncs_without_losing_audio() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let pkts: Vec<Pkt> = (0..100)
        .map(|k| {
            let mut p = pkt(k, 7, 0, 0);
            if k >= 50 {
                p.ts = p.ts.wrapping_add(2_000_000_000);
            }
            p
        })
        .collect();
    let pops = drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 2_030 * MS);
    assert_eq!(
        played_seqs(&pops),
        (0..100).map(|k| 7 + k).collect::<Vec<u16>>()
    );
    let s = jb.stats();
    assert_eq!(
        (s.resyncs, s.lost, s.late, s.discarded, s.concealed_frames),
        (1, 0, 0, 0, 0)
    );
    assert_eq!(s.delay_ms_sum, 50 * 100);
}

#[test]
fn a_pause_in_the_stream_stays_silent_and_playout_resumes_on_time() {
    // Silence suppression: sequence numbers continue, the timestamp and
    // the arrivals skip the pause.
    for pause_frames in [50usize, 250] {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let pkts: Vec<Pkt> = (0..100)
            .map(|k| {
                let skip = if k >= 50 { pause_frames } else { 0 };
                let mut p = pkt(k + skip, 7, 0, 0);
                p.seq = 7 + k as u16;
                p
            })
            .collect();
        let end = BASE + (20 * (100 + pause_frames) as u64 + 200) * MS;
        let pops = drive(&mut jb, &pkts, BASE + 10 * MS, end);
        let s = jb.stats();
        assert_eq!(
            (s.played_frames, s.lost, s.late, s.discarded),
            (100, 0, 0, 0),
            "{pause_frames}"
        );
        // The talkspurt after the pause is played 50 ms after arrival
        // again (a 5 s pause re-anchors, a 1 s one keeps the schedule).
        assert_eq!(s.resyncs, u64::from(pause_frames > 100));
        let last = pops.iter().rev().find_map(|p| p.played).unwrap();
        let at = pops.iter().rev().find(|p| p.played.is_some()).unwrap().now;
        assert_eq!(at - last.arrival_us, 50 * MS, "{pause_frames}");
        // Silence (after 60 ms of fading concealment) during the pause.
        let silent = pops.iter().filter(|p| p.kind == FrameKind::Silence).count();
        assert!(silent + 10 >= pause_frames, "{pause_frames}: {silent}");
    }
}

#[test]
fn a_long_loss_is_concealed_then_silent() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let pkts: Vec<Pkt> = (0..60)
        .filter(|k| !(20..30).contains(k))
        .map(|k| pkt(k, 0, 0, 0))
        .collect();
    let pops = drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 1_230 * MS);
    let gap: Vec<&Pop> = pops
        .iter()
        .filter(|p| p.now >= BASE + 450 * MS && p.now < BASE + 650 * MS)
        .collect();
    // The loss outlasts what was buffered: concealment for 60 ms, then
    // silence, until the next packet (at 600 ms) shows that the frames
    // were lost; the last two are concealed as lost in their own time
    // (silently, 60 ms are over).
    let want: Vec<FrameKind> = (0..10)
        .map(|i| {
            if !(3..8).contains(&i) {
                FrameKind::Concealed
            } else {
                FrameKind::Silence
            }
        })
        .collect();
    assert_eq!(gap.iter().map(|p| p.kind).collect::<Vec<_>>(), want);
    assert!(gap[0].pcm.iter().any(|&s| s != 0));
    assert!(gap[3..].iter().all(|p| p.pcm == [0; FRAME]));
    let s = jb.stats();
    assert_eq!(
        (s.lost, s.late, s.played_frames, s.concealed_frames),
        (10, 0, 50, 5)
    );
    // 450..=590 ms: due, nothing buffered.
    assert_eq!(s.underflows, 8);
    // Playout resumes on time.
    assert_eq!(s.delay_ms_sum, 50 * 50);
}

#[test]
fn an_earlier_packet_arriving_before_playout_goes_first() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let mut pkts: Vec<Pkt> = (0..20).map(|k| pkt(k, 500, 0, 0)).collect();
    pkts[0].arrival += 10 * MS;
    pkts[1].arrival -= 15 * MS;
    let pops = drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 600 * MS);
    assert_eq!(
        played_seqs(&pops),
        (0..20).map(|k| 500 + k).collect::<Vec<u16>>()
    );
    let s = jb.stats();
    assert_eq!(
        (s.reordered, s.late, s.lost, s.played_frames),
        (1, 0, 0, 20)
    );
}

#[test]
fn payloads_are_padded_or_truncated() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let mut out = [0i16; FRAME];
    jb.push(1, 0, SSRC, Codec::Pcmu, &[0x80; 80], false, 0);
    jb.push(2, 160, SSRC, Codec::Pcmu, &[], false, 20 * MS);
    jb.push(3, 320, SSRC, Codec::Pcma, &[0xAA; 400], false, 40 * MS);
    assert_eq!(jb.pop(50 * MS, &mut out), FrameKind::Audio);
    assert!(out[..80].iter().all(|&s| s == 32_124));
    assert!(out[80..].iter().all(|&s| s == 0));
    assert_eq!(jb.pop(70 * MS, &mut out), FrameKind::Audio);
    assert_eq!(out, [0; FRAME]);
    assert_eq!(jb.pop(90 * MS, &mut out), FrameKind::Audio);
    assert_eq!(out, [32_256; FRAME]);
    let s = jb.stats();
    assert_eq!((s.oversized, s.played_frames, s.received), (1, 3, 3));
}

#[test]
fn fixed_mode_keeps_the_nominal_delay_under_jitter() {
    let mut rng = fastrand::Rng::with_seed(11);
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let pkts: Vec<Pkt> = (0..500)
        .map(|k| pkt(k, 0, 0, if k == 0 { 0 } else { rng.u64(0..40 * MS) }))
        .collect();
    let pops = drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 10_100 * MS);
    for p in &pops[3..] {
        // Over the fastest of the last 128 packets, which took a few
        // hundred µs more than the first.
        assert_eq!(p.stats.target_delay_ms, 50);
        assert!(
            (45..=50).contains(&p.stats.current_delay_ms),
            "{:?}",
            p.stats
        );
    }
    let s = jb.stats();
    assert_eq!(
        (s.played_frames, s.lost, s.late, s.discarded),
        (500, 0, 0, 0)
    );
    assert_eq!((s.expanded, s.accelerated), (0, 0));
}

#[test]
fn adaptive_mode_follows_the_jitter_within_its_bounds() {
    let mut rng = fastrand::Rng::with_seed(5);
    let mut jb = JitterBuffer::new(adaptive());
    // 10 s of heavy jitter, then 10 s of none.
    let pkts: Vec<Pkt> = (0..1_000)
        .map(|k| {
            let jitter = if k == 0 || k >= 500 {
                0
            } else {
                rng.u64(0..120 * MS)
            };
            pkt(k, 0, 0, jitter)
        })
        .collect();
    let pops = drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 20_500 * MS);
    let at = |t: u64| &pops.iter().find(|p| p.now >= BASE + t * MS).unwrap().stats;
    let rough = at(10_000);
    assert!((100..=200).contains(&rough.target_delay_ms), "{rough:?}");
    assert!(
        rough.current_delay_ms + 20 >= rough.target_delay_ms,
        "{rough:?}"
    );
    // Late packets only while the delay was catching up.
    let late_rough = rough.late;
    assert!(late_rough < 25, "{rough:?}");
    let calm = at(20_000);
    assert!(calm.target_delay_ms <= 40, "{calm:?}");
    assert!(calm.current_delay_ms <= 60, "{calm:?}");
    let s = jb.stats();
    assert_eq!(s.played_frames + s.late + s.lost + s.discarded, 1_000);
    assert_eq!(s.lost, 0);
    assert!(pops
        .iter()
        .all(|p| (20..=200).contains(&p.stats.target_delay_ms)));
}

#[test]
fn adaptive_mode_starts_at_nominal_and_settles_low_on_a_clean_stream() {
    let mut jb = JitterBuffer::new(adaptive());
    let pkts: Vec<Pkt> = (0..200).map(|k| pkt(k, 0, 0, 0)).collect();
    let pops = drive(&mut jb, &pkts, BASE + 10 * MS, BASE + 4_050 * MS);
    // One second of evidence before going below the nominal delay.
    assert!(pops.iter().take(45).all(|p| p.stats.target_delay_ms == 50));
    let s = jb.stats();
    assert_eq!(s.target_delay_ms, 20);
    assert!(s.current_delay_ms <= 30, "{s:?}");
    assert_eq!((s.lost, s.late), (0, 0));
    assert_eq!(s.played_frames + s.discarded, 200);
}

#[test]
fn a_drifting_sender_clock_is_corrected() {
    // 0.5 % fast, then 0.5 % slow: 15 frames of drift a minute.
    for period_us in [19_900u64, 20_100] {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let n = 3_000;
        let pkts: Vec<Pkt> = (0..n)
            .map(|k| {
                let mut p = pkt(k, 0, 0, 0);
                p.arrival = BASE + period_us * k as u64;
                p
            })
            .collect();
        let end = BASE + period_us * n as u64 + 200 * MS;
        let pops = drive(&mut jb, &pkts, BASE + 10 * MS, end);
        for p in &pops[3..pops.len() - 12] {
            let d = p.stats.current_delay_ms;
            assert!((10..=90).contains(&d), "{period_us}: {d} ms at {}", p.now);
        }
        let s = jb.stats();
        assert_eq!((s.lost, s.late), (0, 0), "{period_us}");
        assert_eq!(s.played_frames + s.discarded, n as u64);
        if period_us < 20_000 {
            assert!(s.accelerated >= 12 && s.expanded <= 1, "{s:?}");
        } else {
            assert!(s.expanded >= 12 && s.accelerated <= 1, "{s:?}");
        }
    }
}

#[test]
fn a_stalled_playout_clock_catches_up() {
    let mut jb = JitterBuffer::new(JitterConfig::default());
    let pkts: Vec<Pkt> = (0..150).map(|k| pkt(k, 0, 0, 0)).collect();
    let mut pops = drive(&mut jb, &pkts[..20], BASE + 10 * MS, BASE + 390 * MS);
    // No pop for 200 ms (the caller's task was held up).
    pops.extend(drive(
        &mut jb,
        &pkts[20..],
        BASE + 610 * MS,
        BASE + 3_400 * MS,
    ));
    let s = jb.stats();
    assert_eq!((s.lost, s.late), (0, 0));
    assert_eq!(s.played_frames + s.discarded, 150);
    assert_eq!(s.discarded, s.accelerated);
    assert!((9..=11).contains(&s.accelerated), "{s:?}");
    assert_eq!(pops.last().unwrap().stats.current_delay_ms, 50);
}
