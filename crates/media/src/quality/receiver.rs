//! RFC 3550 receiver statistics for one incoming RTP stream (appendix A.1
//! sequence validation, A.3 expected and lost packets, A.8 interarrival
//! jitter), at the 8 kHz RTP clock of G.711.

/// RTP clock rate of G.711 (and of every narrow-band payload we carry).
pub const CLOCK_RATE_HZ: u32 = 8000;

/// A forward jump of the sequence number still taken as "in order, some
/// packets lost" (RFC 3550 A.1).
const MAX_DROPOUT: u16 = 3000;
/// How far back a sequence number may be and still count as reordered
/// rather than as a restart of the sender (RFC 3550 A.1).
const MAX_MISORDER: u16 = 100;
/// In-sequence packets a new source needs before it is believed (RFC 3550 A.1).
const MIN_SEQUENTIAL: u8 = 2;
const SEQ_MOD: u32 = 1 << 16;
/// Largest and smallest cumulative loss a report block can carry (24-bit signed).
const LOST_24_MAX: i64 = 0x7F_FFFF;
const LOST_24_MIN: i64 = -0x80_0000;

/// What one reception report block says about the stream since the
/// previous [`ReceiverStats::take_interval`] (RFC 3550 section 6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntervalReport {
    /// Packets lost in the interval over packets expected, in 1/256 (0 when
    /// duplicates outnumber losses).
    pub fraction_lost: u8,
    /// Expected minus received since the stream started, clamped to the
    /// 24-bit signed range; negative when duplicates arrived.
    pub cumulative_lost: i32,
    /// Cycles of the 16-bit sequence number in the high half, the highest
    /// sequence number in the low half.
    pub ext_highest_seq: u32,
    /// Interarrival jitter in RTP timestamp units (1/8 ms), truncated.
    pub jitter: u32,
}

/// Receiver statistics for one incoming stream, fed one packet at a time.
///
/// A packet from a new SSRC restarts the per-source numbers (sequence
/// state, counters, the jitter estimate); the call-wide jitter mean and
/// maximum ([`ReceiverStats::mean_jitter_ms`], [`ReceiverStats::max_jitter_ms`])
/// carry on across the change.
///
/// As in RFC 3550 A.1, a new source is on probation until
/// two packets with consecutive sequence numbers arrived; packets before
/// that count neither as expected nor as received.
#[derive(Debug, Clone, Default)]
pub struct ReceiverStats {
    /// SSRC of the source the per-source fields describe; `None` before the first packet.
    ssrc: Option<u32>,
    /// The source passed probation: `base_seq`, `cycles` and the counters are meaningful.
    validated: bool,
    /// Highest sequence number seen (16 bits, as on the wire).
    max_seq: u16,
    /// Wraps of the sequence number, times 2^16.
    cycles: u32,
    /// First sequence number counted.
    base_seq: u32,
    /// The sequence number after a large jump; a packet carrying it confirms a restart.
    bad_seq: u32,
    /// In-sequence packets still needed before the source is believed.
    probation: u8,
    /// Packets counted as received, duplicates included (RFC 3550 A.3).
    received: u64,
    /// `expected()` at the previous `take_interval`.
    expected_prior: u64,
    /// `received` at the previous `take_interval`.
    received_prior: u64,
    /// RTP timestamp and arrival time (µs) of the previous packet, for A.8.
    last: Option<(u32, u64)>,
    /// Interarrival jitter J in timestamp units.
    jitter: f64,
    /// Sum of J after every jitter update, over the call.
    jitter_sum: f64,
    /// Jitter updates over the call.
    jitter_samples: u64,
    /// Largest J over the call.
    jitter_max: f64,
    /// Packets handed to `on_packet`, whatever became of them.
    packets_seen: u64,
    /// Times the SSRC changed after the first packet.
    ssrc_changes: u32,
}

impl ReceiverStats {
    /// Statistics before the first packet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Account for one packet of the stream, `arrival_us` being when it
    /// arrived (any monotonic microsecond clock of the caller's).
    pub fn on_packet(&mut self, seq: u16, rtp_ts: u32, ssrc: u32, arrival_us: u64) {
        self.packets_seen += 1;
        if self.ssrc != Some(ssrc) {
            if self.ssrc.is_some() {
                self.ssrc_changes += 1;
            }
            self.start_source(ssrc, seq);
        }
        match self.update_seq(seq) {
            SeqVerdict::Counted | SeqVerdict::Probation => {}
            SeqVerdict::Resynced => {
                // The sender restarted: its timestamps need not follow the old ones.
                self.last = None;
            }
            SeqVerdict::Rejected => return,
        }
        self.update_jitter(rtp_ts, arrival_us);
    }

    /// SSRC of the stream being measured.
    pub fn ssrc(&self) -> Option<u32> {
        self.ssrc
    }

    /// Times the SSRC changed after the first packet.
    pub fn ssrc_changes(&self) -> u32 {
        self.ssrc_changes
    }

    /// Packets handed to [`ReceiverStats::on_packet`], including those
    /// rejected or on probation.
    pub fn packets_seen(&self) -> u64 {
        self.packets_seen
    }

    /// Packets counted as received for the current source (duplicates included).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Extended highest sequence number: wraps in the high 16 bits.
    pub fn ext_highest_seq(&self) -> u32 {
        self.cycles.wrapping_add(u32::from(self.max_seq))
    }

