//! Content-based routing rules: conditions on a task's fields and metadata that
//! send it to agents of a type or with a tag.
//!
//! One rule per line of text:
//!
//! ```text
//! <condition> [and <condition> ...] => type:<agent_type> | tag:<tag>
//! * => tag:<tag>                               (always matches)
//! ```
//!
//! A condition is `<path> == <value>`, `<path> != <value>`, `<path> in <v1>,<v2>`
//! or `<path> exists`, where `<path>` is `task_type`, `priority` or
//! `metadata.<key>[.<key>...]` and values may be wrapped in double quotes.
//! Values are compared as text (`metadata.size == 3` matches the number 3).

use super::AgentView;
use crate::sched::hints::{is_field_path, TaskFacts};
use crate::Error;

/// How a condition tests the field's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The value is this.
    Eq(String),
    /// Also true when the field is missing.
    Ne(String),
    /// The value is one of these.
    In(Vec<String>),
    /// The field has a value.
    Exists,
}

/// A test of one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// `task_type`, `priority` or `metadata.<key>...`.
    pub field: String,
    /// The test.
    pub op: Op,
}

impl Condition {
    /// Does the task's field pass the test?
    pub fn matches(&self, facts: &TaskFacts) -> bool {
        let value = facts.field(&self.field);
        match (&self.op, value) {
            (Op::Eq(want), Some(v)) => &v == want,
            (Op::Ne(want), Some(v)) => &v != want,
            (Op::Ne(_), None) => true,
            (Op::In(set), Some(v)) => set.contains(&v),
            (Op::Exists, Some(_)) => true,
            _ => false,
        }
    }
}

/// Which agents a matching rule sends the task to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Agents of this type.
    AgentType(String),
    /// Agents with this tag.
    Tag(String),
}

impl Target {
    /// Is this agent one of the target's?
    pub fn admits(&self, agent: &AgentView) -> bool {
        match self {
            Target::AgentType(t) => &agent.agent_type == t,
            Target::Tag(t) => agent.tags.binary_search(t).is_ok(),
        }
    }
}

/// All conditions must hold (none: always).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// All must hold; none means always.
    pub conditions: Vec<Condition>,
    /// Where a matching task goes.
    pub target: Target,
}

impl Rule {
    /// Do all conditions hold for the task?
    pub fn matches(&self, facts: &TaskFacts) -> bool {
        self.conditions.iter().all(|c| c.matches(facts))
    }

    /// Parses one rule in the text form described in the module documentation.
    pub fn parse(text: &str) -> Result<Rule, Error> {
        parse_rule(text).map_err(|m| {
            Error::invalid(format!("rule {:?} does not parse: {m}", text.trim()))
                .with_field("rules")
        })
    }
}

/// Parses a rule list, reporting every rule that does not parse (with its index
/// in `details.problems`); nothing is returned unless all parse.
pub fn parse_rules<S: AsRef<str>>(lines: &[S]) -> Result<Vec<Rule>, Error> {
    let mut rules = Vec::with_capacity(lines.len());
    let mut problems = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        match parse_rule(line.as_ref()) {
            Ok(r) => rules.push(r),
            Err(m) => problems.push((format!("rules[{i}]"), m)),
        }
    }
    if problems.is_empty() {
        return Ok(rules);
    }
    Err(Error::from_problems(problems))
}

fn unquote(raw: &str) -> Result<String, String> {
    let v = raw.trim();
    let v = match v.strip_prefix('"') {
        Some(rest) => rest
            .strip_suffix('"')
            .ok_or_else(|| format!("unterminated quote in {v:?}"))?,
        None => v,
    };
    if v.is_empty() {
        return Err("a value is empty".into());
    }
    Ok(v.to_string())
}

