//! `data_analysis`, the second agent of seed 000's report generation: statistics,
//! trend, anomalies and insights for every series `data_ingest` found. The math is
//! in [`crate::stats`] (its conventions are documented there); this module shapes it.
//!
//! Input: the first json part that is a `data_ingest` output (an object with a
//! `series` array), which is what a workflow step gets from
//! `"input": "${steps.data_ingest.output}"`. Without one, the task's own inputs are
//! ingested first, so `data_analysis` also works on raw text, CSV, JSON and images.
//!
//! Output:
//! ```json
//! {"data_points": 4, "primary": "sales",
//!  "series": [{"name": "sales", "source": "inputs[0] text",
//!              "statistics": {"count": 4, "sum": 16, "mean": 4, "median": 4, "std_dev": 2.581989,
//!                             "min": 1, "max": 7, "p25": 2.5, "p50": 4, "p75": 5.5,
//!                             "p90": 6.4, "p95": 6.7, "p99": 6.94},
//!              "trend": {"slope": 2, "intercept": 1, "r_squared": 1, "direction": "increasing"},
//!              "anomalies": [{"index": 3, "value": 100, "score": 34.3, "side": "high"}]}],
//!  "images": [...], "insights": ["Trend increasing: sales rises by 2 per point (R² 1)", ...],
//!  "title": "Q4 Sales Analysis", "warnings": []}
//! ```
//! `primary` is the series with the most values (the first on a tie), or null when
//! there is none; `trend` is null below two values; numbers are rounded to 6 decimals.

use crate::ingest::{self, ImageStats, Ingested, Series};
use crate::stats::{self, fmt_num, round6, Direction, PERCENTILES};
use baton_sdk::{HandlerError, InputPart, Task};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A coefficient of variation above this calls a series volatile.
pub const VOLATILE_CV: f64 = 0.5;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statistics {
    pub count: usize,
    pub sum: f64,
    pub mean: f64,
    pub median: f64,
    pub std_dev: f64,
    pub min: f64,
    pub max: f64,
    pub p25: f64,
    pub p50: f64,
    pub p75: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trend {
    pub slope: f64,
    pub intercept: f64,
    pub r_squared: f64,
    pub direction: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub index: usize,
    pub value: f64,
    pub score: Option<f64>,
    pub side: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesAnalysis {
    pub name: String,
    pub source: String,
    pub statistics: Statistics,
    pub trend: Option<Trend>,
    pub anomalies: Vec<Anomaly>,
}

impl SeriesAnalysis {
    /// Standard deviation over the absolute mean, when the mean is not 0.
    pub fn coefficient_of_variation(&self) -> Option<f64> {
        let s = &self.statistics;
        (s.mean != 0.0 && s.count > 1).then(|| s.std_dev / s.mean.abs())
    }
}

/// What `data_analysis` outputs, and what `synthesis` reads back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    pub data_points: usize,
    pub primary: Option<String>,
    pub series: Vec<SeriesAnalysis>,
    #[serde(default)]
    pub images: Vec<ImageStats>,
    pub insights: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default)]
    pub warnings: Vec<String>,
}

impl Analysis {
    pub fn primary_series(&self) -> Option<&SeriesAnalysis> {
        let name = self.primary.as_deref()?;
        self.series.iter().find(|s| s.name == name)
    }
}

/// Analyses every series with values; fails when there is nothing to analyse.
pub fn analyse(ingested: &Ingested) -> Result<Analysis, String> {
    let mut warnings = ingested.warnings.clone();
    let mut series = Vec::new();
    for s in &ingested.series {
        let values: Vec<f64> = s.values.iter().copied().filter(|v| v.is_finite()).collect();
        match analyse_series(s, &values) {
            Some(a) => series.push(a),
            None => warnings.push(format!("series {:?} has no values", s.name)),
        }
    }
    if series.is_empty() && ingested.images.is_empty() {
        return Err(
            "no numeric data to analyse: every series is empty and there is no image".into(),
        );
    }
    let primary = series
        .iter()
        .enumerate()
        .max_by_key(|(i, s)| (s.statistics.count, std::cmp::Reverse(*i)))
        .map(|(_, s)| s.name.clone());
    let mut insights: Vec<String> = series.iter().flat_map(series_insights).collect();
    insights.extend(ingested.images.iter().map(image_insight));
    Ok(Analysis {
        data_points: series.iter().map(|s| s.statistics.count).sum(),
        primary,
        series,
        images: ingested.images.clone(),
        insights,
        title: ingested.title.clone(),
        warnings,
    })
}

