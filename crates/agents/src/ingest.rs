//! `data_ingest`, the first agent of seed 000's report generation: turns a task's
//! inputs into numeric series and image statistics. Pure functions; the handler at
//! the bottom only runs them off the async runtime.
//!
//! What each input part contributes:
//! - **text**: CSV with a header (delimiter `,`, `;` or tab, every line with the same
//!   number of cells, at least one header cell that is not a number) gives one series
//!   per numeric column, labelled by the first non-numeric column; text that parses
//!   as JSON is read as a json part; any other text gives one series of the numbers
//!   it contains, in order. Numbers may carry a sign, decimals, thousands separators
//!   (`1,234.5`), a leading currency sign or a trailing `%`; a number glued to letters
//!   (`Q4`, `3rd`, `5kg`) is skipped.
//! - **json**: an array of numbers is a series; an array of objects gives one series per
//!   field that is a number in every object; an object is walked field by field in
//!   key order (its number fields together form one series labelled by field name); a string is read
//!   as text. An object with an `inputs` array of `{type, data}` parts (a seed 000
//!   request, or a workflow's run input) is expanded into those parts, and its
//!   `report_title` (or `metadata.report_title`) becomes the output's `title`.
//! - **image**: PNG, JPEG or GIF, decoded; its statistics are reported.
//! - video and binary parts are not data: they are skipped with a warning.
//!
//! The output:
//! ```json
//! {"series": [{"name": "sales", "source": "inputs[0] csv column 2", "values": [120, 135],
//!              "labels": ["Oct", "Nov"]}],
//!  "images": [{"source": "inputs[1]", "format": "png", "width": 4, "height": 2,
//!              "color_type": "Rgb8", "channels": [{"channel": "r", "mean": 10, "std_dev": 0}],
//!              "brightness": 10}],
//!  "title": "Q4 Sales Analysis",
//!  "warnings": []}
//! ```
//! `labels` and `title` are omitted when absent. Image `mean`, `std_dev` (population)
//! and `brightness` are on the 0–255 scale; brightness is the mean luma
//! `0.299 R + 0.587 G + 0.114 B`.

use crate::stats::round6;
use baton_sdk::{HandlerError, InputPart, Task};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub name: String,
    pub source: String,
    pub values: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelStats {
    pub channel: String,
    pub mean: f64,
    pub std_dev: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageStats {
    pub source: String,
    pub format: String,
    pub width: u32,
    pub height: u32,
    pub color_type: String,
    pub channels: Vec<ChannelStats>,
    pub brightness: f64,
}

/// What `data_ingest` outputs, and what `data_analysis` reads back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ingested {
    #[serde(default)]
    pub series: Vec<Series>,
    #[serde(default)]
    pub images: Vec<ImageStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default)]
    pub warnings: Vec<String>,
}

impl Ingested {
    pub fn data_points(&self) -> usize {
        self.series.iter().map(|s| s.values.len()).sum()
    }
}

/// Reads every input part. Fails (for the submitter to fix) when an image does not
/// decode, an embedded part is malformed, or nothing usable was found.
pub fn ingest(inputs: &[InputPart]) -> Result<Ingested, String> {
    if inputs.is_empty() {
        return Err("no inputs: send text, json or image parts with the data to report on".into());
    }
    let mut out = Ingested::default();
    for (i, part) in inputs.iter().enumerate() {
        let source = format!("inputs[{i}]");
        let name = part.name.clone().unwrap_or_else(|| source.clone());
        read_part(part, &source, &name, &mut out)?;
    }
    if out.data_points() == 0 && out.images.is_empty() {
        let why = if out.warnings.is_empty() {
            String::new()
        } else {
            format!(" ({})", out.warnings.join("; "))
        };
        return Err(format!("no numbers or images found in the inputs{why}"));
    }
    Ok(out)
}

fn read_part(part: &InputPart, source: &str, name: &str, out: &mut Ingested) -> Result<(), String> {
    use baton_core::input::PartData as D;
    use baton_sdk::InputKind as K;
    match (&part.kind, &part.data) {
        (K::Text, D::Text(text)) => read_text(text, source, name, out),
        (K::Json, D::Json(value)) => read_json(value, source, name, out),
        (K::Image, D::Bytes(bytes)) => {
            out.images.push(image_stats(bytes, source)?);
            Ok(())
        }
        (kind, _) => {
            out.warnings.push(format!(
                "{source}: {} input skipped (data_ingest reads text, json and images)",
                kind.as_str()
            ));
            Ok(())
        }
    }
}

