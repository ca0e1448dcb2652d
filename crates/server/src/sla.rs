//! The SLA view: latency percentiles, throughput, error and success rates of the
//! tasks that finished in a sliding window, compared with configured targets.
//!
//! Pure: the window takes `now` as an argument and owns no clock or task. The
//! window is a ring of fixed buckets (10 s each by default); a bucket is reused
//! once it falls out of the window, so memory stays constant however many tasks
//! finish. A finished task counts in the bucket of the time it finished.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Longest latency the histograms record exactly; longer ones are clamped to it.
const MAX_TRACKED_MS: u64 = 24 * 3600 * 1000;

/// How an ended task counts: success, error, or neither (cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Error,
    /// Cancelled by a client: not the system's success nor its failure.
    Neutral,
}

struct Bucket {
    /// Start of the bucket's interval (ms, a multiple of the bucket length).
    start_ms: u64,
    latency: Histogram<u64>,
    succeeded: u64,
    errors: u64,
    neutral: u64,
}

impl Bucket {
    fn new() -> Self {
        Bucket {
            start_ms: 0,
            latency: Histogram::new_with_bounds(1, MAX_TRACKED_MS, 2).expect("valid bounds"),
            succeeded: 0,
            errors: 0,
            neutral: 0,
        }
    }

    fn reset(&mut self, start_ms: u64) {
        self.start_ms = start_ms;
        self.latency.reset();
        self.succeeded = 0;
        self.errors = 0;
        self.neutral = 0;
    }
}

/// A sliding window of finished tasks.
pub struct Window {
    bucket_ms: u64,
    buckets: Vec<Bucket>,
}

/// What the window held at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub window_seconds: f64,
    /// Tasks that ended in the window (succeeded + errors + cancelled).
    pub finished: u64,
    pub succeeded: u64,
    pub errors: u64,
    pub cancelled: u64,
    /// Submit-to-end latency of succeeded and failed tasks, in ms; `None` with no sample.
    pub p50_ms: Option<u64>,
    pub p95_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    /// Tasks ended per second, over the part of the window the process has seen.
    pub throughput_per_s: f64,
    /// errors / (succeeded + errors); `None` when nothing succeeded or failed.
    pub error_rate: Option<f64>,
    /// succeeded / (succeeded + errors).
    pub success_rate: Option<f64>,
}

impl Window {
    /// A window of `n_buckets` buckets of `bucket_ms` each.
    pub fn new(bucket_ms: u64, n_buckets: usize) -> Window {
        assert!(bucket_ms > 0 && n_buckets > 0, "a window needs a length");
        Window {
            bucket_ms,
            buckets: (0..n_buckets).map(|_| Bucket::new()).collect(),
        }
    }

    pub fn length_ms(&self) -> u64 {
        self.bucket_ms * self.buckets.len() as u64
    }

    /// The bucket for time `at`, cleared first if it holds an older interval.
    fn bucket_mut(&mut self, at_ms: u64) -> &mut Bucket {
        let start = at_ms - at_ms % self.bucket_ms;
        let index = ((at_ms / self.bucket_ms) % self.buckets.len() as u64) as usize;
        let bucket = &mut self.buckets[index];
        if bucket.start_ms != start {
            bucket.reset(start);
        }
        bucket
    }

    /// Records a task that ended at `now_ms` after `latency_ms`.
    pub fn record(&mut self, now_ms: u64, latency_ms: u64, outcome: Outcome) {
        let bucket = self.bucket_mut(now_ms);
        match outcome {
            Outcome::Success => bucket.succeeded += 1,
            Outcome::Error => bucket.errors += 1,
            Outcome::Neutral => {
                bucket.neutral += 1;
                return;
            }
        }
        bucket
            .latency
            .saturating_record(latency_ms.clamp(1, MAX_TRACKED_MS));
    }

    /// The window's statistics at `now_ms`; `observed_since_ms` is when recording
    /// began (process start), so a young process's throughput is not understated.
    pub fn stats(&self, now_ms: u64, observed_since_ms: u64) -> Stats {
        let length = self.length_ms();
        // Buckets whose interval overlaps (now - length, now].
        let oldest_start = (now_ms - now_ms % self.bucket_ms)
            .saturating_sub(length.saturating_sub(self.bucket_ms));
        let mut merged = Histogram::<u64>::new_with_bounds(1, MAX_TRACKED_MS, 2).expect("bounds");
        let (mut succeeded, mut errors, mut neutral) = (0, 0, 0);
        for b in &self.buckets {
            let live = b.start_ms >= oldest_start && b.start_ms <= now_ms;
            let used = b.succeeded + b.errors + b.neutral > 0;
            if live && used {
                merged.add(&b.latency).expect("same bounds");
                succeeded += b.succeeded;
                errors += b.errors;
                neutral += b.neutral;
            }
        }
        let observed_ms = now_ms
            .saturating_sub(observed_since_ms.max(oldest_start))
            .clamp(1, length);
        let judged = succeeded + errors;
        let pct = |q: f64| (!merged.is_empty()).then(|| merged.value_at_quantile(q));
        Stats {
            window_seconds: length as f64 / 1000.0,
            finished: judged + neutral,
            succeeded,
            errors,
            cancelled: neutral,
            p50_ms: pct(0.50),
            p95_ms: pct(0.95),
            p99_ms: pct(0.99),
            throughput_per_s: (judged + neutral) as f64 * 1000.0 / observed_ms as f64,
            error_rate: (judged > 0).then(|| errors as f64 / judged as f64),
            success_rate: (judged > 0).then(|| succeeded as f64 / judged as f64),
        }
    }
}

