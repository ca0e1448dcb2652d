//! Seed 000's real-time monitoring: `video_detection` counts people and objects per
//! frame ([`crate::vision`]), `alerting` applies the task's rules to those counts, and
//! `real_time_monitoring` does both in one task. Frames are processed one at a
//! time and [`monitor`] hands each detection and each alert to a callback as soon as
//! it exists, so a caller can stream them.
//!
//! **Frames.** A `video` part holds an animated GIF (every frame, composited, timed
//! by its delays) or a single PNG/JPEG/GIF image; each `image` part is one more
//! frame, `frame_interval_ms` after the previous one. Every frame must have the size
//! of the first. A json part with an `inputs` array of `{type, data}` parts (a seed
//! 000 request, or a workflow step's `"input": "${input}"`) stands for those parts.
//!
//! **Metadata** (all optional): `threshold` (grey-level difference, default 30),
//! `min_blob_area` (pixels, default 20), `connectivity` (4 or 8, default 8),
//! `background` (`"first"`: the first frame, the default, which suits a scene that
//! starts empty; `"median"`: the per-pixel median of all frames, which suits a scene
//! people pass through), `frame_interval_ms` (default 1000), `max_frames` (default
//! 1000), `stream_start` (Unix seconds of the first frame; default: now).
//!
//! **Rules**, from the metadata, else from the json input's `rules` object:
//! - `max_persons`: more objects than this → `crowd_detected`, severity `medium`,
//!   `high` from 1.5 times the limit, `critical` from twice the limit;
//! - `restricted_area`: `true` (the whole frame), a rectangle
//!   `{"x", "y", "width", "height"}` in pixels, or an array of them → an object
//!   whose box overlaps it raises `restricted_area_intrusion`, severity `critical`.
//!
//! An alert is raised when its condition starts to hold and again only after it
//! stopped holding for at least one frame, so a crowd that stays is one alert.
//!
//! `video_detection` output: `{"width", "height", "frame_count", "background",
//! "max_count", "frames": [{"index", "offset_ms", "count", "objects": [{"x", "y",
//! "width", "height", "area"}]}]}`. `alerting` reads that output from a json part
//! (or detects from the task's frames itself) and outputs seed 000's
//! `{"alerts": [{"alert_id", "type", "severity", "message", "timestamp",
//! "requires_action", "frame_index", "offset_ms", "objects"}], "frames_analyzed",
//! "peak_count"}`. `timestamp` is Unix seconds; `alert_id` is
//! `<task id>-<frame index>-<type>`.

use crate::ingest::run_blocking;
use crate::vision::{self, Connectivity, Gray, Object, Rect};
use baton_core::input::PartData;
use baton_sdk::{HandlerError, InputKind, InputPart, Task};
use image::AnimationDecoder;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::io::Cursor;
use std::time::{SystemTime, UNIX_EPOCH};

pub const DEFAULT_FRAME_INTERVAL_MS: u64 = 1000;
pub const DEFAULT_MAX_FRAMES: usize = 1000;

/// One decoded frame and when it was shown, from the start of the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub gray: Gray,
    pub offset_ms: u64,
}

/// What was found in one frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameDetection {
    pub index: usize,
    pub offset_ms: u64,
    pub count: usize,
    pub objects: Vec<Object>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackgroundMode {
    First,
    Median,
}

impl BackgroundMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BackgroundMode::First => "first",
            BackgroundMode::Median => "median",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DetectionOptions {
    pub vision: vision::Options,
    pub background: BackgroundMode,
    pub frame_interval_ms: u64,
    pub max_frames: usize,
}

