//! Reading the fields of a task's request: a json input part first, the metadata as
//! the fallback, each with a clear permanent error when it has the wrong type.

use serde_json::{Map, Value};
use std::time::Duration;

/// The task's first json input part that is an object (the request's fields), or
/// an empty object.
pub fn json_object(task: &baton_sdk::Task) -> Map<String, Value> {
    task.inputs
        .iter()
        .find_map(|p| match &p.data {
            baton_core::input::PartData::Json(Value::Object(o)) => Some(o.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// `key` from the json input, else from the metadata; `null` counts as absent.
pub fn field<'a>(
    spec: &'a Map<String, Value>,
    metadata: &'a Map<String, Value>,
    key: &str,
) -> Option<&'a Value> {
    spec.get(key)
        .filter(|v| !v.is_null())
        .or_else(|| metadata.get(key).filter(|v| !v.is_null()))
}

pub fn opt_str(v: Option<&Value>, name: &str) -> Result<Option<String>, String> {
    match v {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("{name} must be a string, got {other}")),
    }
}

pub fn opt_u64(v: Option<&Value>, name: &str) -> Result<Option<u64>, String> {
    match v {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("{name} must be a non-negative whole number, got {v}")),
    }
}

pub fn opt_f64(v: Option<&Value>, name: &str) -> Result<Option<f64>, String> {
    match v {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("{name} must be a number, got {v}")),
    }
}

/// A `Retry-After` given in seconds (the HTTP-date form is not honoured).
pub fn retry_after_header(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let raw = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    raw.trim().parse::<u64>().ok().map(Duration::from_secs)
}