fn read_text(text: &str, source: &str, name: &str, out: &mut Ingested) -> Result<(), String> {
    let trimmed = text.trim();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        if let Ok(value) = serde_json::from_str::<Value>(trimmed) {
            return read_json(&value, source, name, out);
        }
    }
    if let Some(columns) = csv_columns(trimmed, source) {
        if columns.is_empty() {
            out.warnings
                .push(format!("{source}: csv has no numeric column"));
        }
        out.series.extend(columns);
        return Ok(());
    }
    let numbers = numbers_in_text(trimmed);
    if numbers.is_empty() {
        out.warnings
            .push(format!("{source}: text contains no numbers"));
    } else {
        out.series.push(Series {
            name: name.to_string(),
            source: format!("{source} text"),
            values: numbers,
            labels: None,
        });
    }
    Ok(())
}

fn read_json(value: &Value, source: &str, name: &str, out: &mut Ingested) -> Result<(), String> {
    if let Some(parts) = embedded_inputs(value) {
        if out.title.is_none() {
            out.title = embedded_title(value);
        }
        for (j, raw) in parts.iter().enumerate() {
            let inner_source = format!("{source}.inputs[{j}]");
            let part = InputPart::from_json_value(j, raw)
                .map_err(|e| format!("{source}: {}", e.message))?;
            let inner_name = part.name.clone().unwrap_or_else(|| inner_source.clone());
            read_part(&part, &inner_source, &inner_name, out)?;
        }
        return Ok(());
    }
    let before = out.series.len();
    walk_json(value, name, source, out)?;
    if out.series.len() == before {
        out.warnings
            .push(format!("{source}: json contains no numbers"));
    }
    Ok(())
}

fn embedded_inputs(value: &Value) -> Option<&Vec<Value>> {
    let items = value.get("inputs")?.as_array()?;
    items
        .iter()
        .all(|item| item.get("type").is_some_and(Value::is_string))
        .then_some(items)
}

fn embedded_title(value: &Value) -> Option<String> {
    ["report_title", "title"]
        .iter()
        .find_map(|k| value.get(*k).and_then(Value::as_str))
        .or_else(|| {
            value
                .get("metadata")
                .and_then(|m| m.get("report_title"))
                .and_then(Value::as_str)
        })
        .map(str::to_string)
}

fn walk_json(value: &Value, path: &str, source: &str, out: &mut Ingested) -> Result<(), String> {
    match value {
        Value::Number(n) => {
            if let Some(v) = n.as_f64().filter(|v| v.is_finite()) {
                out.series.push(Series {
                    name: path.to_string(),
                    source: format!("{source} json"),
                    values: vec![v],
                    labels: None,
                });
            }
        }
        Value::String(s) => {
            let numbers = numbers_in_text(s);
            if !numbers.is_empty() {
                out.series.push(Series {
                    name: path.to_string(),
                    source: format!("{source} json text"),
                    values: numbers,
                    labels: None,
                });
            }
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_number) => {
            out.series.push(Series {
                name: path.to_string(),
                source: format!("{source} json array"),
                values: items.iter().filter_map(Value::as_f64).collect(),
                labels: None,
            });
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object) => {
            let first = items[0].as_object().into_iter().flat_map(|o| o.keys());
            for key in first {
                let column: Option<Vec<f64>> =
                    items.iter().map(|item| item.get(key)?.as_f64()).collect();
                if let Some(values) = column {
                    out.series.push(Series {
                        name: format!("{path}.{key}"),
                        source: format!("{source} json records"),
                        values,
                        labels: None,
                    });
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk_json(item, &format!("{path}[{i}]"), source, out)?;
            }
        }
        Value::Object(fields) => {
            let mut scalars = Vec::new();
            let mut labels = Vec::new();
            for (key, field) in fields {
                match field.as_f64() {
                    Some(v) if field.is_number() => {
                        scalars.push(v);
                        labels.push(key.clone());
                    }
                    _ => walk_json(field, &format!("{path}.{key}"), source, out)?,
                }
            }
            if !scalars.is_empty() {
                out.series.push(Series {
                    name: path.to_string(),
                    source: format!("{source} json fields"),
                    values: scalars,
                    labels: Some(labels),
                });
            }
        }
        Value::Null | Value::Bool(_) => {}
    }
    Ok(())
}

/// The numeric columns of `text` if it is CSV with a header, else `None`.
pub fn csv_columns(text: &str, source: &str) -> Option<Vec<Series>> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.len() < 2 {
        return None;
    }
    let delimiter = [',', ';', '\t'].into_iter().find(|d| {
        let width = split_cells(lines[0], *d).len();
        width >= 2 && lines.iter().all(|l| split_cells(l, *d).len() == width)
    })?;
    let rows: Vec<Vec<String>> = lines.iter().map(|l| split_cells(l, delimiter)).collect();
    let header = &rows[0];
    if header.iter().all(|cell| parse_number(cell).is_some()) {
        return None;
    }
    let data = &rows[1..];
    let numeric: Vec<Option<Vec<f64>>> = (0..header.len())
        .map(|c| data.iter().map(|row| parse_number(&row[c])).collect())
        .collect();
    let labels: Option<Vec<String>> = numeric
        .iter()
        .position(Option::is_none)
        .map(|c| data.iter().map(|row| row[c].clone()).collect());
    Some(
        numeric
            .into_iter()
            .enumerate()
            .filter_map(|(c, values)| {
                Some(Series {
                    name: header[c].clone(),
                    source: format!("{source} csv column {}", c + 1),
                    values: values?,
                    labels: labels.clone(),
                })
            })
            .collect(),
    )
}