impl Default for DetectionOptions {
    fn default() -> Self {
        Self {
            vision: vision::Options::default(),
            background: BackgroundMode::First,
            frame_interval_ms: DEFAULT_FRAME_INTERVAL_MS,
            max_frames: DEFAULT_MAX_FRAMES,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestrictedArea {
    WholeFrame,
    Rects(Vec<Rect>),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    pub max_persons: Option<u64>,
    pub restricted_area: Option<RestrictedArea>,
}

/// Seed 000's alert, with where in the stream it was raised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub alert_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub severity: String,
    pub message: String,
    pub timestamp: u64,
    pub requires_action: bool,
    pub frame_index: usize,
    pub offset_ms: u64,
    pub objects: Vec<Object>,
}

/// Applies the rules frame after frame, raising each alert once per episode.
#[derive(Debug, Clone)]
pub struct Alerter {
    rules: Rules,
    id_prefix: String,
    stream_start: u64,
    crowded: bool,
    intruded: bool,
}

impl Alerter {
    pub fn new(rules: Rules, id_prefix: impl Into<String>, stream_start: u64) -> Self {
        Self {
            rules,
            id_prefix: id_prefix.into(),
            stream_start,
            crowded: false,
            intruded: false,
        }
    }

    /// Looks at one frame's detection and emits the alerts it starts.
    pub fn observe(&mut self, d: &FrameDetection, emit: &mut dyn FnMut(Alert)) {
        let alert = |kind: &str, severity: &str, message: String, objects: Vec<Object>| Alert {
            alert_id: format!("{}-{}-{kind}", self.id_prefix, d.index),
            kind: kind.to_string(),
            severity: severity.to_string(),
            message,
            timestamp: self.stream_start.saturating_add(d.offset_ms / 1000),
            requires_action: true,
            frame_index: d.index,
            offset_ms: d.offset_ms,
            objects,
        };
        if let Some(max) = self.rules.max_persons {
            let count = d.count as u64;
            let crowded = count > max;
            if crowded && !self.crowded {
                // In u128: a limit near u64::MAX must not overflow.
                let (count_x2, max_x3) = (2 * u128::from(count), 3 * u128::from(max));
                let severity = if count_x2 >= 4 * u128::from(max) {
                    "critical"
                } else if count_x2 >= max_x3 {
                    "high"
                } else {
                    "medium"
                };
                emit(alert(
                    "crowd_detected",
                    severity,
                    format!("Person count ({count}) exceeds threshold ({max})"),
                    d.objects.clone(),
                ));
            }
            self.crowded = crowded;
        }
        if let Some(area) = &self.rules.restricted_area {
            let inside: Vec<Object> = d
                .objects
                .iter()
                .filter(|o| match area {
                    RestrictedArea::WholeFrame => true,
                    RestrictedArea::Rects(rects) => rects.iter().any(|r| r.overlaps(o)),
                })
                .copied()
                .collect();
            let intruded = !inside.is_empty();
            if intruded && !self.intruded {
                let at: Vec<String> = inside
                    .iter()
                    .map(|o| format!("({}, {})", o.x, o.y))
                    .collect();
                emit(alert(
                    "restricted_area_intrusion",
                    "critical",
                    format!(
                        "{} detected in the restricted area at {}",
                        crate::analysis::plural(inside.len(), "person", "persons"),
                        at.join(", ")
                    ),
                    inside,
                ));
            }
            self.intruded = intruded;
        }
    }
}

/// Detects in every frame, in order, calling `on_frame` with each detection and
/// `alerter` (when given) on it, so alerts reach `on_alert` frame by frame.
/// Returns the frame size.
pub fn monitor(
    frames: impl Iterator<Item = Result<Frame, String>>,
    options: &DetectionOptions,
    mut alerter: Option<&mut Alerter>,
    on_frame: &mut dyn FnMut(&FrameDetection),
    on_alert: &mut dyn FnMut(Alert),
) -> Result<(u32, u32), String> {
    let mut frames = frames.take(options.max_frames.saturating_add(1));
    let mut buffered = Vec::new();
    let background = match options.background {
        BackgroundMode::First => match frames.next() {
            Some(f) => {
                let f = f?;
                let bg = f.gray.clone();
                buffered.push(f);
                bg
            }
            None => return Err(NO_FRAMES.into()),
        },
        BackgroundMode::Median => {
            buffered = frames.by_ref().collect::<Result<_, _>>()?;
            if buffered.is_empty() {
                return Err(NO_FRAMES.into());
            }
            check_sizes(&buffered)?;
            let grays: Vec<Gray> = buffered.iter().map(|f| f.gray.clone()).collect();
            vision::median_background(&grays)
        }
    };
    let size = (background.width, background.height);
    for (index, frame) in buffered.into_iter().map(Ok).chain(frames).enumerate() {
        if index >= options.max_frames {
            return Err(format!(
                "more than {} frames: raise max_frames or send a shorter video",
                options.max_frames
            ));
        }
        let frame = frame?;
        if (frame.gray.width, frame.gray.height) != size {
            return Err(size_error(index, &frame.gray, size));
        }
        let objects = vision::detect(&frame.gray, &background, &options.vision);
        let detection = FrameDetection {
            index,
            offset_ms: frame.offset_ms,
            count: objects.len(),
            objects,
        };
        on_frame(&detection);
        if let Some(a) = alerter.as_deref_mut() {
            a.observe(&detection, on_alert);
        }
    }
    Ok(size)
}

const NO_FRAMES: &str = "no frames: send a video part (an animated GIF) or image parts";

fn check_sizes(frames: &[Frame]) -> Result<(), String> {
    let size = (frames[0].gray.width, frames[0].gray.height);
    match frames
        .iter()
        .position(|f| (f.gray.width, f.gray.height) != size)
    {
        Some(i) => Err(size_error(i, &frames[i].gray, size)),
        None => Ok(()),
    }
}

fn size_error(index: usize, g: &Gray, size: (u32, u32)) -> String {
    format!(
        "frame {index} is {}x{}, the first frame is {}x{}: every frame must have the same size",
        g.width, g.height, size.0, size.1
    )
}

/// The task's parts, with a json part that holds an `inputs` array of `{type, data}`
/// parts (a seed 000 request, or a workflow step's `${input}`) replaced by those parts.
pub fn expand_inputs(inputs: &[InputPart]) -> Result<Vec<InputPart>, String> {
    let mut out = Vec::with_capacity(inputs.len());
    for (i, part) in inputs.iter().enumerate() {
        match &part.data {
            PartData::Json(v) => match v.get("inputs").and_then(Value::as_array) {
                Some(items) => {
                    for (j, raw) in items.iter().enumerate() {
                        out.push(
                            InputPart::from_json_value(j, raw)
                                .map_err(|e| format!("inputs[{i}]: {}", e.message))?,
                        );
                    }
                }
                None => out.push(part.clone()),
            },
            _ => out.push(part.clone()),
        }
    }
    Ok(out)
}

/// The frames of the task's video and image parts, decoded one at a time (module docs).
pub fn frames<'a>(
    inputs: &'a [InputPart],
    frame_interval_ms: u64,
) -> impl Iterator<Item = Result<Frame, String>> + 'a {
    let mut next_offset = 0u64;
    inputs
        .iter()
        .enumerate()
        .filter(|(_, p)| matches!(p.kind, InputKind::Video | InputKind::Image))
        .flat_map(|(i, part)| -> Box<dyn Iterator<Item = Decoded> + 'a> {
            match &part.data {
                PartData::Bytes(bytes) => decode_part(i, bytes),
                _ => Box::new(std::iter::once(Err(format!("inputs[{i}]: expected bytes")))),
            }
        })
        .map(move |decoded| {
            let (gray, delay) = decoded?;
            let offset_ms = next_offset;
            // A GIF delay says how long this frame shows before the next one.
            next_offset =
                next_offset.saturating_add(delay.filter(|d| *d > 0).unwrap_or(frame_interval_ms));
            Ok(Frame { gray, offset_ms })
        })
}

