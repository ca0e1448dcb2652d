//! The load an agent reports in each heartbeat (seed 004's `cpu_usage`,
//! `error_rate`, `response_time_ms`), which the server folds into its health
//! score.
//!
//! - `error_rate` and `response_time_ms` are taken over the last [`WINDOW`]
//!   finished attempts that ended within the last [`MAX_AGE_HEARTBEATS`]
//!   heartbeat intervals (a plain sliding window, not a weighted average, so a
//!   figure can be checked by hand). The age bound is what lets an agent back in:
//!   the server leaves an agent whose error rate is high out of routing, so it
//!   gets no new results, and without it its last failures would count forever.
//!   A permanent failure is the task's own fault
//!   (bad input) and is left out of the error rate altogether, neither an error nor
//!   a success, as the server's circuit breaker treats it; its duration still
//!   counts in the response time, since the agent did spend that time answering.
//!   Timeouts and panics count as errors. With no result yet both are absent.
//! - `cpu_usage` is the share of the machine's CPUs the agent process used
//!   between two heartbeats: user plus system time from `/proc/self/stat` over the
//!   wall time elapsed, divided by the CPUs available to the process. Linux only;
//!   absent elsewhere and until a first interval of at least
//!   [`MIN_CPU_INTERVAL`] has passed.

use crate::handler::Outcome;
use crate::FailureKind;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// Results the error rate and response time are taken over.
pub(crate) const WINDOW: usize = 100;

/// Results older than this many heartbeat intervals no longer count (10 s with
/// the server's default 2 s interval, 150 s with seed 004's 30 s).
pub(crate) const MAX_AGE_HEARTBEATS: u32 = 5;

/// A CPU figure over less wall time than this is too coarse (times come in ticks
/// of 10 ms): the previous figure is reported instead.
pub(crate) const MIN_CPU_INTERVAL: Duration = Duration::from_secs(1);

/// Linux reports process CPU times in ticks of 1/100 s (`USER_HZ`, fixed by the
/// kernel ABI on the architectures Baton runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// How a finished attempt counts in the error rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Success,
    /// The agent's failure: retryable, timeout, panic.
    Error,
    /// A permanent failure: the task's fault, not counted in the error rate.
    TaskFault,
}

impl Class {
    pub(crate) fn of(outcome: &Outcome) -> Class {
        match outcome {
            Ok(_) => Class::Success,
            Err(e) => match e.kind() {
                FailureKind::Permanent => Class::TaskFault,
                FailureKind::Retryable | FailureKind::Timeout => Class::Error,
            },
        }
    }
}

/// The last [`WINDOW`] results, each with when it finished.
#[derive(Debug, Default)]
pub(crate) struct Window {
    results: VecDeque<(Class, Duration, Instant)>,
}

impl Window {
    pub(crate) fn record(&mut self, class: Class, elapsed: Duration, finished: Instant) {
        if self.results.len() == WINDOW {
            self.results.pop_front();
        }
        self.results.push_back((class, elapsed, finished));
    }

    /// Forgets results that finished `max_age` or longer before `now`.
    pub(crate) fn expire(&mut self, now: Instant, max_age: Duration) {
        while self
            .results
            .front()
            .is_some_and(|(_, _, at)| now.saturating_duration_since(*at) >= max_age)
        {
            self.results.pop_front();
        }
    }

    /// Errors over errors plus successes in the window; `None` when neither.
    pub(crate) fn error_rate(&self) -> Option<f64> {
        let (mut n_errors, mut n_counted) = (0u32, 0u32);
        for (class, _, _) in &self.results {
            match class {
                Class::Success => n_counted += 1,
                Class::Error => {
                    n_errors += 1;
                    n_counted += 1;
                }
                Class::TaskFault => {}
            }
        }
        (n_counted > 0).then(|| f64::from(n_errors) / f64::from(n_counted))
    }

