use super::*;

const FRAME_US: u64 = 20_000;
const FRAME_TS: u32 = 160;

/// Feeds packets `seqs` of one source at a steady 20 ms with no jitter.
fn feed(stats: &mut ReceiverStats, ssrc: u32, seqs: impl IntoIterator<Item = u16>) {
    for seq in seqs {
        let n = u64::from(seq);
        stats.on_packet(
            seq,
            FRAME_TS.wrapping_mul(u32::from(seq)),
            ssrc,
            n * FRAME_US,
        );
    }
}

#[test]
fn nothing_is_expected_before_the_source_passes_probation() {
    let mut stats = ReceiverStats::new();
    assert_eq!(stats.expected(), 0);
    stats.on_packet(10, 0, 7, 0);
    assert_eq!((stats.expected(), stats.received()), (0, 0));
    stats.on_packet(11, 160, 7, 20_000);
    assert_eq!((stats.expected(), stats.received()), (1, 1));
    assert_eq!(stats.ext_highest_seq(), 11);
}

#[test]
fn in_order_stream_loses_nothing() {
    let mut stats = ReceiverStats::new();
    feed(&mut stats, 1, 0..1000);
    // The first packet is the probation packet.
    assert_eq!(stats.expected(), 999);
    assert_eq!(stats.cumulative_lost(), 0);
    assert_eq!(stats.jitter_ts_units(), 0.0);
    let report = stats.take_interval();
    assert_eq!(report.fraction_lost, 0);
    assert_eq!(report.cumulative_lost, 0);
    assert_eq!(report.ext_highest_seq, 999);
}

#[test]
fn gaps_count_as_lost_and_fraction_is_per_interval() {
    let mut stats = ReceiverStats::new();
    feed(&mut stats, 1, 0..=100);
    let _ = stats.take_interval();
    // Next interval: 100 expected (101..=200), every tenth lost.
    feed(&mut stats, 1, (101..=200).filter(|s| s % 10 != 5));
    let report = stats.take_interval();
    assert_eq!(stats.cumulative_lost(), 10);
    // 10 * 256 / 100 = 25.6, truncated.
    assert_eq!(report.fraction_lost, 25);
    assert_eq!(report.cumulative_lost, 10);
    // A clean interval after it reports no loss but keeps the total.
    feed(&mut stats, 1, 201..=300);
    let report = stats.take_interval();
    assert_eq!((report.fraction_lost, report.cumulative_lost), (0, 10));
}

#[test]
fn a_long_gap_reports_its_fraction_then_nothing() {
    let mut stats = ReceiverStats::new();
    feed(&mut stats, 1, 0..=10);
    let _ = stats.take_interval();
    // Only 60 arrives: 11..=59 lost, 60 received: 49 of 50.
    feed(&mut stats, 1, [60]);
    assert_eq!(stats.take_interval().fraction_lost, (49 * 256 / 50) as u8);
    assert_eq!(stats.take_interval().fraction_lost, 0);
}

#[test]
fn duplicates_make_cumulative_loss_negative() {
    let mut stats = ReceiverStats::new();
    feed(&mut stats, 1, 0..50);
    feed(&mut stats, 1, [40, 41, 42]);
    assert_eq!(stats.cumulative_lost(), -3);
    let report = stats.take_interval();
    assert_eq!(report.cumulative_lost, -3);
    assert_eq!(report.fraction_lost, 0);
}

#[test]
fn sequence_wrap_counts_a_cycle() {
    let mut stats = ReceiverStats::new();
    feed(&mut stats, 1, (65_000..=65_535).chain(0..500));
    assert_eq!(stats.ext_highest_seq(), (1 << 16) + 499);
    assert_eq!(stats.expected(), 535 + 500);
    assert_eq!(stats.cumulative_lost(), 0);
}

#[test]
fn reordered_packets_are_not_loss() {
    let mut stats = ReceiverStats::new();
    feed(&mut stats, 1, 0..10);
    feed(&mut stats, 1, [11, 10, 13, 12, 14]);
    assert_eq!(stats.cumulative_lost(), 0);
    assert_eq!(stats.ext_highest_seq(), 14);
}

