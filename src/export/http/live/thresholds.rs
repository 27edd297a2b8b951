//! The alert thresholds the live page evaluates: one table whose numbers are those of the shipped rules in
//! `deploy/prometheus/vitals.rules.yml` (a unit test reads that file and fails when they differ), so the
//! page raises what Prometheus would raise, on the same numbers.

/// Which value of a frame a rule compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// 1 when a target is attached.
    TargetUp,
    /// p99 latency of an operation, seconds.
    LatencyP99,
    /// Error ratio of the service.
    ErrorRatio,
    /// Longest GC pause of the last minute, seconds.
    GcPauseMax,
    /// Seconds paused in GC per second.
    PauseTimeRatio,
    /// Throttled CFS periods per period.
    ThrottledRatio,
    /// 1 while a leak is suspected.
    LeakSuspected,
    /// Projected seconds until a memory limit.
    TimeToLimit,
    /// Cgroup memory usage over its limit.
    MemoryUsedRatio,
    /// CPU use over the quota.
    CpuQuotaRatio,
    /// Utilization of a pool other than the CPU.
    PoolUtilization,
    /// p99 event-loop (or scheduling) delay, seconds.
    EventLoopP99,
}

/// Comparison a rule makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// value > threshold
    Above,
    /// value < threshold
    Below,
    /// value == threshold
    Equal,
    /// value >= threshold
    AtLeast,
}

/// One shipped alert rule, as the page evaluates it.
#[derive(Debug, Clone, Copy)]
pub struct AlertRule {
    /// The alert name in the rule file.
    pub alert: &'static str,
    /// `warning` or `critical`, the rule's severity label.
    pub severity: &'static str,
    /// What is compared.
    pub measure: Measure,
    /// How.
    pub compare: Compare,
    /// The threshold, in the measure's unit.
    pub threshold: f64,
    /// The rule's `for:` duration, seconds.
    pub for_seconds: f64,
    /// The comparison as it is written in the rule's expression (checked against the file).
    pub written: &'static str,
}

impl AlertRule {
    /// True when `value` meets the rule's condition.
    pub fn holds(&self, value: f64) -> bool {
        match self.compare {
            Compare::Above => value > self.threshold,
            Compare::Below => value < self.threshold,
            Compare::Equal => value == self.threshold,
            Compare::AtLeast => value >= self.threshold,
        }
    }
}

const fn rule(
    alert: &'static str,
    severity: &'static str,
    measure: Measure,
    compare: Compare,
    threshold: f64,
    for_seconds: f64,
    written: &'static str,
) -> AlertRule {
    AlertRule {
        alert,
        severity,
        measure,
        compare,
        threshold,
        for_seconds,
        written,
    }
}

use Compare::*;
use Measure::*;

/// The shipped alert rules the page can evaluate from one replica's own data. Rules that need an hour of
/// history (throughput drop), app pass-through metrics (circuit breaker) or exporter drop counters over
/// ten minutes are left to Prometheus.
pub const RULES: &[AlertRule] = &[
    rule(
        "VitalsTargetDown",
        "critical",
        TargetUp,
        Equal,
        0.0,
        120.0,
        "vitals_target_up == 0",
    ),
    rule(
        "VitalsLatencyP99High",
        "warning",
        LatencyP99,
        Above,
        0.5,
        600.0,
        "p99_5m > 0.5",
    ),
    rule(
        "VitalsErrorRatioHigh",
        "warning",
        ErrorRatio,
        Above,
        0.05,
        300.0,
        "ratio_rate5m > 0.05",
    ),
    rule(
        "VitalsErrorRatioCritical",
        "critical",
        ErrorRatio,
        Above,
        0.10,
        300.0,
        "ratio_rate5m > 0.10",
    ),
    rule(
        "VitalsGcPauseLong",
        "warning",
        GcPauseMax,
        Above,
        0.1,
        300.0,
        "vitals_gc_pause_max_seconds > 0.1",
    ),
    // The page's longest pause covers the last minute, the rule's `max_over_time` two: the page says
    // "firing" for the minute the pause is held, Prometheus for up to two more.
    rule(
        "VitalsGcPauseVeryLong",
        "warning",
        GcPauseMax,
        AtLeast,
        1.0,
        0.0,
        "max_over_time(vitals_gc_pause_max_seconds[2m]) >= 1",
    ),
    rule(
        "VitalsEventLoopDelayHigh",
        "warning",
        EventLoopP99,
        Above,
        0.1,
        300.0,
        "vitals_event_loop_delay_seconds{statistic=\"p99\"} > 0.1",
    ),
    rule(
        "VitalsPauseTimeRatioHigh",
        "warning",
        PauseTimeRatio,
        Above,
        0.05,
        600.0,
        "ratio_rate5m > 0.05",
    ),
    rule(
        "VitalsCpuThrottlingHigh",
        "warning",
        ThrottledRatio,
        Above,
        0.25,
        900.0,
        "> 0.25",
    ),
    rule(
        "VitalsMemoryLeakSuspected",
        "warning",
        LeakSuspected,
        Equal,
        1.0,
        1800.0,
        "vitals_memory_leak_suspected == 1",
    ),
    rule(
        "VitalsMemoryLimitIn4h",
        "critical",
        TimeToLimit,
        Below,
        14400.0,
        900.0,
        "vitals_memory_time_to_limit_seconds < 4 * 3600",
    ),
    rule(
        "VitalsMemoryHigh",
        "warning",
        MemoryUsedRatio,
        Above,
        0.8,
        900.0,
        "vitals_cgroup_memory_limit_bytes > 0.8",
    ),
    rule(
        "VitalsMemoryCritical",
        "critical",
        MemoryUsedRatio,
        Above,
        0.95,
        300.0,
        "vitals_cgroup_memory_limit_bytes > 0.95",
    ),
    rule(
        "VitalsCpuQuotaHigh",
        "warning",
        CpuQuotaRatio,
        Above,
        0.7,
        900.0,
        "{kind=\"cpu\"} > 0.7",
    ),
    rule(
        "VitalsCpuQuotaCritical",
        "critical",
        CpuQuotaRatio,
        Above,
        0.9,
        600.0,
        "{kind=\"cpu\"} > 0.9",
    ),
    rule(
        "VitalsPoolSaturated",
        "warning",
        PoolUtilization,
        Above,
        0.9,
        300.0,
        "{kind!=\"cpu\"} > 0.9",
    ),
];

