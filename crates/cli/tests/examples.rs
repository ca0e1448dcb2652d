//! The example scripts in `examples/` run as a user would run them, against the
//! binary under test (`BATON_BIN`, so they build nothing), and print what they
//! promise. A script exits non-zero when its use case did not work.

mod common;

use std::path::PathBuf;
use std::process::Command;

fn run_example(name: &str) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name);
    let out = Command::new("bash")
        .arg(&script)
        .env("BATON_BIN", common::BATON)
        .env_remove("BATON_SERVER")
        .output()
        .expect("bash runs the example");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn report_generation_with_curl() {
    let out = run_example("report_generation.sh");
    assert!(out.contains("event: end"), "{out}");
    assert!(out.contains("Q4 Sales Analysis"), "{out}");
    assert!(out.contains("executive_summary"), "{out}");
}

#[test]
fn report_generation_with_the_cli() {
    let out = run_example("report_generation_cli.sh");
    assert!(out.contains("step_completed synthesis"), "{out}");
    assert!(out.contains("run_completed"), "{out}");
    assert!(out.contains("status     completed"), "{out}");
    assert!(out.contains("Q4 Sales Analysis"), "{out}");
}

#[test]
fn real_time_monitoring_with_curl() {
    let out = run_example("real_time_monitoring.sh");
    assert!(out.contains("event: alert"), "{out}");
    assert!(out.contains("crowd_detected"), "{out}");
}

#[test]
fn real_time_monitoring_with_the_cli() {
    let out = run_example("real_time_monitoring_cli.sh");
    assert!(
        out.contains("[high] crowd_detected") || out.contains("] crowd_detected"),
        "{out}"
    );
    assert!(out.contains("\"event\":\"alert\""), "{out}");
}