/// A decoded frame and, for a GIF frame, its delay in milliseconds.
type Decoded = Result<(Gray, Option<u64>), String>;

fn decode_part<'a>(i: usize, bytes: &'a [u8]) -> Box<dyn Iterator<Item = Decoded> + 'a> {
    let format = match image::guess_format(bytes) {
        Ok(f @ (image::ImageFormat::Png | image::ImageFormat::Jpeg | image::ImageFormat::Gif)) => f,
        _ => {
            return Box::new(std::iter::once(Err(format!(
                "inputs[{i}]: unsupported video or image format: send an animated GIF, or PNG/JPEG/GIF frames"
            ))))
        }
    };
    if format == image::ImageFormat::Gif {
        let decoder = match image::codecs::gif::GifDecoder::new(Cursor::new(bytes)) {
            Ok(d) => d,
            Err(e) => {
                return Box::new(std::iter::once(Err(format!(
                    "inputs[{i}]: gif does not decode: {e}"
                ))))
            }
        };
        return Box::new(decoder.into_frames().map(move |f| {
            let f = f.map_err(|e| format!("inputs[{i}]: gif frame does not decode: {e}"))?;
            let (num, den) = f.delay().numer_denom_ms();
            let delay_ms = if den == 0 {
                0
            } else {
                u64::from(num) / u64::from(den)
            };
            Ok((Gray::from_rgba(f.buffer()), Some(delay_ms)))
        }));
    }
    Box::new(std::iter::once(
        image::load_from_memory_with_format(bytes, format)
            .map(|img| (Gray::from_rgba(&img.to_rgba8()), None))
            .map_err(|e| format!("inputs[{i}]: image does not decode: {e}")),
    ))
}

