//! Step outputs passed by reference: a large output of a parent step is not copied
//! into every child's stored task. The engine renders a child's input with such a
//! value left as a placeholder (`null`) and an [`OutputRef`] naming the parent's
//! task and the path within its output (the task's metadata key [`INPUT_REFS`]);
//! the dispatcher reads the parent's stored output when it hands the child to an
//! agent and puts the selected value in place ([`fill`]), so the agent receives the
//! input exactly as if it had been copied.
//!
//! Only a value that is exactly one `${steps.<id>.output...}` reference is passed
//! this way, only when step `<id>`'s output is one task's output (not a map or
//! scatter step, whose outputs are assembled from many tasks), and only from
//! [`BY_REFERENCE_BYTES`] on: below that a copy costs less than the read at dispatch.

use super::expr::{self, EvalError, Path, Scope, Segment};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The metadata key holding a task's [`OutputRef`]s; the dispatcher removes it
/// before the agent sees the task, and a client may not set it.
pub const INPUT_REFS: &str = "input_refs";

/// Selected values from this size on (as JSON text) are passed by reference.
pub const BY_REFERENCE_BYTES: usize = 16 * 1024;

/// A value of a task's `input` part that is another task's output, or part of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputRef {
    /// Where the value goes: a JSON pointer into the input (`""`: the whole input).
    pub at: String,
    /// The task whose output is read.
    pub task_id: String,
    /// The reference as written (`steps.ingest.output.rows`); the path within the
    /// output is what follows `output`.
    #[serde(rename = "ref")]
    pub path: String,
}

/// Renders `template` like [`expr::render`], except that a value that is exactly
/// one reference to the output of a step whose output is one task's (`task_of`
/// gives that task's id) and that selects at least `threshold` bytes becomes
/// `null` and an [`OutputRef`]. Every reference is still resolved here, so an
/// absent field fails the step when it starts, as a copied one would.
pub fn render(
    template: &Value,
    scope: &dyn Scope,
    task_of: &dyn Fn(&str) -> Option<String>,
    threshold: usize,
) -> Result<(Value, Vec<OutputRef>), EvalError> {
    let mut refs = Vec::new();
    let mut at = String::new();
    let value = walk(template, scope, task_of, threshold, &mut at, &mut refs)?;
    Ok((value, refs))
}

