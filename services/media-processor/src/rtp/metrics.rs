//! Prometheus metrics of the audio path. Counters move every RTCP interval
//! (5 s) and at the end of a call, not per packet; per-call figures
//! (MOS, jitter, playout delay) are histograms observed when a call ends.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts};

/// The audio path's metrics.
#[derive(Clone)]
pub struct MediaMetrics {
    /// `dialstack_call_mos`: E-model MOS per answered call.
    pub mos: Histogram,
    /// `dialstack_rtp_jitter_seconds`: RFC 3550 interarrival jitter (mean per call).
    pub jitter: Histogram,
    /// `dialstack_jitter_buffer_delay_seconds`: mean playout delay per call.
    pub playout_delay: Histogram,
    /// `dialstack_jitter_buffer_target_delay_seconds`: target delay at the end of each call.
    pub target_delay: Histogram,
    /// `dialstack_rtp_packets_received_total`: audio packets into the jitter buffer.
    pub received: IntCounter,
    /// `dialstack_rtp_packets_lost_total`: packets that never arrived.
    pub lost: IntCounter,
    /// `dialstack_jitter_buffer_late_packets_total`: arrived after their playout time.
    pub late: IntCounter,
    /// `dialstack_jitter_buffer_packets_total{event}`: duplicate, reordered.
    pub events: IntCounterVec,
    /// `dialstack_rtp_concealed_seconds_total`: audio made up by loss concealment.
    pub concealed: prometheus::Counter,
    /// `dialstack_jitter_buffer_underflows_total`: frames due with nothing buffered.
    pub underflows: IntCounter,
    /// `dialstack_rtcp_packets_total{direction,result}`.
    pub rtcp: IntCounterVec,
    /// `dialstack_media_calls_completed_total{outcome}`: calls this instance
    /// ended (the canary gate's denominator, per pod).
    pub completed: IntCounterVec,
    /// `dialstack_media_call_failures_total`: those that were failures
    /// ([`dialstack_contract::is_failure`]).
    pub failures: IntCounter,
}

impl MediaMetrics {
    /// Unregistered metrics.
    pub fn new() -> prometheus::Result<Self> {
        let events = IntCounterVec::new(
            Opts::new(
                "dialstack_jitter_buffer_packets_total",
                "jitter-buffer events on received packets: duplicate, reordered",
            ),
            &["event"],
        )?;
        for e in ["duplicate", "reordered"] {
            events.with_label_values(&[e]);
        }
        let rtcp = IntCounterVec::new(
            Opts::new(
                "dialstack_rtcp_packets_total",
                "RTCP compound packets by direction (sent, received) and result (ok, malformed, foreign)",
            ),
            &["direction", "result"],
        )?;
        for (d, r) in [
            ("sent", "ok"),
            ("received", "ok"),
            ("received", "malformed"),
            ("received", "foreign"),
        ] {
            rtcp.with_label_values(&[d, r]);
        }
        Ok(Self {
            mos: Histogram::with_opts(
                HistogramOpts::new(
                    "dialstack_call_mos",
                    "E-model MOS estimate per answered call",
                )
                .buckets(vec![1.0, 2.0, 2.6, 3.1, 3.6, 3.8, 4.0, 4.2, 4.3, 4.4, 4.5]),
            )?,
            jitter: Histogram::with_opts(
                HistogramOpts::new(
                    "dialstack_rtp_jitter_seconds",
                    "RFC 3550 interarrival jitter of the incoming stream, mean per call",
                )
                .buckets(vec![0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2]),
            )?,
            playout_delay: Histogram::with_opts(
                HistogramOpts::new(
                    "dialstack_jitter_buffer_delay_seconds",
                    "jitter-buffer playout delay, mean per call",
                )
                .buckets(vec![0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5]),
            )?,
            target_delay: Histogram::with_opts(
                HistogramOpts::new(
                    "dialstack_jitter_buffer_target_delay_seconds",
                    "jitter-buffer target delay at the end of each call",
                )
                .buckets(vec![0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5]),
            )?,
            received: IntCounter::new(
                "dialstack_rtp_packets_received_total",
                "RTP audio packets accepted into jitter buffers",
            )?,
            lost: IntCounter::new(
                "dialstack_rtp_packets_lost_total",
                "RTP packets that never arrived (sequence gaps)",
            )?,
            late: IntCounter::new(
                "dialstack_jitter_buffer_late_packets_total",
                "RTP packets that arrived after their playout time",
            )?,
            events,
            concealed: prometheus::Counter::new(
                "dialstack_rtp_concealed_seconds_total",
                "audio synthesized by packet-loss concealment",
            )?,
            underflows: IntCounter::new(
                "dialstack_jitter_buffer_underflows_total",
                "20 ms frames due while the jitter buffer was empty",
            )?,
            rtcp,
            completed: {
                let c = IntCounterVec::new(
                    Opts::new(
                        "dialstack_media_calls_completed_total",
                        "calls this media processor ended, by outcome",
                    ),
                    &["outcome"],
                )?;
                for o in dialstack_contract::Outcome::ALL {
                    c.with_label_values(&[o.as_str()]);
                }
                c
            },
            failures: IntCounter::new(
                "dialstack_media_call_failures_total",
                "calls this media processor ended that were failures (failed, or rejected other than 603)",
            )?,
        })
    }

    /// Registers every metric.
    pub fn register(&self, m: &dialstack_common::metrics::Metrics) {
        m.register(&self.mos);
        m.register(&self.jitter);
        m.register(&self.playout_delay);
        m.register(&self.target_delay);
        m.register(&self.received);
        m.register(&self.lost);
        m.register(&self.late);
        m.register(&self.events);
        m.register(&self.concealed);
        m.register(&self.underflows);
        m.register(&self.rtcp);
        m.register(&self.completed);
        m.register(&self.failures);
    }

    /// Counts one ended call.
    pub fn call_ended(&self, outcome: dialstack_contract::Outcome, sip_status: Option<u16>) {
        self.completed.with_label_values(&[outcome.as_str()]).inc();
        if dialstack_contract::is_failure(outcome, sip_status) {
            self.failures.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dialstack_contract::Outcome;

    #[test]
    fn ended_calls_count_by_outcome_and_failures_by_the_shared_rule() {
        let m = MediaMetrics::new().unwrap();
        m.call_ended(Outcome::AnsweredHuman, Some(200));
        m.call_ended(Outcome::Busy, Some(486));
        m.call_ended(Outcome::Rejected, Some(603));
        m.call_ended(Outcome::Rejected, Some(404));
        m.call_ended(Outcome::Failed, Some(503));
        let n = |o: &str| m.completed.with_label_values(&[o]).get();
        assert_eq!(
            (n("answered_human"), n("busy"), n("rejected"), n("failed")),
            (1, 1, 2, 1)
        );
        assert_eq!(
            n("abandoned"),
            0,
            "every outcome is exported from the start"
        );
        assert_eq!(
            m.failures.get(),
            2,
            "404 and 503; busy and decline are not failures"
        );
    }
}
