//! OTLP points through both readers: one corpus of points (cumulative and delta, gaps, repeats, resets,
//! invalid buckets, NaN, exponential histograms with zero, negative and positive buckets, scale changes,
//! summaries, ended series) fed, step by step, to the app metric store and to the runtime picker. After
//! each step the store's text exposition (and its model values, native buckets included) and the
//! runtime readings are written out, and the whole is compared with
//! `tests/fixtures/otlp_points/corpus.txt`.
//!
//! The file was written by the two readers before they shared one point module, so a difference is a
//! behaviour change of that refactor. `VITALS_BLESS=1 cargo test --test otlp_points` rewrites it.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
    summary_data_point::ValueAtQuantile, AggregationTemporality, ExponentialHistogram,
    ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use vitals::bounded::OverflowCounter;
use vitals::export::prometheus::naming::PrometheusNames;
use vitals::export::prometheus::{encode, Format};
use vitals::model::Collector;
use vitals::signal::runtime_metrics::RuntimeMetrics;
use vitals::store::app_metrics::{AppMetrics, AppMetricsConfig};

/// Start of every series: before the test ran, so the runtime picker does not take a first reading
/// as all new.
const T0: u64 = 1_700_000_000_000_000_000;
const SEC: u64 = 1_000_000_000;

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn delta(d: bool) -> i32 {
    if d {
        AggregationTemporality::Delta as i32
    } else {
        AggregationTemporality::Cumulative as i32
    }
}

/// An explicit-bucket point: `(bounds, counts, sum)` over `[start, time]` seconds after T0.
fn explicit(win: (u64, u64), bounds: &[f64], counts: &[u64], sum: f64) -> HistogramDataPoint {
    HistogramDataPoint {
        start_time_unix_nano: T0 + win.0 * SEC,
        time_unix_nano: T0 + win.1 * SEC,
        count: counts.iter().sum(),
        sum: Some(sum),
        bucket_counts: counts.to_vec(),
        explicit_bounds: bounds.to_vec(),
        ..Default::default()
    }
}

/// An exponential point; `count` is the sum of its buckets unless `count` is given.
#[allow(clippy::too_many_arguments)]
fn expo(
    win: (u64, u64),
    scale: i32,
    zero: (f64, u64),
    pos: (i32, &[u64]),
    neg: (i32, &[u64]),
    sum: f64,
    count: Option<u64>,
) -> ExponentialHistogramDataPoint {
    let total = zero.1 + pos.1.iter().sum::<u64>() + neg.1.iter().sum::<u64>();
    ExponentialHistogramDataPoint {
        start_time_unix_nano: T0 + win.0 * SEC,
        time_unix_nano: T0 + win.1 * SEC,
        count: count.unwrap_or(total),
        sum: Some(sum),
        scale,
        zero_count: zero.1,
        zero_threshold: zero.0,
        positive: Some(Buckets {
            offset: pos.0,
            bucket_counts: pos.1.to_vec(),
        }),
        negative: Some(Buckets {
            offset: neg.0,
            bucket_counts: neg.1.to_vec(),
        }),
        ..Default::default()
    }
}

fn number(win: (u64, u64), v: f64) -> NumberDataPoint {
    NumberDataPoint {
        start_time_unix_nano: T0 + win.0 * SEC,
        time_unix_nano: T0 + win.1 * SEC,
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    }
}

/// One case: a histogram shape sent as several steps, each step a point (or none).
enum Points {
    Explicit(bool, Vec<Option<HistogramDataPoint>>),
    Exponential(bool, Vec<Option<ExponentialHistogramDataPoint>>),
}