fn analyse_series(series: &Series, values: &[f64]) -> Option<SeriesAnalysis> {
    let summary = stats::summarize(values)?;
    let p = summary.percentiles.map(round6);
    debug_assert_eq!(PERCENTILES, [25, 50, 75, 90, 95, 99]);
    let statistics = Statistics {
        count: summary.count,
        sum: round6(summary.sum),
        mean: round6(summary.mean),
        median: round6(summary.median),
        std_dev: round6(summary.std_dev),
        min: summary.min,
        max: summary.max,
        p25: p[0],
        p50: p[1],
        p75: p[2],
        p90: p[3],
        p95: p[4],
        p99: p[5],
    };
    let trend = stats::trend(values).map(|t| Trend {
        slope: round6(t.slope),
        intercept: round6(t.intercept),
        r_squared: round6(t.r_squared),
        direction: t.direction.as_str().to_string(),
    });
    let anomalies = stats::anomalies(values)
        .into_iter()
        .map(|a| Anomaly {
            index: a.index,
            value: a.value,
            score: a.score.map(round6),
            side: a.side.as_str().to_string(),
            label: series.labels.as_ref().and_then(|l| l.get(a.index)).cloned(),
        })
        .collect();
    Some(SeriesAnalysis {
        name: series.name.clone(),
        source: series.source.clone(),
        statistics,
        trend,
        anomalies,
    })
}

/// The sentences a reader takes away from one series, from its numbers only.
pub fn series_insights(s: &SeriesAnalysis) -> Vec<String> {
    let st = &s.statistics;
    let name = &s.name;
    let mut out = vec![format!(
        "{name} averages {} over {} values (median {}, range {} to {})",
        fmt_num(st.mean),
        st.count,
        fmt_num(st.median),
        fmt_num(st.min),
        fmt_num(st.max)
    )];
    if let Some(t) = &s.trend {
        out.push(match t.direction.as_str() {
            d if d == Direction::Increasing.as_str() => format!(
                "Trend increasing: {name} rises by {} per point (R² {})",
                fmt_num(t.slope),
                fmt_num(t.r_squared)
            ),
            d if d == Direction::Decreasing.as_str() => format!(
                "Trend decreasing: {name} falls by {} per point (R² {})",
                fmt_num(-t.slope),
                fmt_num(t.r_squared)
            ),
            _ => format!("No clear trend in {name}"),
        });
    }
    if st.std_dev > 0.0 && (st.mean - st.median).abs() > 0.25 * st.std_dev {
        let which = if st.mean > st.median { "high" } else { "low" };
        out.push(format!(
            "{name} is skewed by {which} values: mean {} against median {}",
            fmt_num(st.mean),
            fmt_num(st.median)
        ));
    }
    // Spread along a clear trend is the trend itself, not volatility.
    let trending = s
        .trend
        .as_ref()
        .is_some_and(|t| t.direction != Direction::Flat.as_str());
    if let Some(cv) = s
        .coefficient_of_variation()
        .filter(|cv| *cv > VOLATILE_CV && !trending)
    {
        out.push(format!(
            "{name} is volatile: standard deviation is {}% of the mean",
            fmt_num(cv * 100.0)
        ));
    }
    if !s.anomalies.is_empty() {
        let listed: Vec<String> = s
            .anomalies
            .iter()
            .take(3)
            .map(|a| match &a.label {
                Some(label) => format!("{} at index {} ({label})", fmt_num(a.value), a.index),
                None => format!("{} at index {}", fmt_num(a.value), a.index),
            })
            .collect();
        let more = s.anomalies.len().saturating_sub(3);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        out.push(format!(
            "{} in {name}: {}{more}",
            plural(s.anomalies.len(), "anomaly", "anomalies"),
            listed.join(", ")
        ));
    }
    out
}

fn image_insight(img: &ImageStats) -> String {
    let tone = if img.brightness < 64.0 {
        "dark"
    } else if img.brightness > 192.0 {
        "bright"
    } else {
        "balanced"
    };
    format!(
        "Image {}: {}x{} {}, {tone} (brightness {} of 255)",
        img.source,
        img.width,
        img.height,
        img.format,
        fmt_num(img.brightness)
    )
}

pub(crate) fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Reads the convention of the module docs: an ingest output among the json
/// parts, else the raw inputs.
pub fn ingested_from(inputs: &[InputPart]) -> Result<Ingested, String> {
    for part in inputs {
        if let baton_core::input::PartData::Json(v) = &part.data {
            if v.get("series").is_some_and(Value::is_array) {
                return serde_json::from_value(v.clone()).map_err(|e| {
                    format!("json input looks like a data_ingest output but is not one: {e}")
                });
            }
            // Several ingest outputs (one per input part, ingested in parallel by
            // the report_generation flow): merged in order.
            if let Some(Value::Array(outputs)) = v.get("ingested") {
                return merge_ingested(outputs);
            }
        }
    }
    ingest::ingest(inputs)
}

/// Merges several `data_ingest` outputs: their series, images and warnings in
/// order, the first title found.
pub fn merge_ingested(outputs: &[Value]) -> Result<Ingested, String> {
    let mut merged = Ingested {
        series: Vec::new(),
        images: Vec::new(),
        title: None,
        warnings: Vec::new(),
    };
    for (i, v) in outputs.iter().enumerate() {
        let one: Ingested = serde_json::from_value(v.clone())
            .map_err(|e| format!("ingested[{i}] is not a data_ingest output: {e}"))?;
        merged.series.extend(one.series);
        merged.images.extend(one.images);
        merged.warnings.extend(one.warnings);
        if merged.title.is_none() {
            merged.title = one.title;
        }
    }
    Ok(merged)
}