fn parse_condition(raw: &str) -> Result<Condition, String> {
    let raw = raw.trim();
    let check_path = |p: &str| -> Result<String, String> {
        let p = p.trim();
        if is_field_path(p) {
            Ok(p.to_string())
        } else {
            Err(format!(
                "{p:?} is not a field: use task_type, priority or metadata.<key>"
            ))
        }
    };
    if let Some(path) = raw.strip_suffix(" exists") {
        return Ok(Condition {
            field: check_path(path)?,
            op: Op::Exists,
        });
    }
    for (token, make) in [
        ("==", Op::Eq as fn(String) -> Op),
        ("!=", Op::Ne as fn(String) -> Op),
    ] {
        if let Some((path, value)) = raw.split_once(token) {
            return Ok(Condition {
                field: check_path(path)?,
                op: make(unquote(value)?),
            });
        }
    }
    if let Some((path, values)) = raw.split_once(" in ") {
        let set = values
            .split(',')
            .map(unquote)
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Condition {
            field: check_path(path)?,
            op: Op::In(set),
        });
    }
    Err(format!(
        "condition {raw:?} has no operator: use ==, !=, in or exists"
    ))
}

fn parse_rule(text: &str) -> Result<Rule, String> {
    let (lhs, rhs) = text
        .split_once("=>")
        .ok_or("has no \"=>\" before its target")?;
    let target = match rhs.trim().split_once(':') {
        Some(("type", name)) => Target::AgentType(unquote(name)?),
        Some(("tag", name)) => Target::Tag(unquote(name)?),
        _ => {
            return Err(format!(
                "target {:?} must be type:<name> or tag:<name>",
                rhs.trim()
            ))
        }
    };
    let lhs = lhs.trim();
    let conditions = if lhs == "*" {
        Vec::new()
    } else if lhs.is_empty() {
        return Err("has no condition (use * for always)".into());
    } else {
        lhs.split(" and ")
            .map(parse_condition)
            .collect::<Result<Vec<_>, _>>()?
    };
    Ok(Rule { conditions, target })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::Hints;
    use crate::Priority;
    use serde_json::{json, Map, Value};

    fn facts<'a>(meta: &'a Map<String, Value>) -> TaskFacts<'a> {
        TaskFacts {
            task_type: "summarize",
            priority: Priority::High,
            metadata: meta,
            hints: Hints::default(),
        }
    }

    #[test]
    fn parses_and_matches() {
        let meta = json!({"tenant": "acme", "size": 3, "region": {"name": "eu"}})
            .as_object()
            .unwrap()
            .clone();
        let f = facts(&meta);
        let cases = [
            ("metadata.tenant == acme => tag:gold", true),
            ("metadata.tenant == \"acme\" => tag:gold", true),
            ("metadata.tenant != acme => tag:gold", false),
            ("metadata.missing != acme => tag:gold", true),
            (
                "metadata.size == 3 and priority in high,critical => type:big",
                true,
            ),
            ("metadata.size == 3 and priority in low => type:big", false),
            ("metadata.region.name exists => tag:eu", true),
            ("metadata.nothing exists => tag:eu", false),
            ("task_type == summarize => type:llm", true),
            ("* => tag:default", true),
        ];
        for (text, want) in cases {
            let rule = Rule::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(rule.matches(&f), want, "{text}");
        }
        assert_eq!(
            Rule::parse("metadata.a == b => type:gpu").unwrap(),
            Rule {
                conditions: vec![Condition {
                    field: "metadata.a".into(),
                    op: Op::Eq("b".into())
                }],
                target: Target::AgentType("gpu".into()),
            }
        );
    }

    #[test]
    fn bad_rules_are_all_reported() {
        let lines = [
            "metadata.a == b => tag:ok",
            "metadata.a == b",
            "payload == b => tag:x",
            "metadata.a ~ b => tag:x",
            "metadata.a == b => host:x",
            " => tag:x",
            "metadata.a == \"b => tag:x",
        ];
        let err = parse_rules(&lines).unwrap_err();
        assert_eq!(err.code, crate::ErrorCode::InvalidArgument);
        let fields = err.problem_fields();
        assert_eq!(
            fields,
            ["rules[1]", "rules[2]", "rules[3]", "rules[4]", "rules[5]", "rules[6]"]
        );
        assert_eq!(
            err.message,
            "rules[1] has no \"=>\" before its target (and 5 more problems)"
        );
        assert_eq!(parse_rules(&lines[..1]).unwrap().len(), 1);
        let one = Rule::parse("payload == b => tag:x").unwrap_err();
        assert!(one.message.contains("is not a field"), "{}", one.message);
    }
}