fn histogram_cases() -> Vec<(&'static str, Points)> {
    let b = [0.01, 0.1, 1.0];
    let e = |win, scale, zero, pos, neg, sum| Some(expo(win, scale, zero, pos, neg, sum, None));
    vec![
        (
            "cumulative_with_reset",
            Points::Explicit(
                false,
                vec![
                    Some(explicit((0, 10), &b, &[1, 2, 3, 0], 2.5)),
                    Some(explicit((0, 20), &b, &[2, 4, 3, 1], 5.0)),
                    // Older than what is held: ignored.
                    Some(explicit((0, 15), &b, &[9, 9, 9, 9], 9.0)),
                    // Reset: new start, counts went down.
                    Some(explicit((25, 30), &b, &[1, 0, 0, 0], 0.005)),
                ],
            ),
        ),
        (
            "delta_windows_repeats_gaps_and_new_bounds",
            Points::Explicit(
                true,
                vec![
                    Some(explicit((0, 10), &b, &[1, 1, 0, 0], 0.1)),
                    Some(explicit((10, 20), &b, &[0, 1, 1, 0], 0.6)),
                    // The same window again (an SDK retry): counted once.
                    Some(explicit((10, 20), &b, &[0, 1, 1, 0], 0.6)),
                    // A gap (20..30 never came), then other bounds: merged by bound.
                    Some(explicit((30, 40), &[0.05, 1.0], &[1, 0, 2], 4.0)),
                    // A late window in between.
                    Some(explicit((20, 30), &b, &[0, 0, 0, 1], 3.0)),
                ],
            ),
        ),
        (
            "invalid_explicit",
            Points::Explicit(
                false,
                vec![
                    Some(explicit((0, 10), &b, &[1, 1, 1], 1.0)),
                    Some(explicit((0, 11), &[0.1, 0.1, 1.0], &[1, 1, 1, 1], 1.0)),
                    Some(explicit((0, 12), &[0.1, f64::NAN, 1.0], &[1, 1, 1, 1], 1.0)),
                    Some(HistogramDataPoint {
                        count: 5,
                        ..explicit((0, 13), &b, &[1, 1, 1, 1], 1.0)
                    }),
                    Some(explicit(
                        (0, 14),
                        &(1..=600).map(f64::from).collect::<Vec<_>>(),
                        &[1; 601],
                        1.0,
                    )),
                    // Finally a good one, so the series exists.
                    Some(explicit((0, 15), &b, &[0, 0, 1, 0], 0.5)),
                ],
            ),
        ),
        (
            "nan_sum_and_no_buckets",
            Points::Explicit(
                false,
                vec![
                    Some(explicit((0, 10), &b, &[0, 1, 0, 0], f64::NAN)),
                    Some(explicit((0, 20), &[], &[], 0.0)),
                    Some(HistogramDataPoint {
                        count: 4,
                        ..explicit((0, 30), &[], &[], 7.0)
                    }),
                ],
            ),
        ),
        (
            "exponential_zero_negative_positive",
            Points::Exponential(
                false,
                vec![
                    e((0, 10), 1, (0.0, 3), (0, &[1, 2]), (0, &[]), 4.0),
                    e((0, 20), 1, (0.0, 3), (0, &[1, 2, 0, 1]), (1, &[2, 1]), 1.0),
                    e(
                        (0, 30),
                        0,
                        (0.25, 1),
                        (-1, &[1, 1, 1]),
                        (-1, &[1, 0, 4]),
                        -9.0,
                    ),
                ],
            ),
        ),
        (
            "exponential_delta_scale_changes",
            Points::Exponential(
                true,
                vec![
                    e((0, 10), 3, (0.0, 0), (4, &[1, 0, 2, 1]), (0, &[]), 3.0),
                    e((10, 20), 2, (0.0, 1), (1, &[3, 1]), (0, &[]), 5.0),
                    e((20, 30), 4, (0.0, 0), (-8, &[1, 1]), (2, &[1]), 0.5),
                ],
            ),
        ),
        (
            "exponential_invalid_and_extreme",
            Points::Exponential(
                false,
                vec![
                    e((0, 10), 21, (0.0, 0), (0, &[1]), (0, &[]), 1.0),
                    Some(expo(
                        (0, 11),
                        0,
                        (0.0, 1),
                        (0, &[1]),
                        (0, &[]),
                        1.0,
                        Some(7),
                    )),
                    e((0, 12), 0, (0.0, 0), (0, &[1; 600]), (0, &[]), 1.0),
                    // Buckets past f64's range fold into +Inf.
                    e(
                        (0, 13),
                        0,
                        (0.0, 1),
                        (1020, &[1, 2, 3, 4, 5]),
                        (0, &[]),
                        1.0,
                    ),
                    // A zero threshold above the first buckets' bounds.
                    e((0, 14), 2, (1.5, 2), (0, &[1, 1, 1, 1]), (0, &[]), 5.0),
                    // Underflowing negative scale steps.
                    e((0, 15), -10, (0.0, 1), (-2, &[1, 1]), (-2, &[1]), 1.0),
                ],
            ),
        ),
    ]
}

