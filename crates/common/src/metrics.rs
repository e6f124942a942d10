//! The Prometheus registry a service exposes on `/metrics`, with the RED
//! metrics of DESIGN §8 that the HTTP layer records.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// One service's metrics. Cloning shares the same collectors.
#[derive(Clone)]
pub struct Metrics {
    /// The registry served on `/metrics`; services register their own collectors here.
    pub registry: Registry,
    /// The service name used as the `service` label.
    pub service: &'static str,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    outbox_pending: IntGaugeVec,
    consumer_lag: IntGaugeVec,
}

impl Metrics {
    /// Creates the registry and the shared collectors.
    pub fn new(service: &'static str) -> Self {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new("dialstack_http_requests_total", "HTTP requests served"),
            &["service", "route", "status"],
        )
        .expect("valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "dialstack_http_request_duration_seconds",
                "HTTP request latency",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["service", "route"],
        )
        .expect("valid metric");
        let outbox_pending = IntGaugeVec::new(
            Opts::new(
                "dialstack_outbox_pending",
                "outbox rows written but not yet confirmed by the broker",
            ),
            &["service"],
        )
        .expect("valid metric");
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "dialstack_consumer_lag_messages",
                "messages waiting for this service's consumer: queue depth (RabbitMQ) or committed-offset lag (Kafka)",
            ),
            &["service", "channel"],
        )
        .expect("valid metric");
        for c in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_duration.clone()),
            Box::new(outbox_pending.clone()),
            Box::new(consumer_lag.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        // process_cpu_seconds_total, process_resident_memory_bytes,
        // process_open_fds, ...: the system-load row of the dashboards.
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metrics registered once");
        Self {
            registry,
            service,
            http_requests,
            http_duration,
            outbox_pending,
            consumer_lag,
        }
    }

    /// Registers a service-specific collector.
    pub fn register<C: prometheus::core::Collector + Clone + 'static>(&self, c: &C) -> C {
        self.registry
            .register(Box::new(c.clone()))
            .expect("metric registered once");
        c.clone()
    }

    /// Records one served request.
    pub fn observe_http(&self, route: &str, status: u16, seconds: f64) {
        self.http_requests
            .with_label_values(&[self.service, route, &status.to_string()])
            .inc();
        self.http_duration
            .with_label_values(&[self.service, route])
            .observe(seconds);
    }

    /// Sets the outbox backlog gauge.
    pub fn set_outbox_pending(&self, n: i64) {
        self.outbox_pending
            .with_label_values(&[self.service])
            .set(n);
    }

    /// Sets the consumer lag gauge of one channel (`events`, `commands`).
    pub fn set_consumer_lag(&self, channel: &str, n: i64) {
        self.consumer_lag
            .with_label_values(&[self.service, channel])
            .set(n);
    }

    /// The text exposition of every registered collector.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
