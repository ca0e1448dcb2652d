//! The five priority levels (seed 001's names) and the mapping from seed 000's
//! integer priority.
//!
//! | integer | level      |
//! |---------|------------|
//! | 9–10    | critical   |
//! | 7–8     | high       |
//! | 4–6     | normal     |
//! | 2–3     | low        |
//! | 1       | background |
//!
//! Integers outside 1..=10 are refused. Higher levels are always served first;
//! within a level tasks are served in submission order.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Background = 0,
    Low = 1,
    #[default]
    Normal = 2,
    High = 3,
    Critical = 4,
}

impl Priority {
    pub const ALL: [Priority; 5] = [
        Priority::Critical,
        Priority::High,
        Priority::Normal,
        Priority::Low,
        Priority::Background,
    ];

    pub fn from_int(value: i64) -> Result<Self, crate::Error> {
        Ok(match value {
            9..=10 => Priority::Critical,
            7..=8 => Priority::High,
            4..=6 => Priority::Normal,
            2..=3 => Priority::Low,
            1 => Priority::Background,
            _ => {
                return Err(crate::Error::invalid(format!(
                    "priority {value} is out of range: use 1..=10 or one of critical, high, normal, low, background"
                ))
                .with_field("priority"))
            }
        })
    }

    pub fn from_name(name: &str) -> Result<Self, crate::Error> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "critical" => Priority::Critical,
            "high" => Priority::High,
            "normal" => Priority::Normal,
            "low" => Priority::Low,
            "background" => Priority::Background,
            _ => {
                return Err(crate::Error::invalid(format!(
                    "unknown priority {name:?}: use 1..=10 or one of critical, high, normal, low, background"
                ))
                .with_field("priority"))
            }
        })
    }

    /// Accepts either form as it arrives in JSON.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, crate::Error> {
        match value {
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Self::from_int(i),
                None => Err(crate::Error::invalid(
                    "priority must be a whole number or a level name",
                )
                .with_field("priority")),
            },
            serde_json::Value::String(s) => Self::from_name(s),
            serde_json::Value::Null => Ok(Priority::default()),
            _ => Err(
                crate::Error::invalid("priority must be a whole number or a level name")
                    .with_field("priority"),
            ),
        }
    }

    /// 0 (background) to 4 (critical): the storage and wire encoding.
    pub fn rank(self) -> u8 {
        self as u8
    }

    pub fn from_rank(rank: u8) -> Option<Self> {
        Some(match rank {
            0 => Priority::Background,
            1 => Priority::Low,
            2 => Priority::Normal,
            3 => Priority::High,
            4 => Priority::Critical,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Background => "background",
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integer_mapping_matches_the_table() {
        let table = [
            (1, Priority::Background),
            (2, Priority::Low),
            (3, Priority::Low),
            (4, Priority::Normal),
            (5, Priority::Normal),
            (6, Priority::Normal),
            (7, Priority::High),
            (8, Priority::High),
            (9, Priority::Critical),
            (10, Priority::Critical),
        ];
        for (i, p) in table {
            assert_eq!(Priority::from_int(i).unwrap(), p, "priority {i}");
        }
        for bad in [0, 11, -1, 1000] {
            assert!(Priority::from_int(bad).is_err(), "priority {bad}");
        }
    }

    #[test]
    fn json_forms() {
        assert_eq!(Priority::from_json(&json!("HIGH")).unwrap(), Priority::High);
        assert_eq!(Priority::from_json(&json!(null)).unwrap(), Priority::Normal);
        assert!(Priority::from_json(&json!(2.5)).is_err());
        assert!(Priority::from_json(&json!("urgent")).is_err());
        assert!(Priority::from_json(&json!([1])).is_err());
        for p in Priority::ALL {
            assert_eq!(Priority::from_rank(p.rank()), Some(p));
        }
    }
}