fn histogram_metric(
    name: &str,
    unit: &str,
    attrs: Vec<KeyValue>,
    p: &Points,
    step: usize,
) -> Option<Metric> {
    let data = match p {
        Points::Explicit(d, pts) => {
            let mut dp = pts.get(step)?.clone()?;
            dp.attributes = attrs;
            Data::Histogram(Histogram {
                data_points: vec![dp],
                aggregation_temporality: delta(*d),
            })
        }
        Points::Exponential(d, pts) => {
            let mut dp = pts.get(step)?.clone()?;
            dp.attributes = attrs;
            Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![dp],
                aggregation_temporality: delta(*d),
            })
        }
    };
    Some(Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(data),
        ..Default::default()
    })
}

/// A number case: name suffix, Some(delta) for a monotonic sum or None for a gauge, a point per step.
type NumberCase = (&'static str, Option<bool>, Vec<Option<NumberDataPoint>>);

fn number_cases() -> Vec<NumberCase> {
    vec![
        (
            "counter_delta",
            Some(true),
            vec![
                Some(number((0, 10), 1.5)),
                Some(number((10, 20), 2.0)),
                Some(number((10, 20), 2.0)),
                Some(number((20, 30), f64::NAN)),
                Some(number((30, 40), 1.0)),
            ],
        ),
        (
            "counter_cumulative",
            Some(false),
            vec![
                Some(number((0, 10), 3.0)),
                Some(number((0, 5), 1.0)),
                Some(number((0, 20), f64::INFINITY)),
                Some(NumberDataPoint {
                    value: None,
                    ..number((0, 30), 0.0)
                }),
                Some(number((35, 40), 0.5)),
            ],
        ),
        (
            "gauge",
            None,
            vec![
                Some(number((0, 10), 100.0)),
                Some(number((0, 20), f64::NAN)),
                Some(NumberDataPoint {
                    flags: 1,
                    ..number((0, 30), 0.0)
                }),
                Some(number((0, 40), 42.0)),
            ],
        ),
    ]
}

fn number_metric(
    name: &str,
    unit: &str,
    attrs: Vec<KeyValue>,
    sum: Option<bool>,
    p: &[Option<NumberDataPoint>],
    step: usize,
) -> Option<Metric> {
    let mut dp = p.get(step)?.clone()?;
    dp.attributes = attrs;
    let data = match sum {
        Some(is_delta) => Data::Sum(Sum {
            data_points: vec![dp],
            aggregation_temporality: delta(is_delta),
            is_monotonic: true,
        }),
        None => Data::Gauge(Gauge {
            data_points: vec![dp],
        }),
    };
    Some(Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(data),
        ..Default::default()
    })
}

fn summaries(step: usize) -> Option<Metric> {
    let q = |q: f64, v: f64| ValueAtQuantile {
        quantile: q,
        value: v,
    };
    let points = [
        vec![q(0.5, 1.0), q(0.99, 3.0)],
        vec![q(0.5, 1.0), q(0.5, 2.0)],
        vec![q(1.5, 1.0)],
        vec![q(0.99, 4.0), q(0.0, 0.1), q(0.5, f64::NAN)],
    ];
    let qs = points.get(step)?.clone();
    Some(Metric {
        name: "case.summary".into(),
        unit: "s".into(),
        data: Some(Data::Summary(Summary {
            data_points: vec![SummaryDataPoint {
                start_time_unix_nano: T0,
                time_unix_nano: T0 + (step as u64 + 1) * 10 * SEC,
                count: 10 * (step as u64 + 1),
                sum: 2.0 * (step as u64 + 1) as f64,
                quantile_values: qs,
                ..Default::default()
            }],
        })),
        ..Default::default()
    })
}