/// Targets, as seed 000 states them: P95 < 500 ms, error rate < 1 %, success > 99 %.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Targets {
    /// P95 latency must stay below this (ms).
    pub p95_ms: u64,
    /// Error rate must stay below this fraction.
    pub max_error_rate: f64,
    /// Success rate must stay above this fraction.
    pub min_success_rate: f64,
}

impl Default for Targets {
    fn default() -> Self {
        Targets {
            p95_ms: 500,
            max_error_rate: 0.01,
            min_success_rate: 0.99,
        }
    }
}

/// One target's verdict: `pass`, `breach`, or `no_data` when nothing finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    /// e.g. "< 500", "< 0.01", "> 0.99".
    pub target: String,
    pub value: Option<f64>,
    pub status: Verdict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Breach,
    NoData,
}

/// Compares the window's statistics with the targets.
pub fn evaluate(stats: &Stats, targets: &Targets) -> Vec<Check> {
    let verdict = |value: Option<f64>, ok: &dyn Fn(f64) -> bool| match value {
        None => Verdict::NoData,
        Some(v) if ok(v) => Verdict::Pass,
        Some(_) => Verdict::Breach,
    };
    let p95 = stats.p95_ms.map(|v| v as f64);
    vec![
        Check {
            name: "p95_latency_ms".into(),
            target: format!("< {}", targets.p95_ms),
            value: p95,
            status: verdict(p95, &|v| v < targets.p95_ms as f64),
        },
        Check {
            name: "error_rate".into(),
            target: format!("< {}", targets.max_error_rate),
            value: stats.error_rate,
            status: verdict(stats.error_rate, &|v| v < targets.max_error_rate),
        },
        Check {
            name: "success_rate".into(),
            target: format!("> {}", targets.min_success_rate),
            value: stats.success_rate,
            status: verdict(stats.success_rate, &|v| v > targets.min_success_rate),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;

    #[test]
    fn empty_window_has_no_data() {
        let w = Window::new(10 * S, 30);
        let st = w.stats(1_000 * S, 0);
        assert_eq!(st.finished, 0);
        assert_eq!(st.p95_ms, None);
        assert_eq!(st.error_rate, None);
        let checks = evaluate(&st, &Targets::default());
        assert!(checks.iter().all(|c| c.status == Verdict::NoData));
    }

    #[test]
    fn percentiles_rates_and_throughput() {
        let mut w = Window::new(10 * S, 30);
        let now = 1_000 * S;
        // 100 tasks over the last 100 s: latencies 1..=100 ms, 2 errors, 1 cancel.
        for i in 1..=100u64 {
            let outcome = if i <= 2 {
                Outcome::Error
            } else {
                Outcome::Success
            };
            w.record(now - 100 * S + i * S - 1, i, outcome);
        }
        w.record(now, 5, Outcome::Neutral);
        let st = w.stats(now, 0);
        assert_eq!(
            (st.succeeded, st.errors, st.cancelled, st.finished),
            (98, 2, 1, 101)
        );
        // hdrhistogram with 2 significant digits: within 1 %.
        assert_eq!(st.p50_ms, Some(50));
        assert_eq!(st.p95_ms, Some(95));
        assert_eq!(st.p99_ms, Some(99));
        assert_eq!(st.error_rate, Some(0.02));
        assert_eq!(st.success_rate, Some(0.98));
        // 101 tasks over what the buckets cover: 29 whole buckets before the one
        // `now` starts (the window's length less the unfinished current bucket).
        assert!((st.throughput_per_s - 101.0 / 290.0).abs() < 1e-9, "{st:?}");
        let checks = evaluate(&st, &Targets::default());
        let by = |n: &str| checks.iter().find(|c| c.name == n).unwrap().status;
        assert_eq!(by("p95_latency_ms"), Verdict::Pass);
        assert_eq!(by("error_rate"), Verdict::Breach);
        assert_eq!(by("success_rate"), Verdict::Breach);
    }

    #[test]
    fn old_buckets_slide_out_and_are_reused() {
        let mut w = Window::new(10 * S, 3); // 30 s
        w.record(5 * S, 900, Outcome::Success);
        w.record(15 * S, 10, Outcome::Error);
        assert_eq!(w.stats(29 * S, 0).finished, 2);
        // At 35 s the window covers buckets [10, 40): the first task is gone.
        let st = w.stats(35 * S, 0);
        assert_eq!((st.succeeded, st.errors), (0, 1));
        assert_eq!(st.p95_ms, Some(10));
        // A new task at 41 s reuses the first bucket's slot without its old samples;
        // the window is now [20, 50), so the error at 15 s is gone too.
        w.record(41 * S, 20, Outcome::Success);
        let st = w.stats(41 * S, 0);
        assert_eq!((st.succeeded, st.errors), (1, 0));
        assert_eq!(st.p99_ms, Some(20));
        // Far later, everything has slid out.
        assert_eq!(w.stats(500 * S, 0).finished, 0);
    }

    #[test]
    fn young_process_throughput_uses_observed_time() {
        let mut w = Window::new(10 * S, 30);
        for _ in 0..20 {
            w.record(104 * S, 3, Outcome::Success);
        }
        // The process started at 100 s; at 110 s it has seen 10 s.
        let st = w.stats(110 * S, 100 * S);
        assert!((st.throughput_per_s - 2.0).abs() < 1e-9, "{st:?}");
    }

    #[test]
    fn slow_tasks_breach_latency() {
        let mut w = Window::new(10 * S, 30);
        for i in 0..100 {
            w.record(50 * S, if i < 90 { 100 } else { 2_000 }, Outcome::Success);
        }
        let st = w.stats(50 * S, 0);
        let checks = evaluate(&st, &Targets::default());
        assert_eq!(checks[0].status, Verdict::Breach, "{checks:?}");
        assert_eq!(checks[2].status, Verdict::Pass, "{checks:?}");
    }
}