/// `data_analysis`.
pub async fn handler(task: Task) -> Result<Value, HandlerError> {
    let analysis = ingest::run_blocking(move || analyse(&ingested_from(&task.inputs)?)).await?;
    serde_json::to_value(analysis).map_err(|e| HandlerError::permanent(format!("output: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn series(name: &str, values: &[f64]) -> Series {
        Series {
            name: name.into(),
            source: "inputs[0] text".into(),
            values: values.to_vec(),
            labels: None,
        }
    }

    #[test]
    fn ingest_outputs_of_a_parallel_ingestion_are_merged_in_order() {
        let a = serde_json::json!({"series": [{"name": "x", "source": "inputs[0] text", "values": [1.0, 2.0]}],
                                   "images": [], "title": "T", "warnings": ["w0"]});
        let b = serde_json::json!({"series": [{"name": "y", "source": "inputs[0] csv column 1", "values": [3.0]}],
                                   "images": [], "warnings": []});
        let part = InputPart::json(serde_json::json!({"ingested": [a, b], "metadata": {}}));
        let merged = ingested_from(&[part]).expect("merged");
        let names: Vec<&str> = merged.series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["x", "y"]);
        assert_eq!(merged.title.as_deref(), Some("T"));
        assert_eq!(merged.warnings, ["w0"]);
        let bad = InputPart::json(serde_json::json!({"ingested": [{"series": "nope"}]}));
        let err = ingested_from(&[bad]).expect_err("not an ingest output");
        assert!(err.starts_with("ingested[0]"), "{err}");
    }

    #[test]
    fn a_series_analysed_in_full() {
        let ingested = Ingested {
            series: vec![series(
                "sales",
                &[12.0, 11.0, 13.0, 100.0, 12.0, 14.0, 10.0, 15.0],
            )],
            ..Ingested::default()
        };
        let got = serde_json::to_value(analyse(&ingested).unwrap()).unwrap();
        assert_eq!(
            got,
            json!({
                "data_points": 8,
                "primary": "sales",
                "series": [{
                    "name": "sales", "source": "inputs[0] text",
                    "statistics": {"count": 8, "sum": 187.0, "mean": 23.375, "median": 12.5,
                        "std_dev": 31.002016, "min": 10.0, "max": 100.0,
                        "p25": 11.75, "p50": 12.5, "p75": 14.25, "p90": 40.5, "p95": 70.25, "p99": 94.05},
                    "trend": {"slope": -0.821429, "intercept": 26.25, "r_squared": 0.004212, "direction": "flat"},
                    "anomalies": [{"index": 3, "value": 100.0, "score": 34.3, "side": "high"}]
                }],
                "images": [],
                "insights": [
                    "sales averages 23.38 over 8 values (median 12.5, range 10 to 100)",
                    "No clear trend in sales",
                    "sales is skewed by high values: mean 23.38 against median 12.5",
                    "sales is volatile: standard deviation is 132.63% of the mean",
                    "1 anomaly in sales: 100 at index 3"
                ],
                "warnings": []
            })
        );
    }

    #[test]
    fn trends_and_primary_series() {
        let ingested = Ingested {
            series: vec![
                series("up", &[1.0, 3.0, 5.0, 7.0]),
                series("down", &[4.0, 1.0, 3.0, 0.0, -1.0]),
                series("empty", &[]),
            ],
            title: Some("T".into()),
            ..Ingested::default()
        };
        let got = analyse(&ingested).unwrap();
        assert_eq!(got.primary.as_deref(), Some("down"));
        assert_eq!(got.data_points, 9);
        assert_eq!(got.title.as_deref(), Some("T"));
        assert_eq!(got.warnings, vec!["series \"empty\" has no values"]);
        assert_eq!(
            got.insights,
            vec![
                "up averages 4 over 4 values (median 4, range 1 to 7)",
                "Trend increasing: up rises by 2 per point (R² 1)",
                "down averages 1.4 over 5 values (median 1, range -1 to 4)",
                "Trend decreasing: down falls by 1.1 per point (R² 0.7)",
            ]
        );
    }

    #[test]
    fn nothing_to_analyse_is_refused() {
        let empty = Ingested {
            series: vec![series("x", &[])],
            ..Ingested::default()
        };
        assert_eq!(
            analyse(&empty).unwrap_err(),
            "no numeric data to analyse: every series is empty and there is no image"
        );
    }

    #[test]
    fn input_is_an_ingest_output_or_raw_data() {
        let from_ingest = ingested_from(&[InputPart::json(json!({
            "series": [{"name": "a", "source": "s", "values": [1, 2]}]
        }))])
        .unwrap();
        assert_eq!(from_ingest.series[0].values, vec![1.0, 2.0]);
        let raw = ingested_from(&[InputPart::text("3 and 4")]).unwrap();
        assert_eq!(raw.series[0].values, vec![3.0, 4.0]);
        let bad = ingested_from(&[InputPart::json(json!({"series": [{"name": 1}]}))]).unwrap_err();
        assert!(
            bad.starts_with("json input looks like a data_ingest output but is not one"),
            "{bad}"
        );
    }
}