/// Detection settings from the metadata (module docs).
pub fn detection_options(metadata: &Map<String, Value>) -> Result<DetectionOptions, String> {
    let d = DetectionOptions::default();
    let num = |key: &str| -> Result<Option<u64>, String> {
        crate::request::opt_u64(
            metadata.get(key).filter(|v| !v.is_null()),
            &format!("metadata.{key}"),
        )
    };
    let threshold = match num("threshold")? {
        None => d.vision.threshold,
        Some(t) if t <= 255 => t as u8,
        Some(t) => return Err(format!("metadata.threshold must be at most 255, got {t}")),
    };
    let connectivity = match num("connectivity")? {
        None | Some(8) => Connectivity::Eight,
        Some(4) => Connectivity::Four,
        Some(c) => return Err(format!("metadata.connectivity must be 4 or 8, got {c}")),
    };
    let background = match metadata.get("background") {
        None | Some(Value::Null) => d.background,
        Some(Value::String(s)) if s == "first" => BackgroundMode::First,
        Some(Value::String(s)) if s == "median" => BackgroundMode::Median,
        Some(other) => {
            return Err(format!(
                "metadata.background must be \"first\" or \"median\", got {other}"
            ))
        }
    };
    let frame_interval_ms = match num("frame_interval_ms")? {
        None => d.frame_interval_ms,
        Some(0) => return Err("metadata.frame_interval_ms must be at least 1".into()),
        Some(ms) => ms,
    };
    Ok(DetectionOptions {
        vision: vision::Options {
            threshold,
            min_area: num("min_blob_area")?.map_or(d.vision.min_area, |a| a as usize),
            connectivity,
        },
        background,
        frame_interval_ms,
        max_frames: num("max_frames")?.map_or(d.max_frames, |m| m as usize),
    })
}

/// Alerting rules from the metadata, else from `fallback` (module docs).
pub fn rules(
    metadata: &Map<String, Value>,
    fallback: &Map<String, Value>,
) -> Result<Rules, String> {
    let get = |key: &str| crate::request::field(metadata, fallback, key);
    let max_persons = crate::request::opt_u64(get("max_persons"), "max_persons")?;
    let restricted_area = match get("restricted_area") {
        None | Some(Value::Bool(false)) => None,
        Some(Value::Bool(true)) => Some(RestrictedArea::WholeFrame),
        Some(v @ Value::Object(_)) => Some(RestrictedArea::Rects(vec![rect(v)?])),
        Some(Value::Array(items)) => Some(RestrictedArea::Rects(
            items.iter().map(rect).collect::<Result<_, _>>()?,
        )),
        Some(other) => {
            return Err(format!(
                "restricted_area must be true, false, a rectangle or an array of rectangles, got {other}"
            ))
        }
    };
    Ok(Rules {
        max_persons,
        restricted_area,
    })
}

