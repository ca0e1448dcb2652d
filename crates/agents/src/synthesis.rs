//! `synthesis`, the last agent of seed 000's report generation, and
//! `report_generation`, the whole use case in one task: writes the report in seed
//! 000's shape from a `data_analysis` output, with deterministic text built from the
//! numbers.
//!
//! Input: the first json part that is a `data_analysis` output, or an object whose
//! `analysis` field is one (the workflow example in `docs/workflows.md`); without
//! one, the task's inputs are ingested and analysed first. The title is
//! `metadata.report_title`, else that json part's `title` or `report_title`, else the
//! title `data_ingest` found in a seed 000 request, else `Report`.
//!
//! Output (seed 000):
//! ```json
//! {"report_id": "report_1704412800", "title": "Q4 Sales Analysis",
//!  "executive_summary": "Analysis completed on 8 data points across 1 series. ...",
//!  "detailed_findings": {"statistics": {"series": "sales", "count": 8, "mean": 23.375, ...},
//!                        "insights": ["..."], "anomalies": [{"series": "sales", "index": 3, ...}],
//!                        "series": [...], "images": [...]},
//!  "recommendations": ["..."],
//!  "summary_source": "deterministic"}
//! ```
//! `report_id` is `report_` and the Unix time in seconds. `statistics` holds the
//! primary series' statistics (empty when only images were given); `series` and
//! `images` give every series and image. When an LLM is configured
//! ([`crate::llm::Config::from_env`]) it writes the executive summary from the
//! deterministic one and the insights (`summary_source: "llm"`); if it fails, the
//! deterministic summary stays and `llm_error` says why.