    /// Packets expected from the current source: extended highest sequence
    /// number minus the first one, plus one (RFC 3550 A.3).
    pub fn expected(&self) -> u64 {
        if !self.validated {
            return 0;
        }
        u64::from(self.ext_highest_seq().wrapping_sub(self.base_seq)) + 1
    }

    /// Expected minus received; negative when duplicates outnumber losses.
    pub fn cumulative_lost(&self) -> i64 {
        // Both are far below 2^63 for any real call.
        self.expected() as i64 - self.received as i64
    }

    /// Interarrival jitter J in RTP timestamp units.
    pub fn jitter_ts_units(&self) -> f64 {
        self.jitter
    }

    /// Interarrival jitter J in milliseconds.
    pub fn jitter_ms(&self) -> f64 {
        ts_units_to_ms(self.jitter)
    }

    /// Mean of J over every jitter update of the call, in milliseconds (0 before any).
    pub fn mean_jitter_ms(&self) -> f64 {
        if self.jitter_samples == 0 {
            return 0.0;
        }
        ts_units_to_ms(self.jitter_sum / self.jitter_samples as f64)
    }

    /// Largest J seen over the call, in milliseconds.
    pub fn max_jitter_ms(&self) -> f64 {
        ts_units_to_ms(self.jitter_max)
    }

    /// Close one report interval: the numbers of a reception report block
    /// (RFC 3550 A.3), starting the next interval.
    pub fn take_interval(&mut self) -> IntervalReport {
        let expected = self.expected();
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval.saturating_sub(received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval == 0 {
            0
        } else {
            // Every expected packet lost would be 256: the field tops out at 255.
            ((lost_interval << 8) / expected_interval).min(255) as u8
        };
        IntervalReport {
            fraction_lost,
            cumulative_lost: self.cumulative_lost().clamp(LOST_24_MIN, LOST_24_MAX) as i32,
            ext_highest_seq: self.ext_highest_seq(),
            // `as` saturates; J is never negative.
            jitter: self.jitter as u32,
        }
    }

    fn start_source(&mut self, ssrc: u32, seq: u16) {
        *self = Self {
            ssrc: Some(ssrc),
            jitter_sum: self.jitter_sum,
            jitter_samples: self.jitter_samples,
            jitter_max: self.jitter_max,
            packets_seen: self.packets_seen,
            ssrc_changes: self.ssrc_changes,
            ..Self::default()
        };
        self.init_seq(seq);
        self.validated = false;
        self.max_seq = seq.wrapping_sub(1);
        self.probation = MIN_SEQUENTIAL;
    }

    fn init_seq(&mut self, seq: u16) {
        self.validated = true;
        self.base_seq = u32::from(seq);
        self.max_seq = seq;
        self.bad_seq = SEQ_MOD + 1; // matches no sequence number
        self.cycles = 0;
        self.received = 0;
        self.received_prior = 0;
        self.expected_prior = 0;
    }

    /// RFC 3550 A.1 `update_seq`.
    fn update_seq(&mut self, seq: u16) -> SeqVerdict {
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init_seq(seq);
                    self.received += 1;
                    return SeqVerdict::Counted;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return SeqVerdict::Probation;
        }
        let mut verdict = SeqVerdict::Counted;
        if udelta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles = self.cycles.wrapping_add(SEQ_MOD);
            }
            self.max_seq = seq;
        } else if u32::from(udelta) <= SEQ_MOD - u32::from(MAX_MISORDER) {
            if u32::from(seq) == self.bad_seq {
                // Two sequential packets after a big jump: the sender restarted.
                self.init_seq(seq);
                verdict = SeqVerdict::Resynced;
            } else {
                self.bad_seq = (u32::from(seq) + 1) & (SEQ_MOD - 1);
                return SeqVerdict::Rejected;
            }
        }
        // else: a duplicate or reordered packet, counted as received
        self.received += 1;
        verdict
    }

    /// RFC 3550 A.8: J += (|D| - J) / 16, D the change in transit time
    /// between this packet and the previous one in arrival order.
    fn update_jitter(&mut self, rtp_ts: u32, arrival_us: u64) {
        if let Some((prev_ts, prev_arrival_us)) = self.last {
            let arrival_delta_us = arrival_us as i128 - prev_arrival_us as i128;
            let arrival_delta_ts = arrival_delta_us as f64 * f64::from(CLOCK_RATE_HZ) / 1e6;
            // Signed so that a timestamp wrap or a reordered packet is a small step.
            let ts_delta = f64::from(rtp_ts.wrapping_sub(prev_ts) as i32);
            let d = arrival_delta_ts - ts_delta;
            self.jitter += (d.abs() - self.jitter) / 16.0;
            self.jitter_sum += self.jitter;
            self.jitter_samples += 1;
            self.jitter_max = self.jitter_max.max(self.jitter);
        }
        self.last = Some((rtp_ts, arrival_us));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SeqVerdict {
    /// Counted as received (in order, after a gap, duplicate or reordered).
    Counted,
    /// The source is not believed yet.
    Probation,
    /// Counted, and the sequence restarted here.
    Resynced,
    /// A large jump not (yet) confirmed: ignored.
    Rejected,
}

fn ts_units_to_ms(units: f64) -> f64 {
    units * 1000.0 / f64::from(CLOCK_RATE_HZ)
}

#[cfg(test)]
mod tests {
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
            let mut arrivals: Vec<u32> =
                (0..count).filter(|&i| i < 2 || rng.f64() > 0.05).collect();
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
}