fn rect(v: &Value) -> Result<Rect, String> {
    serde_json::from_value(v.clone()).map_err(|_| {
        format!("restricted_area rectangle must be {{\"x\", \"y\", \"width\", \"height\"}} in whole pixels, got {v}")
    })
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn stream_start(metadata: &Map<String, Value>) -> Result<u64, String> {
    Ok(crate::request::opt_u64(
        metadata.get("stream_start").filter(|v| !v.is_null()),
        "metadata.stream_start",
    )?
    .unwrap_or_else(now_unix))
}

/// `video_detection`.
pub async fn detection_handler(task: Task) -> Result<Value, HandlerError> {
    run_blocking(move || {
        let options = detection_options(&task.metadata)?;
        let inputs = expand_inputs(&task.inputs)?;
        let mut detections = Vec::new();
        let events = task.events().clone();
        let (width, height) = monitor(
            frames(&inputs, options.frame_interval_ms),
            &options,
            None,
            &mut |d| {
                // A light event per frame; the boxes are in the output.
                events.emit(
                    "detection",
                    json!({"frame_index": d.index, "offset_ms": d.offset_ms, "count": d.count}),
                );
                detections.push(d.clone())
            },
            &mut |_| {},
        )?;
        Ok(json!({
            "width": width,
            "height": height,
            "frame_count": detections.len(),
            "background": options.background.as_str(),
            "max_count": detections.iter().map(|d| d.count).max().unwrap_or(0),
            "frames": detections,
        }))
    })
    .await
}

/// `alerting` and `real_time_monitoring`.
pub async fn alerting_handler(task: Task) -> Result<Value, HandlerError> {
    run_blocking(move || {
        let spec = crate::request::json_object(&task);
        let fallback = match spec.get("rules") {
            Some(Value::Object(r)) => r.clone(),
            _ => Map::new(),
        };
        let rules = rules(&task.metadata, &fallback)?;
        if rules == Rules::default() {
            return Err(
                "no alerting rules: set metadata.max_persons and/or metadata.restricted_area"
                    .into(),
            );
        }
        let mut alerter = Alerter::new(rules, task.task_id.as_str(), stream_start(&task.metadata)?);
        let mut alerts = Vec::new();
        // Each alert goes to the clients watching the task as soon as it is raised.
        let events = task.events().clone();
        let mut raise = |a: Alert| {
            events.emit("alert", &a);
            alerts.push(a);
        };
        let mut n_frames = 0;
        let mut peak = 0;
        let mut count = |d: &FrameDetection| {
            n_frames += 1;
            peak = peak.max(d.count);
        };
        match spec.get("frames") {
            Some(raw) => {
                let detections: Vec<FrameDetection> =
                    serde_json::from_value(raw.clone()).map_err(|e| {
                        format!("frames must be a video_detection output's frames: {e}")
                    })?;
                for d in &detections {
                    count(d);
                    alerter.observe(d, &mut raise);
                }
            }
            None => {
                let options = detection_options(&task.metadata)?;
                let inputs = expand_inputs(&task.inputs)?;
                monitor(
                    frames(&inputs, options.frame_interval_ms),
                    &options,
                    Some(&mut alerter),
                    &mut count,
                    &mut raise,
                )?;
            }
        }
        Ok(json!({"alerts": alerts, "frames_analyzed": n_frames, "peak_count": peak}))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_sdk::testing::{Harness, TaskBuilder};
    use image::{Delay, Rgba, RgbaImage};

    const W: u32 = 64;
    const H: u32 = 48;

    /// A grey background with dark "people" rectangles `(x, y, w, h)`.
    fn scene(people: &[(u32, u32, u32, u32)]) -> RgbaImage {
        let mut img = RgbaImage::from_pixel(W, H, Rgba([200, 200, 200, 255]));
        for &(x, y, w, h) in people {
            for yy in y..y + h {
                for xx in x..x + w {
                    img.put_pixel(xx, yy, Rgba([30, 30, 30, 255]));
                }
            }
        }
        img
    }

    fn gif(frames: &[RgbaImage], delay_ms: u32) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc = image::codecs::gif::GifEncoder::new(&mut out);
            for f in frames {
                enc.encode_frame(image::Frame::from_parts(
                    f.clone(),
                    0,
                    0,
                    Delay::from_numer_denom_ms(delay_ms, 1),
                ))
                .unwrap();
            }
        }
        out
    }

    fn png(img: &RgbaImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    /// Empty, then 1, 3 and 2 people; the third one stands in the top-left corner.
    fn crowd() -> Vec<RgbaImage> {
        vec![
            scene(&[]),
            scene(&[(40, 20, 6, 12)]),
            scene(&[(40, 20, 6, 12), (20, 25, 5, 10), (2, 2, 5, 10)]),
            scene(&[(40, 20, 6, 12), (20, 25, 5, 10)]),
        ]
    }

    fn meta(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[tokio::test]
    async fn gif_frames_are_counted_with_boxes_and_times() {
        let task = TaskBuilder::new("video_detection")
            .bytes(InputKind::Video, gif(&crowd(), 500))
            .build();
        let out = detection_handler(task).await.unwrap();
        assert_eq!(
            (
                out["width"].as_u64(),
                out["height"].as_u64(),
                out["frame_count"].as_u64(),
                out["max_count"].as_u64()
            ),
            (Some(64), Some(48), Some(4), Some(3))
        );
        assert_eq!(out["background"], "first");
        let counts: Vec<u64> = out["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["count"].as_u64().unwrap())
            .collect();
        assert_eq!(counts, vec![0, 1, 3, 2]);
        let offsets: Vec<u64> = out["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["offset_ms"].as_u64().unwrap())
            .collect();
        assert_eq!(offsets, vec![0, 500, 1000, 1500]);
        assert_eq!(
            out["frames"][2]["objects"],
            json!([
                {"x": 2, "y": 2, "width": 5, "height": 10, "area": 50},
                {"x": 40, "y": 20, "width": 6, "height": 12, "area": 72},
                {"x": 20, "y": 25, "width": 5, "height": 10, "area": 50},
            ])
        );
    }

    #[test]
    fn alerts_arrive_frame_by_frame_once_per_episode() {
        let frames_in = crowd();
        let parts: Vec<InputPart> = frames_in
            .iter()
            .chain([&frames_in[2], &frames_in[0], &frames_in[2]])
            .map(|f| InputPart::bytes(InputKind::Image, png(f)))
            .collect();
        let rules = rules(
            &meta(json!({"max_persons": 2, "restricted_area": {"x": 0, "y": 0, "width": 10, "height": 10}})),
            &Map::new(),
        )
        .unwrap();
        let mut alerter = Alerter::new(rules, "monitor-001", 1_704_412_800);
        // Which frame each alert arrived after: the callbacks interleave.
        let mut log = Vec::new();
        let log_cell = std::cell::RefCell::new(&mut log);
        monitor(
            frames(&parts, 1000),
            &DetectionOptions::default(),
            Some(&mut alerter),
            &mut |d| {
                log_cell
                    .borrow_mut()
                    .push(format!("frame {} count {}", d.index, d.count))
            },
            &mut |a| {
                log_cell.borrow_mut().push(format!(
                    "alert {} {} {}",
                    a.alert_id, a.severity, a.timestamp
                ))
            },
        )
        .unwrap();
        assert_eq!(
            log,
            vec![
                "frame 0 count 0",
                "frame 1 count 1",
                "frame 2 count 3",
                "alert monitor-001-2-crowd_detected high 1704412802",
                "alert monitor-001-2-restricted_area_intrusion critical 1704412802",
                "frame 3 count 2",
                "frame 4 count 3",
                "alert monitor-001-4-crowd_detected high 1704412804",
                "alert monitor-001-4-restricted_area_intrusion critical 1704412804",
                "frame 5 count 0",
                "frame 6 count 3",
                "alert monitor-001-6-crowd_detected high 1704412806",
                "alert monitor-001-6-restricted_area_intrusion critical 1704412806",
            ]
        );
    }

    #[tokio::test]
    async fn seed_alert_shape_and_severity() {
        // 15 people against a limit of 10: seed 000's example, severity high.
        let people: Vec<(u32, u32, u32, u32)> = (0..15)
            .map(|i| (2 + (i % 8) * 7, 4 + (i / 8) * 20, 4, 8))
            .collect();
        let video = gif(&[scene(&[]), scene(&people)], 1000);
        let task = TaskBuilder::new("real_time_monitoring")
            .task_id("monitor-001")
            .bytes(InputKind::Video, video)
            .metadata(
                json!({"max_persons": 10, "restricted_area": true, "stream_start": 1704412800}),
            )
            .build();
        let out = alerting_handler(task).await.unwrap();
        assert_eq!(
            (out["frames_analyzed"].as_u64(), out["peak_count"].as_u64()),
            (Some(2), Some(15))
        );
        let alerts = out["alerts"].as_array().unwrap();
        assert_eq!(alerts.len(), 2);
        let first = &alerts[0];
        assert_eq!(first["alert_id"], "monitor-001-1-crowd_detected");
        assert_eq!(first["type"], "crowd_detected");
        assert_eq!(first["severity"], "high");
        assert_eq!(first["message"], "Person count (15) exceeds threshold (10)");
        assert_eq!(first["timestamp"], 1704412801);
        assert_eq!(first["requires_action"], true);
        assert_eq!(first["objects"].as_array().unwrap().len(), 15);
        assert_eq!(alerts[1]["type"], "restricted_area_intrusion");
        assert!(alerts[1]["message"]
            .as_str()
            .unwrap()
            .starts_with("15 persons detected in the restricted area at (2, 4), (9, 4),"));
    }

    #[tokio::test]
    async fn alerting_reads_a_detection_output() {
        let (detections, frame_events) = Harness::new(detection_handler)
            .run_with_events(
                TaskBuilder::new("video_detection")
                    .bytes(InputKind::Video, gif(&crowd(), 100))
                    .build(),
            )
            .await;
        let detections = detections.unwrap();
        // One light detection event per frame, as it is analysed.
        let counts: Vec<(String, Value)> = frame_events
            .into_iter()
            .map(|e| (e.kind, e.data["count"].clone()))
            .collect();
        assert_eq!(
            counts,
            [0, 1, 3, 2]
                .into_iter()
                .map(|n| ("detection".to_string(), json!(n)))
                .collect::<Vec<_>>()
        );
        let task = TaskBuilder::new("alerting")
            .task_id("t")
            .json(json!({"frames": detections["frames"], "rules": {"max_persons": 1}}))
            .metadata(json!({"stream_start": 100}))
            .build();
        let (out, events) = Harness::new(alerting_handler).run_with_events(task).await;
        let out = out.unwrap();
        // Every alert was emitted as an `alert` event, in the seed's shape.
        assert_eq!(
            events,
            out["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| baton_sdk::Event {
                    kind: "alert".into(),
                    data: a.clone()
                })
                .collect::<Vec<_>>()
        );
        assert_eq!(
            out["alerts"],
            json!([{
                "alert_id": "t-2-crowd_detected", "type": "crowd_detected", "severity": "critical",
                "message": "Person count (3) exceeds threshold (1)", "timestamp": 100,
                "requires_action": true, "frame_index": 2, "offset_ms": 200,
                "objects": detections["frames"][2]["objects"],
            }])
        );
    }

    #[test]
    fn extreme_rule_values_do_not_overflow() {
        let d = |count| FrameDetection {
            index: 0,
            offset_ms: u64::MAX,
            count,
            objects: vec![],
        };
        let mut alerts = Vec::new();
        let rules = Rules {
            max_persons: Some(u64::MAX),
            restricted_area: None,
        };
        Alerter::new(rules, "x", u64::MAX).observe(&d(usize::MAX), &mut |a| alerts.push(a));
        assert!(alerts.is_empty());
        let rules = Rules {
            max_persons: Some(u64::MAX / 2),
            restricted_area: None,
        };
        Alerter::new(rules, "x", u64::MAX).observe(&d(usize::MAX), &mut |a| alerts.push(a));
        assert_eq!(
            (alerts[0].severity.as_str(), alerts[0].timestamp),
            ("critical", u64::MAX)
        );
    }

    #[test]
    fn median_background_finds_people_in_the_first_frame() {
        // Someone stands in the first frame only: the first-frame background would
        // report a "hole" in every later frame; the median does not.
        let imgs = [
            scene(&[(5, 5, 5, 10)]),
            scene(&[]),
            scene(&[(30, 10, 5, 10)]),
            scene(&[]),
        ];
        let parts: Vec<InputPart> = imgs
            .iter()
            .map(|f| InputPart::bytes(InputKind::Image, png(f)))
            .collect();
        let counts = |mode| {
            let mut c = Vec::new();
            monitor(
                frames(&parts, 1000),
                &DetectionOptions {
                    background: mode,
                    ..DetectionOptions::default()
                },
                None,
                &mut |d| c.push(d.count),
                &mut |_| {},
            )
            .unwrap();
            c
        };
        assert_eq!(counts(BackgroundMode::Median), vec![1, 0, 1, 0]);
        assert_eq!(counts(BackgroundMode::First), vec![0, 1, 2, 1]);
    }

    #[tokio::test]
    async fn bad_videos_and_rules_are_refused() {
        let run = |task: Task| async move { detection_handler(task).await.unwrap_err() };
        assert_eq!(
            run(TaskBuilder::new("video_detection").text("hi").build()).await,
            HandlerError::permanent(NO_FRAMES)
        );
        assert_eq!(
            run(TaskBuilder::new("video_detection").bytes(InputKind::Video, b"\x00\x00\x00\x18ftypmp42".to_vec()).build()).await,
            HandlerError::permanent("inputs[0]: unsupported video or image format: send an animated GIF, or PNG/JPEG/GIF frames")
        );
        let mut broken = gif(&crowd(), 100);
        broken.truncate(broken.len() / 2);
        let err = run(TaskBuilder::new("video_detection")
            .bytes(InputKind::Video, broken)
            .build())
        .await;
        assert!(
            err.is_permanent() && err.message().starts_with("inputs[0]: gif"),
            "{err}"
        );
        let small = image::RgbaImage::from_pixel(8, 8, Rgba([0, 0, 0, 255]));
        let err = run(TaskBuilder::new("video_detection")
            .bytes(InputKind::Image, png(&scene(&[])))
            .bytes(InputKind::Image, png(&small))
            .build())
        .await;
        assert_eq!(
            err,
            HandlerError::permanent(
                "frame 1 is 8x8, the first frame is 64x48: every frame must have the same size"
            )
        );
        let err = run(TaskBuilder::new("video_detection")
            .bytes(InputKind::Video, gif(&crowd(), 100))
            .metadata(json!({"max_frames": 3}))
            .build())
        .await;
        assert_eq!(
            err,
            HandlerError::permanent("more than 3 frames: raise max_frames or send a shorter video")
        );
        assert_eq!(
            detection_options(&meta(json!({"connectivity": 6}))).unwrap_err(),
            "metadata.connectivity must be 4 or 8, got 6"
        );
        assert_eq!(
            rules(&meta(json!({"restricted_area": {"x": -1}})), &Map::new()).unwrap_err(),
            "restricted_area rectangle must be {\"x\", \"y\", \"width\", \"height\"} in whole pixels, got {\"x\":-1}"
        );
        let err = alerting_handler(
            TaskBuilder::new("alerting")
                .bytes(InputKind::Video, gif(&crowd(), 100))
                .build(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err,
            HandlerError::permanent(
                "no alerting rules: set metadata.max_persons and/or metadata.restricted_area"
            )
        );
    }
}