/// Every metric of step `step`: each case under an app name for the store, and under the runtime
/// table's names (a pause histogram in seconds, a delay histogram in milliseconds, a pause-time counter,
/// a heap gauge) for the picker, the case in an attribute.
fn step_request(step: usize) -> ExportMetricsServiceRequest {
    let mut metrics = Vec::new();
    for (case, points) in histogram_cases() {
        metrics.extend(histogram_metric(
            &format!("case.{case}"),
            "s",
            vec![],
            &points,
            step,
        ));
        metrics.extend(histogram_metric(
            "jvm.gc.duration",
            "s",
            vec![kv("jvm.gc.name", case)],
            &points,
            step,
        ));
        metrics.extend(histogram_metric(
            "go.schedule.duration",
            "ms",
            vec![kv("case", case)],
            &points,
            step,
        ));
    }
    for (case, sum, points) in number_cases() {
        metrics.extend(number_metric(
            &format!("case.{case}"),
            "s",
            vec![],
            sum,
            &points,
            step,
        ));
        let runtime = match sum {
            Some(_) => ("dotnet.gc.pause.time", "ms", vec![kv("case", case)]),
            None => (
                "jvm.memory.used_after_last_gc",
                "KiBy",
                vec![kv("jvm.memory.type", "heap"), kv("case", case)],
            ),
        };
        metrics.extend(number_metric(
            runtime.0, runtime.1, runtime.2, sum, &points, step,
        ));
    }
    metrics.extend(summaries(step));
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "corpus")],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The text exposition with each family's sample lines sorted (the store lists a family's series in
/// hash order; every family here but `target_info` holds one series).
fn sorted_exposition(text: &str) -> String {
    let mut out = String::new();
    let mut samples: Vec<&str> = Vec::new();
    let flush = |samples: &mut Vec<&str>, out: &mut String| {
        samples.sort();
        for s in samples.drain(..) {
            out.push_str(s);
            out.push('\n');
        }
    };
    for line in text.lines() {
        if line.starts_with('#') {
            flush(&mut samples, &mut out);
            out.push_str(line);
            out.push('\n');
        } else {
            samples.push(line);
        }
    }
    flush(&mut samples, &mut out);
    out
}

fn record() -> String {
    let store = AppMetrics::new(
        AppMetricsConfig {
            series_limit: 100,
            family_limit: 100,
            ttl: Duration::from_secs(3600),
            promote: vec![],
        },
        OverflowCounter::default(),
        Arc::new(PrometheusNames),
    );
    let picker = RuntimeMetrics::new(Duration::from_secs(3600));
    let mut out = String::new();
    for step in 0..6 {
        let req = step_request(step);
        let outcome = store.ingest(&req);
        picker.ingest(&req);
        writeln!(out, "=== step {step}: store {outcome:?}").unwrap();
        let mut metrics = Vec::new();
        store.collect(&mut metrics);
        metrics.sort_by(|a, b| a.name.cmp(&b.name));
        out.push_str(&sorted_exposition(&encode(&metrics, Format::Text)));
        writeln!(out, "--- store model values").unwrap();
        for m in &metrics {
            for p in &m.points {
                writeln!(out, "{} {:?} {:?}", m.name, p.start_unix_nanos, p.value).unwrap();
            }
        }
        writeln!(out, "--- runtime readings").unwrap();
        let r = picker.readings(Instant::now());
        for p in &r.pauses {
            writeln!(out, "pause {:?}", p).unwrap();
        }
        for h in &r.heap {
            writeln!(out, "heap {:?}", h).unwrap();
        }
        for d in &r.delays {
            writeln!(out, "delay {:?}", d).unwrap();
        }
    }
    out
}

#[test]
fn the_store_and_the_runtime_picker_read_the_corpus_as_recorded() {
    let got = record();
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/otlp_points/corpus.txt");
    if std::env::var_os("VITALS_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (VITALS_BLESS=1 writes it)", path.display()));
    if got != want {
        let first = got
            .lines()
            .zip(want.lines())
            .position(|(g, w)| g != w)
            .unwrap_or(got.lines().count().min(want.lines().count()));
        panic!(
            "the corpus reads differently from {} at line {}:\n got: {:?}\nwant: {:?}",
            path.display(),
            first + 1,
            got.lines().nth(first),
            want.lines().nth(first)
        );
    }
    // The recording is not trivial: every case reached both readers.
    for needle in [
        "case_exponential_zero_negative_positive_seconds_bucket",
        "case_delta_windows_repeats_gaps_and_new_bounds_seconds_count",
        "case_summary_seconds{service=\"corpus\",quantile=\"0.99\"} 4",
        "collector: \"exponential_delta_scale_changes\"",
        "delay DelayReading",
        "heap HeapReading",
    ] {
        assert!(got.contains(needle), "{needle} missing");
    }
}
