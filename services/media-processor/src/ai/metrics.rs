//! Prometheus metrics of the speech engines.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};

/// The speech engines' metrics. Cloning shares the same collectors.
#[derive(Clone)]
pub struct AiMetrics {
    /// `dialstack_tts_seconds`: engine time of uncached renders.
    pub tts_seconds: Histogram,
    /// `dialstack_tts_cache_total{result="hit|miss"}`.
    pub tts_cache: IntCounterVec,
    /// `dialstack_tts_waits_total`: renders that waited for an engine slot.
    pub tts_waits: IntCounter,
    /// `dialstack_asr_seconds`: engine time of recognitions and transcripts.
    pub asr_seconds: Histogram,
    /// `dialstack_asr_waits_total`: recognitions that waited for a slot.
    pub asr_waits: IntCounter,
    /// `dialstack_asr_rejected_total`: recognitions refused, queue full.
    pub asr_rejected: IntCounter,
    /// `dialstack_asr_inflight`: recognizer processes running now.
    pub asr_inflight: IntGauge,
}

impl AiMetrics {
    /// Unregistered metrics.
    pub fn new() -> prometheus::Result<Self> {
        let tts_cache = IntCounterVec::new(
            Opts::new(
                "dialstack_tts_cache_total",
                "text to speech renders by cache result: hit (memory or disk), miss (engine ran)",
            ),
            &["result"],
        )?;
        for r in ["hit", "miss"] {
            tts_cache.with_label_values(&[r]);
        }
        Ok(Self {
            tts_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "dialstack_tts_seconds",
                    "text to speech engine time of uncached renders",
                )
                .buckets(vec![0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0]),
            )?,
            tts_cache,
            tts_waits: IntCounter::new(
                "dialstack_tts_waits_total",
                "text to speech renders that waited for an engine slot",
            )?,
            asr_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "dialstack_asr_seconds",
                    "speech recognition engine time per recognition or transcript",
                )
                .buckets(vec![
                    0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 120.0,
                ]),
            )?,
            asr_waits: IntCounter::new(
                "dialstack_asr_waits_total",
                "speech recognitions that waited for a recognizer slot",
            )?,
            asr_rejected: IntCounter::new(
                "dialstack_asr_rejected_total",
                "speech recognitions refused because the recognizer queue was full",
            )?,
            asr_inflight: IntGauge::new(
                "dialstack_asr_inflight",
                "speech recognizer processes running now",
            )?,
        })
    }

    /// Registers every metric.
    pub fn register(&self, m: &dialstack_common::metrics::Metrics) {
        m.register(&self.tts_seconds);
        m.register(&self.tts_cache);
        m.register(&self.tts_waits);
        m.register(&self.asr_seconds);
        m.register(&self.asr_waits);
        m.register(&self.asr_rejected);
        m.register(&self.asr_inflight);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_registers_once_under_its_name() {
        let m = dialstack_common::metrics::Metrics::new("media-processor");
        let ai = AiMetrics::new().unwrap();
        ai.register(&m);
        ai.tts_seconds.observe(0.1);
        ai.asr_seconds.observe(0.2);
        let names: Vec<String> = m
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        for n in [
            "dialstack_tts_seconds",
            "dialstack_tts_cache_total",
            "dialstack_tts_waits_total",
            "dialstack_asr_seconds",
            "dialstack_asr_waits_total",
            "dialstack_asr_rejected_total",
            "dialstack_asr_inflight",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
    }
}