    /// Mean duration of every result in the window, in milliseconds.
    pub(crate) fn response_time_ms(&self) -> Option<f64> {
        if self.results.is_empty() {
            return None;
        }
        let total: Duration = self.results.iter().map(|(_, d, _)| *d).sum();
        Some(total.as_secs_f64() * 1000.0 / self.results.len() as f64)
    }
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line, in ticks. The
/// command name (field 2) is in parentheses and may hold spaces, so fields are
/// counted from the last `)`.
pub(crate) fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time used over wall time, as a share of `n_cpus`, clamped to 0..=1.
pub(crate) fn cpu_share(ticks_used: u64, wall: Duration, n_cpus: usize) -> Option<f64> {
    let wall_s = wall.as_secs_f64();
    if wall_s <= 0.0 || n_cpus == 0 {
        return None;
    }
    let cpu_s = ticks_used as f64 / TICKS_PER_SECOND;
    Some((cpu_s / wall_s / n_cpus as f64).clamp(0.0, 1.0))
}

#[cfg(target_os = "linux")]
fn read_cpu_ticks() -> Option<u64> {
    parse_cpu_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

#[cfg(not(target_os = "linux"))]
fn read_cpu_ticks() -> Option<u64> {
    None
}

/// Successive CPU readings of this process.
#[derive(Debug)]
struct CpuSampler {
    /// The baseline: ticks and wall clock at the previous accepted sample.
    last: Option<(u64, std::time::Instant)>,
    share: Option<f64>,
    n_cpus: usize,
}

impl CpuSampler {
    fn new() -> Self {
        Self {
            last: read_cpu_ticks().map(|t| (t, std::time::Instant::now())),
            share: None,
            n_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    fn sample(&mut self) -> Option<f64> {
        let ticks = read_cpu_ticks()?;
        let now = std::time::Instant::now();
        match self.last {
            Some((last_ticks, at)) => {
                let wall = now.duration_since(at);
                if wall >= MIN_CPU_INTERVAL {
                    self.share = cpu_share(ticks.saturating_sub(last_ticks), wall, self.n_cpus);
                    self.last = Some((ticks, now));
                }
            }
            None => self.last = Some((ticks, now)),
        }
        self.share
    }
}

/// What the agent loop keeps to fill its heartbeats.
#[derive(Debug)]
pub(crate) struct Load {
    window: Window,
    cpu: CpuSampler,
    /// [`MAX_AGE_HEARTBEATS`] heartbeat intervals of the current session.
    max_age: Duration,
}

impl Load {
    pub(crate) fn new() -> Self {
        Self {
            window: Window::default(),
            cpu: CpuSampler::new(),
            max_age: Duration::from_secs(150),
        }
    }

    /// The heartbeat interval the server asked for.
    pub(crate) fn set_heartbeat_interval(&mut self, interval: Duration) {
        self.max_age = interval * MAX_AGE_HEARTBEATS;
    }

    /// One attempt that just finished, and how long its handler ran.
    pub(crate) fn record(&mut self, outcome: &Outcome, elapsed: Duration) {
        self.window
            .record(Class::of(outcome), elapsed, Instant::now());
    }

    /// The heartbeat's load fields as of now.
    pub(crate) fn heartbeat_fields(&mut self) -> (Option<f64>, Option<f64>, Option<f64>) {
        self.window.expire(Instant::now(), self.max_age);
        (
            self.cpu.sample(),
            self.window.error_rate(),
            self.window.response_time_ms(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HandlerError;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Records without a finishing time that matters.
    fn record(w: &mut Window, class: Class, elapsed: Duration) {
        w.record(class, elapsed, Instant::now());
    }

    #[test]
    fn outcomes_are_classed_as_the_breaker_does() {
        assert_eq!(Class::of(&Ok(serde_json::json!(1))), Class::Success);
        assert_eq!(
            Class::of(&Err(HandlerError::retryable("flaky"))),
            Class::Error
        );
        assert_eq!(
            Class::of(&Err(HandlerError::retry_after(ms(5), "later"))),
            Class::Error
        );
        assert_eq!(Class::of(&Err(HandlerError::timeout("slow"))), Class::Error);
        assert_eq!(
            Class::of(&Err(HandlerError::permanent("bad input"))),
            Class::TaskFault
        );
    }

    #[test]
    fn empty_window_reports_nothing() {
        let w = Window::default();
        assert_eq!(w.error_rate(), None);
        assert_eq!(w.response_time_ms(), None);
    }

    #[test]
    fn permanent_failures_count_in_time_but_not_in_errors() {
        let mut w = Window::default();
        for _ in 0..3 {
            record(&mut w, Class::Success, ms(100));
        }
        record(&mut w, Class::Error, ms(200));
        record(&mut w, Class::TaskFault, ms(50));
        // 1 error out of 4 counted results; (300 + 200 + 50) / 5 ms.
        assert_eq!(w.error_rate(), Some(0.25));
        assert_eq!(w.response_time_ms(), Some(110.0));

        let mut only_faults = Window::default();
        record(
            &mut only_faults,
            Class::TaskFault,
            Duration::from_micros(1_500),
        );
        assert_eq!(only_faults.error_rate(), None);
        assert_eq!(only_faults.response_time_ms(), Some(1.5));
    }

    #[test]
    fn only_the_last_hundred_results_count() {
        let mut w = Window::default();
        // 50 errors of 1 s, then 100 successes of 10 ms: the errors slid out.
        for _ in 0..50 {
            record(&mut w, Class::Error, ms(1_000));
        }
        for _ in 0..100 {
            record(&mut w, Class::Success, ms(10));
        }
        assert_eq!(w.error_rate(), Some(0.0));
        assert_eq!(w.response_time_ms(), Some(10.0));
        // 20 more errors of 110 ms push out 20 successes.
        for _ in 0..20 {
            record(&mut w, Class::Error, ms(110));
        }
        assert_eq!(w.error_rate(), Some(0.2));
        // (80 × 10 + 20 × 110) / 100 = 30 ms.
        assert_eq!(w.response_time_ms(), Some(30.0));
    }

    #[test]
    fn results_age_out_so_a_failing_agent_can_come_back() {
        let t0 = Instant::now();
        let mut w = Window::default();
        w.record(Class::Error, ms(40), t0);
        w.record(Class::Error, ms(60), t0 + ms(1_000));
        w.record(Class::Success, ms(20), t0 + ms(3_000));
        let max_age = ms(10_000);
        w.expire(t0 + ms(9_999), max_age);
        assert_eq!(w.error_rate(), Some(2.0 / 3.0));
        assert_eq!(w.response_time_ms(), Some(40.0));
        // The first error is 10 s old: gone.
        w.expire(t0 + ms(10_000), max_age);
        assert_eq!(w.error_rate(), Some(0.5));
        assert_eq!(w.response_time_ms(), Some(40.0));
        // Everything is: nothing to report, no penalty.
        w.expire(t0 + ms(13_000), max_age);
        assert_eq!(w.error_rate(), None);
        assert_eq!(w.response_time_ms(), None);
    }

    #[test]
    fn the_age_bound_follows_the_heartbeat_interval() {
        let mut load = Load::new();
        load.set_heartbeat_interval(ms(2_000));
        assert_eq!(load.max_age, ms(10_000));
    }

    #[test]
    fn proc_stat_parsing() {
        // pid (comm with spaces and a ')') state ppid ... utime=1234 stime=567 ...
        let stat = "4242 (my (agent) x) S 1 4242 4242 0 -1 4194560 9000 0 0 0 1234 567 0 0 20 0 9 0 100 1000000 2000 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(1_801));
        assert_eq!(parse_cpu_ticks("4242 (x) S 1 2"), None);
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert_eq!(
            parse_cpu_ticks("1 (x) S 1 1 1 0 -1 0 0 0 0 0 abc 5 0"),
            None
        );
    }

    #[test]
    fn cpu_share_values() {
        // 150 ticks = 1.5 s of CPU over 2 s of wall time on 2 CPUs: 37.5 %.
        assert_eq!(cpu_share(150, ms(2_000), 2), Some(0.375));
        // One CPU fully busy on a 4-CPU machine.
        assert_eq!(cpu_share(1_000, ms(10_000), 4), Some(0.25));
        // More than the machine (tick rounding) is clamped.
        assert_eq!(cpu_share(500, ms(1_000), 2), Some(1.0));
        assert_eq!(cpu_share(0, ms(5_000), 1), Some(0.0));
        assert_eq!(cpu_share(10, Duration::ZERO, 1), None);
        assert_eq!(cpu_share(10, ms(1_000), 0), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_cpu_is_readable_and_a_share() {
        assert!(read_cpu_ticks().is_some());
        let mut s = CpuSampler::new();
        // Too soon after the baseline: nothing yet.
        assert_eq!(s.sample(), None);
        // An older baseline gives a figure in 0..=1.
        s.last = s.last.map(|(t, at)| {
            let earlier = at.checked_sub(Duration::from_secs(2));
            (t, earlier.expect("the machine has been up for 2 s"))
        });
        let share = s.sample().expect("a cpu figure");
        assert!((0.0..=1.0).contains(&share), "{share}");
        // And it is kept until the next full interval.
        assert_eq!(s.sample(), Some(share));
    }
}
