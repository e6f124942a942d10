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
mod tests;