#[test]
fn a_lone_big_jump_is_ignored_and_a_confirmed_one_restarts() {
    let mut stats = ReceiverStats::new();
    feed(&mut stats, 1, 0..100);
    feed(&mut stats, 1, [20_000]);
    assert_eq!(stats.ext_highest_seq(), 99);
    feed(&mut stats, 1, [100]);
    assert_eq!(stats.cumulative_lost(), 0);
    // Two in a row after a jump: the sender restarted its numbering.
    feed(&mut stats, 1, [30_000, 30_001, 30_002]);
    assert_eq!(stats.ext_highest_seq(), 30_002);
    assert_eq!(stats.expected(), 2);
    assert_eq!(stats.received(), 2);
}

#[test]
fn a_new_ssrc_restarts_the_source_but_keeps_call_jitter() {
    let mut stats = ReceiverStats::new();
    for i in 0..100u16 {
        let wobble = if i % 2 == 0 { 0 } else { 5_000 };
        stats.on_packet(i, u32::from(i) * 160, 1, u64::from(i) * FRAME_US + wobble);
    }
    let max_before = stats.max_jitter_ms();
    assert!(max_before > 4.0);
    feed(&mut stats, 2, 500..510);
    assert_eq!(stats.ssrc(), Some(2));
    assert_eq!(stats.ssrc_changes(), 1);
    assert_eq!(stats.expected(), 9);
    assert_eq!(stats.jitter_ts_units(), 0.0);
    assert_eq!(stats.max_jitter_ms(), max_before);
    assert_eq!(stats.packets_seen(), 110);
}

#[test]
fn jitter_converges_to_the_alternating_transit_step() {
    // Transit alternates 0 / 10 ms: |D| is 10 ms = 80 units at every packet.
    let mut stats = ReceiverStats::new();
    for i in 0..500u32 {
        let wobble = if i % 2 == 0 { 0 } else { 10_000 };
        stats.on_packet(i as u16, i * FRAME_TS, 9, u64::from(i) * FRAME_US + wobble);
    }
    assert!(
        (stats.jitter_ts_units() - 80.0).abs() < 1e-6,
        "{}",
        stats.jitter_ts_units()
    );
    assert!((stats.jitter_ms() - 10.0).abs() < 1e-6);
    assert_eq!(stats.take_interval().jitter, 79); // just below 80, truncated
    assert!((stats.max_jitter_ms() - 10.0).abs() < 1e-6);
    // Starts at 0 and climbs: the call mean is below the final value.
    assert!(stats.mean_jitter_ms() > 9.0 && stats.mean_jitter_ms() < 10.0);
}

#[test]
fn jitter_ignores_a_timestamp_wrap() {
    let mut stats = ReceiverStats::new();
    let start = u32::MAX - 160 * 10;
    for i in 0..50u32 {
        stats.on_packet(
            i as u16,
            start.wrapping_add(i * 160),
            3,
            u64::from(i) * FRAME_US,
        );
    }
    assert_eq!(stats.jitter_ts_units(), 0.0);
}

#[test]
fn random_loss_reorder_and_duplicates_are_accounted_exactly() {
    let mut rng = fastrand::Rng::with_seed(0x5eed_0001);
    for _ in 0..50 {
        let mut stats = ReceiverStats::new();
        let start: u16 = rng.u16(..);
        let count = rng.u32(200..5_000);
        // Packets 0 and 1 always arrive, in order, to pass probation.
        let mut arrivals: Vec<u32> = (0..count).filter(|&i| i < 2 || rng.f64() > 0.05).collect();
        let received_unique = arrivals.len() as i64 - 1;
        // Swap a few neighbours, never before the first two.
        for i in 3..arrivals.len() {
            if rng.f64() < 0.05 {
                arrivals.swap(i - 1, i);
            }
        }
        let mut dups = 0i64;
        let mut stream = Vec::new();
        for &a in &arrivals {
            stream.push(a);
            if a >= 2 && rng.f64() < 0.02 {
                stream.push(a);
                dups += 1;
            }
        }
        let highest = *arrivals.iter().max().unwrap_or(&0);
        for (k, &i) in stream.iter().enumerate() {
            let seq = start.wrapping_add(i as u16);
            stats.on_packet(seq, i.wrapping_mul(160), 77, k as u64 * FRAME_US);
        }
        // Counted from packet 1 (packet 0 is the probation packet).
        let expected = i64::from(highest);
        assert_eq!(stats.expected() as i64, expected);
        assert_eq!(stats.cumulative_lost(), expected - received_unique - dups);
        assert_eq!(
            stats.ext_highest_seq(),
            u32::from(start) + highest,
            "start {start} highest {highest}"
        );
    }
}
