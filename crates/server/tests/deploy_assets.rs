//! The Grafana dashboards and Prometheus alert rules in `deploy/` may name only
//! metrics the server exports (`baton_server::metrics::FAMILIES`), so a renamed
//! metric cannot leave a silently empty panel or a rule that never fires.

use baton_server::metrics::FAMILIES;
use std::collections::BTreeSet;
use std::path::PathBuf;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// Words of PromQL that are not metric names.
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    // Aggregations, which may be followed by `by (...)` rather than `(`.
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
];

/// Metric names a PromQL expression reads: identifiers outside label matchers,
/// ranges, strings and grouping clauses, not followed by `(` (functions and
/// aggregations), and not keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Drop string literals, label matchers and range selectors.
    let mut plain = String::with_capacity(expr.len());
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    let mut in_string: Option<char> = None;
    for c in expr.chars() {
        if let Some(q) = in_string {
            if c == q {
                in_string = None;
            }
            continue;
        }
        match c {
            '"' | '\'' if depth_brace == 0 => in_string = Some(c),
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            _ if depth_brace > 0 || depth_bracket > 0 => {}
            _ => plain.push(c),
        }
        if (c == '}' || c == ']') && depth_brace == 0 && depth_bracket == 0 {
            plain.push(' ');
        }
    }
    let chars: Vec<char> = plain.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_group = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j] == ' ' {
                j += 1;
            }
            let called = chars.get(j) == Some(&'(');
            let lower = word.to_ascii_lowercase();
            if [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ]
            .contains(&lower.as_str())
            {
                // The parenthesised list after these holds label names.
                skip_group = called;
            } else if !called && !KEYWORDS.contains(&lower.as_str()) {
                names.insert(word);
            }
            continue;
        } else if c.is_ascii_digit() || c == '.' {
            // Numbers, including exponents like 1e-9.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "._-+".contains(chars[i]))
            {
                if (chars[i] == '-' || chars[i] == '+') && !matches!(chars[i - 1], 'e' | 'E') {
                    break;
                }
                i += 1;
            }
            continue;
        } else if c == '(' && skip_group {
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            skip_group = false;
        }
        i += 1;
    }
    names
}

/// Every series name a scrape can contain: families, and histogram suffixes.
fn exported() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (name, kind) in FAMILIES {
        out.insert(name.to_string());
        if *kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                out.insert(format!("{name}{suffix}"));
            }
        }
    }
    out
}

#[test]
fn the_extractor_finds_metrics_and_only_metrics() {
    let names = metric_names(
        "histogram_quantile(0.95, sum by (le, task_type) (rate(task_execution_time_ms_bucket{task_type=\"a b\"}[5m]))) \
         / clamp_min(sum(rate(tasks_completed_total[5m])) + 1e-9, 1) > bool 0.5 and on(instance) up \
         or max without (instance) (queue_depth)",
    );
    let want: BTreeSet<String> = [
        "queue_depth",
        "task_execution_time_ms_bucket",
        "tasks_completed_total",
        "up",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(names, want);
}

#[test]
fn dashboards_and_rules_name_only_exported_metrics() {
    let exported = exported();
    let mut exprs: Vec<(String, String)> = Vec::new();
    let dashboards = deploy_dir().join("grafana/dashboards");
    let mut n_dashboards = 0;
    for entry in std::fs::read_dir(&dashboards).expect("deploy/grafana/dashboards") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            n_dashboards += 1;
            let doc: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for panel in doc["panels"].as_array().expect("panels") {
                for target in panel["targets"].as_array().into_iter().flatten() {
                    exprs.push((
                        format!("{} / {}", path.display(), panel["title"]),
                        target["expr"].as_str().expect("expr").to_string(),
                    ));
                }
            }
        }
    }
    assert_eq!(n_dashboards, 3, "seed 000's three dashboards");
    let rules = std::fs::read_to_string(deploy_dir().join("prometheus/alerts.yml")).unwrap();
    let rules: serde_norway::Value = serde_norway::from_str(&rules).unwrap();
    let mut alerts = BTreeSet::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name").to_string();
            exprs.push((
                format!("alert {name}"),
                rule["expr"].as_str().expect("expr").to_string(),
            ));
            alerts.insert(name);
        }
    }
    for seed_alert in ["HighRetryRate", "DeadLetterQueueGrowing"] {
        assert!(alerts.contains(seed_alert), "seed 003's {seed_alert} rule");
    }
    let mut used = BTreeSet::new();
    let mut unknown = Vec::new();
    for (place, expr) in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{place}: no metric in {expr:?}");
        for name in names {
            if exported.contains(&name) {
                used.insert(name);
            } else {
                unknown.push(format!("{place}: {name} (in {expr:?})"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "names the server does not export:\n{}",
        unknown.join("\n")
    );
    // The seeds' headline series are on a dashboard.
    for name in [
        "tasks_submitted_total",
        "tasks_completed_total",
        "tasks_failed_total",
        "task_execution_time_ms_bucket",
        "queue_depth",
        "agent_healthy",
        "task_queue_depth",
        "pending_tasks_per_agent",
        "agent_utilization_ratio",
        "orchestrator_dead_letter_queue_size",
        "orchestrator_retry_attempts_total",
    ] {
        assert!(used.contains(name), "{name} is on no dashboard or rule");
    }
}
