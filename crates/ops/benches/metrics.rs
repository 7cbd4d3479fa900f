//! Cost of the metric operations the pipeline performs per event, through the
//! ops crate's API (README quotes these figures; targets < 50 ns and < 100 ns).

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let metrics = ops::Metrics::new("bench", "0").expect("registry");
    let counter = metrics
        .counter("bench_events_total", "events")
        .expect("counter");
    let labelled = metrics
        .counter_vec("bench_kinds_total", "events by kind", &["kind"])
        .expect("counter vec");
    let kind = labelled.with_label_values(&["tool_use"]);
    let hist = metrics
        .histogram(
            "bench_latency_seconds",
            "latency",
            ops::metrics::latency_buckets(),
        )
        .expect("histogram");

    let mut g = c.benchmark_group("metrics");
    g.bench_function("counter_inc", |b| b.iter(|| black_box(&counter).inc()));
    g.bench_function("labelled_counter_inc_cached", |b| {
        b.iter(|| black_box(&kind).inc())
    });
    g.bench_function("labelled_counter_inc_lookup", |b| {
        b.iter(|| labelled.with_label_values(&[black_box("tool_use")]).inc())
    });
    g.bench_function("histogram_observe", |b| {
        b.iter(|| black_box(&hist).observe(black_box(0.0042)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