fn split_cells(line: &str, delimiter: char) -> Vec<String> {
    line.split(delimiter)
        .map(|cell| cell.trim().trim_matches('"').trim().to_string())
        .collect()
}

/// A cell read as a number: optional currency sign in front, optional `%` behind.
fn parse_number(cell: &str) -> Option<f64> {
    let s = cell.trim();
    let s = s.strip_suffix('%').unwrap_or(s);
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let s = s.trim_start_matches(['$', '€', '£', '¥']);
    let s = s.replace(',', "");
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let v: f64 = s.parse().ok()?;
    v.is_finite().then_some(if negative { -v } else { v })
}

/// The numbers written in free text, in order (see the module docs for the rules).
pub fn numbers_in_text(text: &str) -> Vec<f64> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let starts_number = chars[i].is_ascii_digit()
            || (matches!(chars[i], '-' | '+' | '.')
                && chars.get(i + 1).is_some_and(char::is_ascii_digit));
        let glued_before = i > 0 && is_word_char(chars[i - 1]);
        if !starts_number || glued_before {
            i += 1;
            continue;
        }
        let start = i;
        let mut literal = String::new();
        if matches!(chars[i], '-' | '+') {
            literal.push(chars[i]);
            i += 1;
        }
        let mut int_digits = 0;
        while i < chars.len() && chars[i].is_ascii_digit() {
            literal.push(chars[i]);
            int_digits += 1;
            i += 1;
        }
        // Thousands groups: ",ddd" not followed by a further digit.
        while int_digits > 0
            && chars.get(i) == Some(&',')
            && (1..=3).all(|k| chars.get(i + k).is_some_and(char::is_ascii_digit))
            && !chars.get(i + 4).is_some_and(char::is_ascii_digit)
        {
            literal.extend(&chars[i + 1..i + 4]);
            i += 4;
        }
        if chars.get(i) == Some(&'.') && chars.get(i + 1).is_some_and(char::is_ascii_digit) {
            literal.push('.');
            i += 1;
            while i < chars.len() && chars[i].is_ascii_digit() {
                literal.push(chars[i]);
                i += 1;
            }
        }
        if chars.get(i).is_some_and(|c| c.is_alphabetic() || *c == '_') {
            // Glued to a word (`5kg`, `3rd`): not a quantity we can name; skip the word.
            while i < chars.len() && is_word_char(chars[i]) {
                i += 1;
            }
            continue;
        }
        match literal.parse::<f64>() {
            Ok(v) if v.is_finite() => out.push(v),
            _ => {}
        }
        if i == start {
            i += 1;
        }
    }
    out
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Decodes a PNG, JPEG or GIF (its first frame) and measures it.
pub fn image_stats(bytes: &[u8], source: &str) -> Result<ImageStats, String> {
    let format = image::guess_format(bytes)
        .map_err(|_| format!("{source}: not a PNG, JPEG or GIF image"))?;
    let format_name = match format {
        image::ImageFormat::Png => "png",
        image::ImageFormat::Jpeg => "jpeg",
        image::ImageFormat::Gif => "gif",
        other => {
            return Err(format!(
                "{source}: {other:?} images are not supported (send PNG, JPEG or GIF)"
            ))
        }
    };
    let img = image::load_from_memory_with_format(bytes, format)
        .map_err(|e| format!("{source}: {format_name} image does not decode: {e}"))?;
    let color = img.color();
    let names: &[&str] = match (color.has_color(), color.has_alpha()) {
        (true, true) => &["r", "g", "b", "a"],
        (true, false) => &["r", "g", "b"],
        (false, true) => &["l", "a"],
        (false, false) => &["l"],
    };
    let rgba = img.to_rgba8();
    let pixels = f64::from(rgba.width()) * f64::from(rgba.height());
    // Which RGBA byte holds each reported channel.
    let index_of = |name: &str| match name {
        "g" => 1,
        "b" => 2,
        "a" => 3,
        _ => 0,
    };
    let mut sums = [0f64; 4];
    let mut squares = [0f64; 4];
    let mut luma = 0f64;
    for p in rgba.pixels() {
        for c in 0..4 {
            let v = f64::from(p.0[c]);
            sums[c] += v;
            squares[c] += v * v;
        }
        luma += 0.299 * f64::from(p.0[0]) + 0.587 * f64::from(p.0[1]) + 0.114 * f64::from(p.0[2]);
    }
    let channels = names
        .iter()
        .map(|name| {
            let c = index_of(name);
            let mean = sums[c] / pixels;
            let variance = (squares[c] / pixels - mean * mean).max(0.0);
            ChannelStats {
                channel: (*name).to_string(),
                mean: round6(mean),
                std_dev: round6(variance.sqrt()),
            }
        })
        .collect();
    Ok(ImageStats {
        source: source.to_string(),
        format: format_name.to_string(),
        width: img.width(),
        height: img.height(),
        color_type: format!("{color:?}"),
        channels,
        brightness: round6(luma / pixels),
    })
}