fn walk(
    template: &Value,
    scope: &dyn Scope,
    task_of: &dyn Fn(&str) -> Option<String>,
    threshold: usize,
    at: &mut String,
    refs: &mut Vec<OutputRef>,
) -> Result<Value, EvalError> {
    match template {
        Value::String(s) => {
            let Some(path) = single_step_ref(s) else {
                return expr::render(template, scope);
            };
            let value = expr::resolve(&path, scope)?;
            let task_id = match path.segments.first() {
                Some(Segment::Field(step)) => task_of(step),
                _ => None,
            };
            match task_id {
                Some(task_id) if at_least(&value, threshold) => {
                    refs.push(OutputRef {
                        at: at.clone(),
                        task_id,
                        path: path.to_string(),
                    });
                    Ok(Value::Null)
                }
                _ => Ok(value),
            }
        }
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let len = at.len();
                at.push('/');
                at.push_str(&i.to_string());
                out.push(walk(item, scope, task_of, threshold, at, refs)?);
                at.truncate(len);
            }
            Ok(Value::Array(out))
        }
        Value::Object(map) => {
            let mut out = serde_json::Map::with_capacity(map.len());
            for (k, v) in map {
                let len = at.len();
                at.push('/');
                at.push_str(&k.replace('~', "~0").replace('/', "~1"));
                out.insert(k.clone(), walk(v, scope, task_of, threshold, at, refs)?);
                at.truncate(len);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

/// `${steps.<id>.output...}` and nothing else around it.
fn single_step_ref(s: &str) -> Option<Path> {
    let inner = s.strip_prefix("${")?.strip_suffix('}')?;
    if inner.contains("${") || inner.contains('}') {
        return None;
    }
    let path = expr::parse_path(inner.trim()).ok()?;
    let is_output = matches!(path.segments.get(1), Some(Segment::Field(f)) if f == "output");
    (path.root == "steps" && is_output).then_some(path)
}

/// Whether `v` as JSON text is at least `n` bytes (stops counting there).
fn at_least(v: &Value, n: usize) -> bool {
    struct Count {
        bytes: usize,
        limit: usize,
    }
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.bytes += buf.len();
            if self.bytes >= self.limit {
                return Err(std::io::Error::other("enough"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count { bytes: 0, limit: n };
    serde_json::to_writer(&mut c, v).is_err() || c.bytes >= n
}

/// The references a task's metadata carries; `Err` with a message when the entry
/// is malformed.
pub fn from_metadata(
    metadata: &serde_json::Map<String, Value>,
) -> Option<Result<Vec<OutputRef>, String>> {
    let v = metadata.get(INPUT_REFS)?;
    Some(
        serde_json::from_value(v.clone())
            .map_err(|e| format!("input: malformed {INPUT_REFS}: {e}")),
    )
}

/// Puts each referenced value in place in `input`; `output` gives a task's stored
/// output. The error says which reference failed and why, in the engine's words
/// (`input: steps.a.output.missing is absent`).
pub fn fill<'v>(
    input: &mut Value,
    refs: &[OutputRef],
    output: &dyn Fn(&str) -> Option<&'v Value>,
) -> Result<(), String> {
    for r in refs {
        let value = select(r, output).map_err(|e| format!("input: {e}"))?;
        let slot = if r.at.is_empty() {
            Some(&mut *input)
        } else {
            input.pointer_mut(&r.at)
        };
        match slot {
            Some(slot) => *slot = value,
            None => return Err(format!("input: {} has no place at {:?}", r.path, r.at)),
        }
    }
    Ok(())
}

fn select<'v>(r: &OutputRef, output: &dyn Fn(&str) -> Option<&'v Value>) -> Result<Value, String> {
    let path = expr::parse_path(&r.path).map_err(|e| format!("{}: {e}", r.path))?;
    let out = output(&r.task_id).ok_or_else(|| {
        format!(
            "{}: the output of task {} is not available",
            path, r.task_id
        )
    })?;
    let rest = path.segments.get(2..).unwrap_or_default();
    let mut current = out;
    for (i, seg) in rest.iter().enumerate() {
        let next = match (seg, current) {
            (Segment::Field(f), Value::Object(map)) => map.get(f),
            (Segment::Index(n), Value::Array(items)) => items.get(*n),
            (Segment::Field(f), other) => {
                return Err(format!(
                    "{path}: cannot read field {f:?} of a {}",
                    expr::type_name(other)
                ))
            }
            (Segment::Index(n), other) => {
                return Err(format!(
                    "{path}: cannot read index {n} of a {}",
                    expr::type_name(other)
                ))
            }
        };
        current = next.ok_or_else(|| {
            let upto = Path {
                root: path.root.clone(),
                segments: path.segments[..path.segments.len() - rest.len() + i + 1].to_vec(),
            };
            format!("{upto} is absent")
        })?;
    }
    Ok(current.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    struct Outs(HashMap<&'static str, Value>);

    impl Scope for Outs {
        fn root(&self, name: &str) -> Option<Value> {
            (name == "input").then(|| json!({"title": "Q4"}))
        }
        fn step_output(&self, step: &str) -> Option<Value> {
            self.0.get(step).cloned()
        }
    }

    fn scope() -> Outs {
        let big: Vec<Value> = (0..100)
            .map(|i| json!({"n": i, "pad": "x".repeat(20)}))
            .collect();
        Outs(
            [
                ("a", json!({"rows": big, "count": 100})),
                ("m", json!([1, 2, 3])),
            ]
            .into(),
        )
    }

    fn task_of(step: &str) -> Option<String> {
        // "m" stands for a map step: its output is not one task's.
        (step == "a").then(|| "run:a".to_string())
    }

    #[test]
    fn large_single_task_outputs_become_references_and_fill_back_exactly() {
        let s = scope();
        let template = json!({
            "whole": "${steps.a.output}",
            "rows": "${ steps.a.output.rows }",
            "count": "${steps.a.output.count}",
            "text": "n=${steps.a.output.count}",
            "items": "${steps.m.output}",
            "title": "${input.title}",
            "odd/key~": ["${steps.a.output.rows}"],
        });
        let copied = expr::render(&template, &s).unwrap();
        let (mut input, refs) = render(&template, &s, &task_of, 1024).unwrap();
        let places: Vec<&str> = refs.iter().map(|r| r.at.as_str()).collect();
        assert_eq!(places, ["/odd~1key~0/0", "/rows", "/whole"]);
        assert!(refs.iter().all(|r| r.task_id == "run:a"));
        assert_eq!(input["rows"], Value::Null);
        // Small values, text and outputs of many tasks are copied.
        assert_eq!(input["count"], 100);
        assert_eq!(input["text"], "n=100");
        assert_eq!(input["items"], json!([1, 2, 3]));
        assert!(input.to_string().len() < 200, "{input}");

        let outputs: HashMap<&str, Value> = [("run:a", s.0["a"].clone())].into();
        fill(&mut input, &refs, &|id| outputs.get(id)).unwrap();
        assert_eq!(input, copied);

        // The whole input as one reference.
        let (mut input, refs) = render(&json!("${steps.a.output}"), &s, &task_of, 1024).unwrap();
        assert_eq!(refs[0].at, "");
        fill(&mut input, &refs, &|id| outputs.get(id)).unwrap();
        assert_eq!(input, s.0["a"]);
        // Below the threshold nothing is deferred.
        let (_, refs) = render(&template, &s, &task_of, usize::MAX).unwrap();
        assert!(refs.is_empty());
    }

    #[test]
    fn absent_fields_fail_when_rendering_and_when_filling() {
        let s = scope();
        let e = render(&json!({"x": "${steps.a.output.missing}"}), &s, &task_of, 0).unwrap_err();
        assert_eq!(e.0, "steps.a.output.missing is absent");

        let r = |path: &str| OutputRef {
            at: "/x".into(),
            task_id: "run:a".into(),
            path: path.into(),
        };
        let outputs: HashMap<&str, Value> = [("run:a", json!({"rows": [1], "s": "t"}))].into();
        let get = |id: &str| outputs.get(id);
        let fails = |refs: &[OutputRef]| {
            let mut input = json!({"x": null});
            fill(&mut input, refs, &get).unwrap_err()
        };
        assert_eq!(
            fails(&[r("steps.a.output.missing")]),
            "input: steps.a.output.missing is absent"
        );
        assert_eq!(
            fails(&[r("steps.a.output.rows[3]")]),
            "input: steps.a.output.rows[3] is absent"
        );
        assert_eq!(
            fails(&[r("steps.a.output.s.deeper")]),
            "input: steps.a.output.s.deeper: cannot read field \"deeper\" of a string"
        );
        let gone = OutputRef {
            task_id: "run:gone".into(),
            ..r("steps.a.output")
        };
        assert!(fails(&[gone]).contains("the output of task run:gone is not available"));
        let mut input = json!({"x": null});
        fill(&mut input, &[r("steps.a.output.rows[0]")], &get).unwrap();
        assert_eq!(input, json!({"x": 1}));
    }

    #[test]
    fn references_read_back_from_metadata() {
        let refs = vec![OutputRef {
            at: "/a".into(),
            task_id: "t".into(),
            path: "steps.a.output".into(),
        }];
        let mut m = serde_json::Map::new();
        assert!(from_metadata(&m).is_none());
        m.insert(INPUT_REFS.into(), serde_json::to_value(&refs).unwrap());
        assert_eq!(m[INPUT_REFS][0]["ref"], "steps.a.output");
        assert_eq!(from_metadata(&m).unwrap().unwrap(), refs);
        m.insert(INPUT_REFS.into(), json!("nope"));
        assert!(from_metadata(&m).unwrap().is_err());
    }
}
