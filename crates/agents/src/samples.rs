//! Small sample inputs for seed 000's two use cases, written to disk by
//! `baton samples <dir>` (or `cargo run -p baton-agents --example make-samples --
//! <dir>`): a CSV and a PNG chart
//! for the report, an animated GIF for the monitoring, and the request bodies for
//! `POST /api/v1/tasks` (seed 000's shape) and for a workflow run.

use baton_sdk::{InputKind, InputPart};
use image::{Delay, Rgb, RgbImage, Rgba, RgbaImage};
use serde_json::{json, Value};
use std::io::Cursor;

/// Monthly sales with a holiday spike in December.
pub const SALES_CSV: &str = "month,sales,returns
Jul,118,5
Aug,124,4
Sep,131,6
Oct,127,5
Nov,139,7
Dec,412,6
Jan,146,5
Feb,151,6
";

/// The monitored scene: 80 x 60, people are 5 x 12 dark rectangles.
pub const SCENE_WIDTH: u32 = 80;
pub const SCENE_HEIGHT: u32 = 60;

/// People `(x, y)` in each frame: nobody, then 1, 2, 5 (a crowd), 5 with one in the
/// restricted top-left corner, then 2.
pub const CROWD: [&[(u32, u32)]; 6] = [
    &[],
    &[(60, 30)],
    &[(60, 30), (40, 40)],
    &[(60, 30), (40, 40), (30, 25), (50, 10), (70, 44)],
    &[(60, 30), (40, 40), (30, 25), (50, 10), (4, 4)],
    &[(60, 30), (40, 40)],
];

/// A bar chart of the sales, 48 x 24.
pub fn chart_png() -> Vec<u8> {
    let values: Vec<u32> = SALES_CSV
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').nth(1)?.parse().ok())
        .collect();
    let max = values.iter().copied().max().unwrap_or(1);
    let img = RgbImage::from_fn(48, 24, |x, y| {
        let bar = (x / 6) as usize;
        let height = values.get(bar).map_or(0, |v| v * 22 / max);
        if x % 6 != 5 && 23 - y < height {
            Rgb([30, 60, 150])
        } else {
            Rgb([250, 250, 250])
        }
    });
    encode(|c| img.write_to(c, image::ImageFormat::Png))
}

/// The crowd scene as an animated GIF, 500 ms per frame.
pub fn crowd_gif() -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new(&mut out);
        for people in CROWD {
            let mut img =
                RgbaImage::from_pixel(SCENE_WIDTH, SCENE_HEIGHT, Rgba([190, 190, 190, 255]));
            for &(x, y) in people {
                for yy in y..y + 12 {
                    for xx in x..x + 5 {
                        img.put_pixel(xx, yy, Rgba([40, 40, 40, 255]));
                    }
                }
            }
            let frame = image::Frame::from_parts(img, 0, 0, Delay::from_numer_denom_ms(500, 1));
            // Encoding to memory cannot fail for frames this size.
            let _ = encoder.encode_frame(frame);
        }
    }
    out
}

fn encode(write: impl FnOnce(&mut Cursor<Vec<u8>>) -> image::ImageResult<()>) -> Vec<u8> {
    let mut c = Cursor::new(Vec::new());
    let _ = write(&mut c);
    c.into_inner()
}

/// Seed 000's report request: the CSV as text, the chart as a base64 image.
pub fn report_request() -> Value {
    json!({
        "task_id": "report-001",
        "task_type": "report_generation",
        "inputs": [
            InputPart::text(SALES_CSV).to_json_value(),
            InputPart::bytes(InputKind::Image, chart_png()).to_json_value(),
        ],
        "execution_mode": "sequential",
        "metadata": {"report_title": "Q4 Sales Analysis"},
    })
}

/// Seed 000's monitoring request: the GIF as a base64 video.
pub fn monitor_request() -> Value {
    json!({
        "task_id": "monitor-001",
        "task_type": "real_time_monitoring",
        "inputs": [InputPart::bytes(InputKind::Video, crowd_gif()).to_json_value()],
        "execution_mode": "sequential",
        "metadata": {
            "max_persons": 3,
            "restricted_area": {"x": 0, "y": 0, "width": 20, "height": 20},
        },
    })
}

/// The report as a flow of three agents (`POST /api/v1/flows`).
pub fn report_flow() -> Value {
    json!({"name": "report_generation", "definition": {"execution_mode": "sequential", "steps": [
        {"id": "data_ingest", "task_type": "data_ingest", "input": "${input}"},
        {"id": "data_analysis", "task_type": "data_analysis", "input": "${steps.data_ingest.output}"},
        {"id": "synthesis", "task_type": "synthesis",
         "input": {"analysis": "${steps.data_analysis.output}", "title": "${input.report_title}"}},
    ]}})
}

/// A run of [`report_flow`] (`POST /api/v1/runs`).
pub fn report_run() -> Value {
    let request = report_request();
    json!({"flow": "report_generation", "input": {
        "inputs": request["inputs"],
        "report_title": "Q4 Sales Analysis",
    }})
}

/// The monitoring as a flow of two agents.
pub fn monitor_flow() -> Value {
    json!({"name": "real_time_monitoring", "definition": {"execution_mode": "sequential", "steps": [
        {"id": "video_detection", "task_type": "video_detection", "input": "${input}"},
        {"id": "alerting", "task_type": "alerting",
         "input": {"frames": "${steps.video_detection.output.frames}", "rules": "${input.rules}"}},
    ]}})
}