/// `data_ingest`: the task's inputs as series and image statistics.
pub async fn handler(task: Task) -> Result<Value, HandlerError> {
    let ingested = run_blocking(move || ingest(&task.inputs)).await?;
    serde_json::to_value(ingested).map_err(|e| HandlerError::permanent(format!("output: {e}")))
}

/// Runs CPU-bound work (decoding, statistics) off the async workers; its `Err` is
/// a mistake in the input, so permanent.
pub(crate) async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, HandlerError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(HandlerError::permanent),
        Err(e) => Err(HandlerError::retryable(format!(
            "worker thread failed: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_sdk::InputKind;
    use image::{ImageBuffer, Rgb};
    use serde_json::json;

    fn png(img: &image::RgbImage) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn numbers_in_free_text() {
        assert_eq!(
            numbers_in_text("Q4 sales: 120, 135.5 and -7; revenue $1,234,567 (up 12%)."),
            vec![120.0, 135.5, -7.0, 1_234_567.0, 12.0]
        );
        assert_eq!(
            numbers_in_text("3rd place, 5kg, x2, 2023-2024, .5"),
            vec![2023.0, 2024.0, 0.5]
        );
        assert_eq!(
            numbers_in_text("1,23 and 1,2345"),
            vec![1.0, 23.0, 1.0, 2345.0]
        );
        assert!(numbers_in_text("no figures here").is_empty());
    }

    #[test]
    fn csv_with_header_gives_numeric_columns() {
        let text = "month,sales,returns\nOct,120,4\nNov,\"135\",5\nDec,150,$6";
        let got = csv_columns(text, "inputs[0]").unwrap();
        let labels = Some(vec!["Oct".to_string(), "Nov".into(), "Dec".into()]);
        assert_eq!(
            got,
            vec![
                Series {
                    name: "sales".into(),
                    source: "inputs[0] csv column 2".into(),
                    values: vec![120.0, 135.0, 150.0],
                    labels: labels.clone(),
                },
                Series {
                    name: "returns".into(),
                    source: "inputs[0] csv column 3".into(),
                    values: vec![4.0, 5.0, 6.0],
                    labels,
                },
            ]
        );
        // Not CSV: ragged rows, a header of numbers, a single line.
        assert_eq!(csv_columns("a,b\n1,2,3", "s"), None);
        assert_eq!(csv_columns("1,2\n3,4", "s"), None);
        assert_eq!(csv_columns("a,b", "s"), None);
        assert_eq!(csv_columns("a;b\n1;2", "s").unwrap()[1].values, vec![2.0]);
    }

    #[test]
    fn json_shapes() {
        let got = ingest(&[InputPart {
            name: Some("q4".into()),
            ..InputPart::json(json!({
                "daily": [1, 2.5, 3],
                "regions": [{"name": "n", "sales": 10, "units": 1}, {"name": "s", "sales": 20}],
                "totals": {"oct": 5, "nov": 6},
                "note": "grew 7 points",
                "flag": true,
            }))
        }])
        .unwrap();
        let names: Vec<(&str, &[f64])> = got
            .series
            .iter()
            .map(|s| (s.name.as_str(), s.values.as_slice()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("q4.daily", &[1.0, 2.5, 3.0][..]),
                ("q4.note", &[7.0][..]),
                ("q4.regions.sales", &[10.0, 20.0][..]),
                ("q4.totals", &[6.0, 5.0][..]),
            ]
        );
        assert_eq!(
            got.series[3].labels,
            Some(vec!["nov".to_string(), "oct".into()])
        );
    }

    #[test]
    fn image_statistics_are_exact() {
        // 2 x 2: two black pixels, one pure red, one white.
        let img = ImageBuffer::from_fn(2, 2, |x, y| match (x, y) {
            (0, 0) => Rgb([255u8, 0, 0]),
            (1, 1) => Rgb([255, 255, 255]),
            _ => Rgb([0, 0, 0]),
        });
        let stats = image_stats(&png(&img), "inputs[1]").unwrap();
        assert_eq!(
            (
                stats.format.as_str(),
                stats.width,
                stats.height,
                stats.color_type.as_str()
            ),
            ("png", 2, 2, "Rgb8")
        );
        assert_eq!(
            stats.channels,
            vec![
                ChannelStats {
                    channel: "r".into(),
                    mean: 127.5,
                    std_dev: 127.5
                },
                ChannelStats {
                    channel: "g".into(),
                    mean: 63.75,
                    std_dev: round6((3.0f64 * 63.75 * 63.75 + 191.25 * 191.25).sqrt() / 2.0)
                },
                ChannelStats {
                    channel: "b".into(),
                    mean: 63.75,
                    std_dev: round6((3.0f64 * 63.75 * 63.75 + 191.25 * 191.25).sqrt() / 2.0)
                },
            ]
        );
        // (0.299 * 255 + 255) / 4.
        assert_eq!(stats.brightness, round6((0.299 * 255.0 + 255.0) / 4.0));
    }

    #[test]
    fn jpeg_and_grey_images() {
        let grey = image::GrayImage::from_pixel(8, 8, image::Luma([100u8]));
        let mut jpeg = std::io::Cursor::new(Vec::new());
        grey.write_to(&mut jpeg, image::ImageFormat::Jpeg).unwrap();
        let stats = image_stats(&jpeg.into_inner(), "s").unwrap();
        assert_eq!(
            (stats.format.as_str(), stats.color_type.as_str()),
            ("jpeg", "L8")
        );
        assert_eq!(stats.channels.len(), 1);
        // A flat grey survives JPEG exactly.
        assert_eq!(stats.channels[0].mean, 100.0);
        assert_eq!(stats.brightness, 100.0);
    }

    #[test]
    fn seed_request_is_expanded() {
        let img = image::RgbImage::from_pixel(1, 1, Rgb([10, 20, 30]));
        let image_part = InputPart::bytes(InputKind::Image, png(&img)).to_json_value();
        let got = ingest(&[InputPart::json(json!({
            "task_type": "report_generation",
            "inputs": [{"type": "text", "data": "Q4 sales: 10, 20, 30"},
                       image_part,
                       {"type": "video", "data": ""}],
            "metadata": {"report_title": "Q4 Sales Analysis"}
        }))])
        .unwrap();
        assert_eq!(got.title.as_deref(), Some("Q4 Sales Analysis"));
        assert_eq!(got.series[0].values, vec![10.0, 20.0, 30.0]);
        assert_eq!(got.series[0].source, "inputs[0].inputs[0] text");
        assert_eq!(got.images[0].source, "inputs[0].inputs[1]");
        assert_eq!(
            got.warnings,
            vec!["inputs[0].inputs[2]: video input skipped (data_ingest reads text, json and images)"]
        );
    }

    #[test]
    fn bad_inputs_are_refused() {
        assert_eq!(
            ingest(&[]).unwrap_err(),
            "no inputs: send text, json or image parts with the data to report on"
        );
        assert_eq!(
            ingest(&[InputPart::text("nothing to count here")]).unwrap_err(),
            "no numbers or images found in the inputs (inputs[0]: text contains no numbers)"
        );
        let mut corrupt = png(&image::RgbImage::new(4, 4));
        corrupt.truncate(40);
        let err = ingest(&[InputPart::bytes(InputKind::Image, corrupt)]).unwrap_err();
        assert!(
            err.starts_with("inputs[0]: png image does not decode: "),
            "{err}"
        );
        assert_eq!(
            ingest(&[InputPart::bytes(InputKind::Image, b"hello".to_vec())]).unwrap_err(),
            "inputs[0]: not a PNG, JPEG or GIF image"
        );
        let err = ingest(&[InputPart::json(
            json!({"inputs": [{"type": "image", "data": "***"}]}),
        )])
        .unwrap_err();
        assert!(
            err.starts_with("inputs[0]: inputs[0].data is not valid base64"),
            "{err}"
        );
    }
}
