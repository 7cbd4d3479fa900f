//! The Prometheus registry both services expose on `/metrics`.
//!
//! One registry per process, created here with the process collector and the
//! `<service>_build_info` gauge already in it, so that every binary exposes the
//! same baseline an operator's dashboards rely on.

use prometheus::{
    core::Collector, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Errors from registering a metric: a programming error (duplicate name or bad
/// label set) that start-up reports instead of panicking.
#[derive(Debug, thiserror::Error)]
#[error("metric registration failed: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// A process-wide registry with helpers that create and register in one step.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry with `process_*` metrics and `{service}_build_info{version}` = 1.
    /// `service` is the metric prefix (`watcher`, `bridge`).
    pub fn new(service: &str, version: &str) -> Result<Self, MetricsError> {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let metrics = Self { registry };
        let build = metrics.gauge_vec(
            &format!("{service}_build_info"),
            "Build information; the value is always 1.",
            &["version"],
        )?;
        build.with_label_values(&[version]).set(1);
        Ok(metrics)
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn add<C: Collector + Clone + 'static>(&self, c: C) -> Result<C, MetricsError> {
        self.registry.register(Box::new(c.clone()))?;
        Ok(c)
    }

    pub fn counter(&self, name: &str, help: &str) -> Result<IntCounter, MetricsError> {
        self.add(IntCounter::new(name, help)?)
    }

    pub fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, MetricsError> {
        self.add(IntCounterVec::new(Opts::new(name, help), labels)?)
    }

    pub fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, MetricsError> {
        self.add(IntGauge::new(name, help)?)
    }

    pub fn gauge_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntGaugeVec, MetricsError> {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels)?)
    }

    /// A float gauge, for values like timestamps and dollars.
    pub fn float_gauge(&self, name: &str, help: &str) -> Result<prometheus::Gauge, MetricsError> {
        self.add(prometheus::Gauge::new(name, help)?)
    }

    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: Vec<f64>,
    ) -> Result<Histogram, MetricsError> {
        self.add(Histogram::with_opts(
            HistogramOpts::new(name, help).buckets(buckets),
        )?)
    }

    pub fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: Vec<f64>,
    ) -> Result<HistogramVec, MetricsError> {
        self.add(HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets),
            labels,
        )?)
    }

    /// The registry in Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails for metrics that cannot exist (families
        // without samples are skipped by the encoder), so an error yields what
        // was written so far rather than failing the scrape.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Latency buckets for HTTP servers and clients, in seconds.
pub fn latency_buckets() -> Vec<f64> {
    vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_has_process_and_build_info() {
        let m = Metrics::new("demo", "1.2.3").unwrap();
        let c = m
            .counter_vec("demo_things_total", "Things.", &["kind"])
            .unwrap();
        c.with_label_values(&["a"]).inc();
        let text = m.encode();
        assert!(
            text.contains("demo_build_info{version=\"1.2.3\"} 1"),
            "{text}"
        );
        assert!(text.contains("demo_things_total{kind=\"a\"} 1"), "{text}");
        #[cfg(target_os = "linux")]
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
    }

    #[test]
    fn duplicate_registration_is_an_error_not_a_panic() {
        let m = Metrics::new("demo", "1").unwrap();
        m.counter("demo_x_total", "x").unwrap();
        assert!(m.counter("demo_x_total", "x").is_err());
    }
}