/// A run of [`monitor_flow`].
pub fn monitor_run() -> Value {
    let request = monitor_request();
    json!({"flow": "real_time_monitoring", "input": {
        "inputs": request["inputs"],
        "rules": request["metadata"],
    }})
}

/// Every sample file, by name.
pub fn files() -> Vec<(&'static str, Vec<u8>)> {
    let pretty = |v: Value| serde_json::to_vec_pretty(&v).unwrap_or_default();
    vec![
        ("sales.csv", SALES_CSV.as_bytes().to_vec()),
        ("chart.png", chart_png()),
        ("crowd.gif", crowd_gif()),
        ("report_request.json", pretty(report_request())),
        ("monitor_request.json", pretty(monitor_request())),
        ("report_flow.json", pretty(report_flow())),
        ("report_run.json", pretty(report_run())),
        ("monitor_flow.json", pretty(monitor_flow())),
        ("monitor_run.json", pretty(monitor_run())),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin;
    use baton_sdk::testing::{Harness, TaskBuilder};

    /// A task built from a request body the way the server builds it.
    fn task_from(request: &Value) -> baton_sdk::Task {
        let mut b = TaskBuilder::new(request["task_type"].as_str().unwrap())
            .task_id(request["task_id"].as_str().unwrap())
            .metadata(request["metadata"].clone());
        for (i, raw) in request["inputs"].as_array().unwrap().iter().enumerate() {
            b = b.input(InputPart::from_json_value(i, raw).unwrap());
        }
        b.build()
    }

    #[test]
    fn samples_stay_small() {
        for (name, bytes) in files() {
            assert!(bytes.len() < 8 * 1024, "{name} is {} bytes", bytes.len());
        }
    }

    #[tokio::test]
    async fn the_report_sample_gives_the_expected_report() {
        let out = Harness::new(builtin())
            .run(task_from(&report_request()))
            .await
            .unwrap();
        assert_eq!(out["title"], "Q4 Sales Analysis");
        let stats = &out["detailed_findings"]["statistics"];
        assert_eq!(
            (
                stats["series"].as_str(),
                stats["count"].as_u64(),
                stats["mean"].as_f64(),
                stats["median"].as_f64()
            ),
            (Some("sales"), Some(8), Some(168.5), Some(135.0))
        );
        assert_eq!(
            out["detailed_findings"]["anomalies"],
            json!([{"series": "sales", "index": 5, "value": 412.0, "score": 12.607143, "side": "high", "label": "Dec"}])
        );
        assert_eq!(
            out["detailed_findings"]["insights"][4],
            "1 anomaly in sales: 412 at index 5 (Dec)"
        );
        assert_eq!(
            out["executive_summary"],
            "Analysis completed on 16 data points across 2 series and 1 image. sales: mean 168.5, \
             median 135, from 118 to 412, no clear trend. 1 anomaly detected."
        );
        let images = out["detailed_findings"]["images"].as_array().unwrap();
        assert_eq!(
            (images[0]["width"].as_u64(), images[0]["height"].as_u64()),
            (Some(48), Some(24))
        );
    }

    #[tokio::test]
    async fn the_monitoring_sample_raises_the_expected_alerts() {
        let out = Harness::new(builtin())
            .run(task_from(&monitor_request()))
            .await
            .unwrap();
        let alerts: Vec<(u64, &str, &str, &str)> = out["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["frame_index"].as_u64().unwrap(),
                    a["type"].as_str().unwrap(),
                    a["severity"].as_str().unwrap(),
                    a["message"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            alerts,
            vec![
                (
                    3,
                    "crowd_detected",
                    "high",
                    "Person count (5) exceeds threshold (3)"
                ),
                (
                    4,
                    "restricted_area_intrusion",
                    "critical",
                    "1 person detected in the restricted area at (4, 4)"
                ),
            ]
        );
        assert_eq!(
            (out["frames_analyzed"].as_u64(), out["peak_count"].as_u64()),
            (Some(6), Some(5))
        );
    }

    #[tokio::test]
    async fn the_flow_steps_chain_as_the_workflow_engine_passes_them() {
        let h = Harness::new(builtin());
        let step = |task_type: &str, input: Value| {
            TaskBuilder::new(task_type)
                .task_id("run-1")
                .json(input)
                .build()
        };
        let run = report_run();
        let ingested = h
            .run(step("data_ingest", run["input"].clone()))
            .await
            .unwrap();
        let analysed = h.run(step("data_analysis", ingested)).await.unwrap();
        let report = h
            .run(step(
                "synthesis",
                json!({"analysis": analysed, "title": run["input"]["report_title"]}),
            ))
            .await
            .unwrap();
        assert_eq!(report["title"], "Q4 Sales Analysis");
        assert_eq!(report["detailed_findings"]["statistics"]["mean"], 168.5);

        let run = monitor_run();
        let detected = h
            .run(step("video_detection", run["input"].clone()))
            .await
            .unwrap();
        let alerts = h
            .run(step(
                "alerting",
                json!({"frames": detected["frames"], "rules": run["input"]["rules"]}),
            ))
            .await
            .unwrap();
        assert_eq!(alerts["alerts"].as_array().unwrap().len(), 2);
    }
}