use crate::analysis::{self, plural, Analysis, SeriesAnalysis, VOLATILE_CV};
use crate::ingest;
use crate::llm;
use crate::stats::fmt_num;
use baton_core::input::PartData;
use baton_sdk::{HandlerError, InputPart, Task};
use serde_json::{json, Map, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// Below this many values in the primary series, the report asks for more data.
pub const FEW_DATA_POINTS: usize = 10;

/// The report, with the executive summary written from the numbers.
pub fn synthesize(analysis: &Analysis, title: &str, now_unix: u64) -> Value {
    let statistics = match analysis.primary_series() {
        Some(p) => {
            let mut stats = Map::new();
            stats.insert("series".into(), Value::String(p.name.clone()));
            if let Ok(Value::Object(fields)) = serde_json::to_value(&p.statistics) {
                stats.extend(fields);
            }
            Value::Object(stats)
        }
        None => json!({}),
    };
    let anomalies: Vec<Value> = analysis
        .series
        .iter()
        .flat_map(|s| {
            s.anomalies.iter().map(|a| {
                let mut v = json!({"series": s.name});
                if let (Value::Object(o), Ok(Value::Object(fields))) =
                    (&mut v, serde_json::to_value(a))
                {
                    o.extend(fields);
                }
                v
            })
        })
        .collect();
    json!({
        "report_id": format!("report_{now_unix}"),
        "title": title,
        "executive_summary": executive_summary(analysis),
        "detailed_findings": {
            "statistics": statistics,
            "insights": analysis.insights,
            "anomalies": anomalies,
            "series": analysis.series,
            "images": analysis.images,
        },
        "recommendations": recommendations(analysis),
        "summary_source": "deterministic",
    })
}

/// A few sentences: how much data, the primary series in numbers, the anomalies.
pub fn executive_summary(analysis: &Analysis) -> String {
    let images = match analysis.images.len() {
        0 => String::new(),
        n => format!(" and {}", plural(n, "image", "images")),
    };
    let mut out = format!(
        "Analysis completed on {} across {}{images}.",
        plural(analysis.data_points, "data point", "data points"),
        plural(analysis.series.len(), "series", "series"),
    );
    if let Some(p) = analysis.primary_series() {
        let st = &p.statistics;
        out.push_str(&format!(
            " {}: mean {}, median {}, from {} to {}",
            p.name,
            fmt_num(st.mean),
            fmt_num(st.median),
            fmt_num(st.min),
            fmt_num(st.max)
        ));
        match &p.trend {
            Some(t) if t.direction != "flat" => out.push_str(&format!(
                ", trend {} ({} per point).",
                t.direction,
                signed(t.slope)
            )),
            Some(_) => out.push_str(", no clear trend."),
            None => out.push('.'),
        }
    }
    let n_anomalies: usize = analysis.series.iter().map(|s| s.anomalies.len()).sum();
    out.push_str(&match n_anomalies {
        0 => " No anomalies detected.".to_string(),
        n => format!(" {} detected.", plural(n, "anomaly", "anomalies")),
    });
    out
}

/// What to do about it, one sentence per finding that calls for action.
pub fn recommendations(analysis: &Analysis) -> Vec<String> {
    let mut out = Vec::new();
    for s in &analysis.series {
        if let Some(t) = &s.trend {
            match t.direction.as_str() {
                "decreasing" => out.push(format!(
                    "Investigate the decline in {} ({} per point) before it compounds",
                    s.name,
                    signed(t.slope)
                )),
                "increasing" => out.push(format!(
                    "Plan capacity for the growth in {} ({} per point)",
                    s.name,
                    signed(t.slope)
                )),
                _ => {}
            }
        }
        if !s.anomalies.is_empty() {
            let indexes: Vec<String> = s.anomalies.iter().map(|a| a.index.to_string()).collect();
            out.push(format!(
                "Review the {} in {} (index {}) for data errors or one-off events",
                plural(s.anomalies.len(), "anomalous value", "anomalous values"),
                s.name,
                indexes.join(", ")
            ));
        }
        if let Some(cv) = volatile(s) {
            out.push(format!(
                "Find the causes of the variability in {} (standard deviation {}% of the mean)",
                s.name,
                fmt_num(cv * 100.0)
            ));
        }
    }
    if let Some(p) = analysis.primary_series() {
        if p.statistics.count < FEW_DATA_POINTS {
            out.push(format!(
                "Collect more data: {} are too few for firm conclusions",
                plural(p.statistics.count, "data point", "data points")
            ));
        }
    }
    for img in &analysis.images {
        if img.brightness < 64.0 {
            out.push(format!(
                "Image {} is dark (brightness {} of 255): use better-lit images",
                img.source,
                fmt_num(img.brightness)
            ));
        }
    }
    if out.is_empty() {
        out.push("No action needed: no decline, anomaly or instability was found".to_string());
    }
    out
}

fn volatile(s: &SeriesAnalysis) -> Option<f64> {
    let trending = s.trend.as_ref().is_some_and(|t| t.direction != "flat");
    s.coefficient_of_variation()
        .filter(|cv| *cv > VOLATILE_CV && !trending)
}

fn signed(v: f64) -> String {
    let s = fmt_num(v);
    if v > 0.0 && s != "0" {
        format!("+{s}")
    } else {
        s
    }
}

/// The analysis and the title the input and metadata give (module docs).
pub fn analysis_and_title(
    inputs: &[InputPart],
    metadata: &Map<String, Value>,
) -> Result<(Analysis, String), String> {
    let mut title_in_input = None;
    let mut found = None;
    for part in inputs {
        let PartData::Json(v) = &part.data else {
            continue;
        };
        let candidate = match v.get("analysis") {
            Some(a) if a.is_object() => a,
            _ => v,
        };
        if candidate.get("series").is_some() && candidate.get("insights").is_some() {
            let a: Analysis = serde_json::from_value(candidate.clone()).map_err(|e| {
                format!("json input looks like a data_analysis output but is not one: {e}")
            })?;
            found = Some(a);
            title_in_input = ["title", "report_title"]
                .iter()
                .find_map(|k| v.get(*k).and_then(Value::as_str))
                .filter(|t| !t.trim().is_empty())
                .map(str::to_string);
            break;
        }
    }
    let analysis = match found {
        Some(a) => a,
        None => analysis::analyse(&analysis::ingested_from(inputs)?)?,
    };
    let title = match metadata.get("report_title") {
        Some(Value::String(t)) if !t.trim().is_empty() => t.clone(),
        Some(Value::Null) | None => title_in_input
            .or_else(|| analysis.title.clone())
            .unwrap_or_else(|| "Report".to_string()),
        Some(other) => {
            return Err(format!(
                "metadata.report_title must be a string, got {other}"
            ))
        }
    };
    Ok((analysis, title))
}

/// `synthesis` (and `report_generation`), with an LLM for the summary when `llm` is set.
pub async fn handle(task: Task, llm: Option<llm::Config>) -> Result<Value, HandlerError> {
    let metadata = task.metadata.clone();
    let events = task.events().clone();
    let (analysis, title) =
        ingest::run_blocking(move || analysis_and_title(&task.inputs, &metadata)).await?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut report = synthesize(&analysis, &title, now);
    if let Some(config) = llm {
        match llm_summary(&config, &analysis, &report, &events).await {
            Ok(text) => {
                report["executive_summary"] = Value::String(text);
                report["summary_source"] = Value::String("llm".into());
            }
            Err(e) => report["llm_error"] = Value::String(e.message().to_string()),
        }
    }
    Ok(report)
}

async fn llm_summary(
    config: &llm::Config,
    analysis: &Analysis,
    report: &Value,
    events: &baton_sdk::Events,
) -> Result<String, HandlerError> {
    let facts = format!(
        "Title: {}\nSummary: {}\nInsights:\n- {}\nRecommendations:\n- {}",
        report["title"].as_str().unwrap_or_default(),
        report["executive_summary"].as_str().unwrap_or_default(),
        analysis.insights.join("\n- "),
        recommendations(analysis).join("\n- ")
    );
    let request = llm::Request {
        messages: vec![
            llm::Message::system(
                "You write the executive summary of a data report in two to four sentences. \
                 Use only the facts given; keep every number exactly as given.",
            ),
            llm::Message::user(facts),
        ],
        ..llm::Request::default()
    };
    // The summary streams to the clients watching the task as it is written.
    let completion = llm::complete(&llm::client(), config, &request, |t| {
        events.emit("token", t)
    })
    .await?;
    let text = completion.text.trim().to_string();
    if text.is_empty() {
        return Err(HandlerError::retryable("the llm returned an empty summary"));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{ImageStats, Ingested, Series};

    fn analysis_of(values: &[f64], images: Vec<ImageStats>) -> Analysis {
        analysis::analyse(&Ingested {
            series: vec![Series {
                name: "sales".into(),
                source: "inputs[0] text".into(),
                values: values.to_vec(),
                labels: None,
            }],
            images,
            ..Ingested::default()
        })
        .unwrap()
    }

    #[test]
    fn report_in_seed_shape() {
        let a = analysis_of(&[12.0, 11.0, 13.0, 100.0, 12.0, 14.0, 10.0, 15.0], vec![]);
        let r = synthesize(&a, "Q4 Sales Analysis", 1_704_412_800);
        assert_eq!(r["report_id"], "report_1704412800");
        assert_eq!(r["title"], "Q4 Sales Analysis");
        assert_eq!(
            r["executive_summary"],
            "Analysis completed on 8 data points across 1 series. sales: mean 23.38, median 12.5, \
             from 10 to 100, no clear trend. 1 anomaly detected."
        );
        let f = &r["detailed_findings"];
        assert_eq!(f["statistics"]["series"], "sales");
        assert_eq!(f["statistics"]["mean"], 23.375);
        assert_eq!(f["statistics"]["median"], 12.5);
        assert_eq!(f["statistics"]["p99"], 94.05);
        assert_eq!(
            f["anomalies"],
            json!([{"series": "sales", "index": 3, "value": 100.0, "score": 34.3, "side": "high"}])
        );
        assert_eq!(f["insights"].as_array().unwrap().len(), 5);
        assert_eq!(
            r["recommendations"],
            json!([
                "Review the 1 anomalous value in sales (index 3) for data errors or one-off events",
                "Find the causes of the variability in sales (standard deviation 132.63% of the mean)",
                "Collect more data: 8 data points are too few for firm conclusions",
            ])
        );
        assert_eq!(r["summary_source"], "deterministic");
        let keys: Vec<&String> = r.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "detailed_findings",
                "executive_summary",
                "recommendations",
                "report_id",
                "summary_source",
                "title"
            ]
        );
    }

    #[test]
    fn trends_images_and_calm_data() {
        let dark = ImageStats {
            source: "inputs[1]".into(),
            format: "png".into(),
            width: 2,
            height: 2,
            color_type: "L8".into(),
            channels: vec![],
            brightness: 20.0,
        };
        let growing: Vec<f64> = (0..12).map(|i| 100.0 + 2.5 * f64::from(i)).collect();
        let a = analysis_of(&growing, vec![dark]);
        let r = synthesize(&a, "T", 0);
        assert_eq!(
            r["executive_summary"],
            "Analysis completed on 12 data points across 1 series and 1 image. sales: mean 113.75, \
             median 113.75, from 100 to 127.5, trend increasing (+2.5 per point). No anomalies detected."
        );
        assert_eq!(
            r["recommendations"],
            json!([
                "Plan capacity for the growth in sales (+2.5 per point)",
                "Image inputs[1] is dark (brightness 20 of 255): use better-lit images",
            ])
        );
        let calm = analysis_of(
            &[10.0, 11.0, 10.0, 11.0, 10.0, 11.0, 10.0, 11.0, 10.0, 11.0],
            vec![],
        );
        assert_eq!(
            synthesize(&calm, "T", 0)["recommendations"],
            json!(["No action needed: no decline, anomaly or instability was found"])
        );
    }

    #[test]
    fn title_and_analysis_conventions() {
        let a = analysis_of(&[1.0, 2.0], vec![]);
        let wrapped = InputPart::json(json!({"analysis": a, "title": "From input"}));
        let meta = |v: Value| v.as_object().unwrap().clone();
        let (_, t) = analysis_and_title(std::slice::from_ref(&wrapped), &meta(json!({}))).unwrap();
        assert_eq!(t, "From input");
        let (_, t) = analysis_and_title(
            std::slice::from_ref(&wrapped),
            &meta(json!({"report_title": "Meta"})),
        )
        .unwrap();
        assert_eq!(t, "Meta");
        let (got, t) = analysis_and_title(
            &[InputPart::json(serde_json::to_value(&a).unwrap())],
            &meta(json!({})),
        )
        .unwrap();
        assert_eq!((got, t.as_str()), (a, "Report"));
        let (raw, _) = analysis_and_title(&[InputPart::text("5, 6, 7")], &meta(json!({}))).unwrap();
        assert_eq!(raw.data_points, 3);
        assert_eq!(
            analysis_and_title(&[wrapped], &meta(json!({"report_title": 5}))).unwrap_err(),
            "metadata.report_title must be a string, got 5"
        );
    }

    #[tokio::test]
    async fn the_llm_writes_the_summary_or_the_numbers_do() {
        use crate::llm::tests::{fake_llm, Answer, STREAM};
        let task = || {
            baton_sdk::testing::TaskBuilder::new("synthesis")
                .text("1, 2, 3, 4")
                .metadata(json!({"report_title": "T"}))
                .build()
        };
        let (config, seen) = fake_llm(vec![
            Answer::Stream(STREAM),
            Answer::Status(500, None, "down"),
            Answer::Status(429, Some("5"), "later"),
        ])
        .await;
        let config_for_harness = config.clone();
        let (by_llm, events) = baton_sdk::testing::Harness::new(move |t| {
            let config = config_for_harness.clone();
            async move { handle(t, Some(config)).await }
        })
        .run_with_events(task())
        .await;
        let by_llm = by_llm.unwrap();
        let tokens: Vec<&str> = events
            .iter()
            .filter(|e| e.kind == "token")
            .filter_map(|e| e.data.as_str())
            .collect();
        assert_eq!(tokens, ["Sales ", "rose 12%."]);
        assert_eq!(by_llm["executive_summary"], "Sales rose 12%.");
        assert_eq!(by_llm["summary_source"], "llm");
        assert_eq!(by_llm.get("llm_error"), None);
        let prompt = seen.lock().unwrap()[0]["body"]["messages"][1]["content"].clone();
        assert!(
            prompt.as_str().unwrap().starts_with(
                "Title: T\nSummary: Analysis completed on 4 data points across 1 series."
            ),
            "{prompt}"
        );
        let deterministic = synthesize(
            &analysis::analyse(&ingest::ingest(&[InputPart::text("1, 2, 3, 4")]).unwrap()).unwrap(),
            "T",
            0,
        )["executive_summary"]
            .clone();
        for want_error in ["llm answered 500: down", "llm answered 429: later"] {
            let fallback = handle(task(), Some(config.clone())).await.unwrap();
            assert_eq!(fallback["executive_summary"], deterministic);
            assert_eq!(fallback["summary_source"], "deterministic");
            assert_eq!(fallback["llm_error"], want_error);
        }
        let unconfigured = handle(task(), None).await.unwrap();
        assert_eq!(unconfigured["summary_source"], "deterministic");
        assert_eq!(unconfigured.get("llm_error"), None);
    }

    #[tokio::test]
    async fn handlers_refuse_bad_input_permanently() {
        use baton_sdk::testing::TaskBuilder;
        use baton_sdk::InputKind;
        let no_numbers = TaskBuilder::new("synthesis")
            .text("no figures at all")
            .build();
        assert_eq!(
            handle(no_numbers, None).await.unwrap_err(),
            HandlerError::permanent(
                "no numbers or images found in the inputs (inputs[0]: text contains no numbers)"
            )
        );
        let corrupt = TaskBuilder::new("data_ingest")
            .bytes(InputKind::Image, b"\x89PNG\r\n\x1a\n garbage".to_vec())
            .build();
        let err = ingest::handler(corrupt).await.unwrap_err();
        assert!(err.is_permanent(), "{err}");
        assert!(
            err.message()
                .starts_with("inputs[0]: png image does not decode"),
            "{err}"
        );
        let empty = TaskBuilder::new("data_analysis").build();
        assert_eq!(
            analysis::handler(empty).await.unwrap_err(),
            HandlerError::permanent(
                "no inputs: send text, json or image parts with the data to report on"
            )
        );
        let empty_series = TaskBuilder::new("data_analysis")
            .json(json!({"series": [{"name": "a", "source": "s", "values": []}]}))
            .build();
        assert_eq!(
            analysis::handler(empty_series).await.unwrap_err(),
            HandlerError::permanent(
                "no numeric data to analyse: every series is empty and there is no image"
            )
        );
    }
}