/// The shipped alerts the page does not evaluate, and why: each needs what one replica's own frames do
/// not hold.
pub const LEFT_TO_PROMETHEUS: &[(&str, &str)] = &[
    (
        "VitalsThroughputDrop",
        "compares with the rate an hour earlier",
    ),
    (
        "VitalsApdexLow",
        "needs the 5-minute rates of the recording rules",
    ),
    (
        "VitalsCircuitBreakerOpen",
        "reads an app metric passed through",
    ),
    (
        "VitalsExporterDroppingData",
        "reads vitals' own drop counters over ten minutes",
    ),
    (
        "VitalsNPlusOneQueries",
        "needs ten-minute increases held for ten minutes; the page lists the N+1 offenders of the last minute",
    ),
];

/// The conditions whose onset keeps the continuous CPU profile around it: latency, pauses and
/// saturation, the troubles where the target's CPU is where an answer may be.
pub const PROFILED: &[Measure] = &[
    LatencyP99,
    GcPauseMax,
    PauseTimeRatio,
    EventLoopP99,
    ThrottledRatio,
    CpuQuotaRatio,
    PoolUtilization,
];

/// The first rule on `measure` with `severity`, for verdicts that share the alerts' numbers.
pub fn threshold(measure: Measure, severity: &str) -> f64 {
    RULES
        .iter()
        .find(|r| r.measure == measure && r.severity == severity)
        .or_else(|| RULES.iter().find(|r| r.measure == measure))
        .map_or(f64::NAN, |r| r.threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../../../deploy/prometheus/vitals.rules.yml");

    fn parse_duration(s: &str) -> f64 {
        let (n, unit) = s.split_at(s.len() - 1);
        let n: f64 = n.parse().unwrap();
        n * match unit {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => panic!("unit {unit}"),
        }
    }

    #[test]
    fn table_matches_the_shipped_rule_file() {
        let doc: yaml_serde::Value = yaml_serde::from_str(SHIPPED).unwrap();
        let rules: Vec<&yaml_serde::Value> = doc["groups"]
            .as_sequence()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_sequence().unwrap())
            .collect();
        for r in RULES {
            let shipped = rules
                .iter()
                .find(|x| x["alert"].as_str() == Some(r.alert))
                .unwrap_or_else(|| panic!("{} is not in the rule file", r.alert));
            let expr: String = shipped["expr"]
                .as_str()
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            assert!(
                expr.contains(r.written),
                "{}: expression `{expr}` does not contain `{}`",
                r.alert,
                r.written
            );
            let op = match r.compare {
                Above => ">",
                Below => "<",
                Equal => "==",
                AtLeast => ">=",
            };
            let written_threshold = r.written.rsplit(op).next().unwrap().trim();
            let number: f64 = if written_threshold == "4 * 3600" {
                14400.0
            } else {
                written_threshold.parse().unwrap()
            };
            assert_eq!(number, r.threshold, "{}", r.alert);
            assert_eq!(
                shipped["labels"]["severity"].as_str(),
                Some(r.severity),
                "{}",
                r.alert
            );
            assert_eq!(
                parse_duration(shipped["for"].as_str().unwrap()),
                r.for_seconds,
                "{}",
                r.alert
            );
        }
        // And the other way: every shipped alert is on the page or named as left to Prometheus, so a
        // new rule cannot be missed by the page unnoticed.
        for shipped in rules.iter().filter_map(|x| x["alert"].as_str()) {
            let on_page = RULES.iter().any(|r| r.alert == shipped);
            let left = LEFT_TO_PROMETHEUS.iter().any(|(a, _)| *a == shipped);
            assert!(
                on_page != left,
                "{shipped}: on the page {on_page}, left to Prometheus {left}; exactly one must hold"
            );
        }
        for (alert, _) in LEFT_TO_PROMETHEUS {
            assert!(
                rules.iter().any(|x| x["alert"].as_str() == Some(alert)),
                "{alert} is not in the rule file"
            );
        }
    }

    #[test]
    fn comparisons() {
        let r = RULES
            .iter()
            .find(|r| r.alert == "VitalsMemoryLimitIn4h")
            .unwrap();
        assert!(r.holds(3600.0) && !r.holds(14400.0));
        let r = RULES
            .iter()
            .find(|r| r.alert == "VitalsGcPauseVeryLong")
            .unwrap();
        assert!(r.holds(1.0) && !r.holds(0.999));
        assert_eq!(threshold(ErrorRatio, "critical"), 0.10);
        assert_eq!(threshold(ErrorRatio, "warning"), 0.05);
    }
}
