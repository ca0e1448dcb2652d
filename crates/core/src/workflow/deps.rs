//! Seed 001's `dependencies=[parent_id]` on plain tasks: a waiting task is released
//! when every parent completed, and cancelled as soon as one ends any other way
//! (early termination of dependents; the cancel cascades to their own dependents).

use crate::{Status, TaskId};

/// What to do with a waiting task given its parents' statuses (`None`: unknown task).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Wait,
    Release,
    Cancel(String),
}

pub fn decide(parents: &[(TaskId, Option<Status>)]) -> Decision {
    let mut all_done = true;
    for (id, status) in parents {
        match status {
            Some(Status::Completed) => {}
            Some(s @ (Status::Failed | Status::Cancelled | Status::DeadLettered)) => {
                return Decision::Cancel(format!("dependency {id} ended {s}"));
            }
            None => return Decision::Cancel(format!("dependency {id} does not exist")),
            Some(_) => all_done = false,
        }
    }
    if all_done {
        Decision::Release
    } else {
        Decision::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TaskId {
        TaskId::from_trusted(s)
    }

    #[test]
    fn releases_only_when_every_parent_completed() {
        assert_eq!(decide(&[]), Decision::Release);
        assert_eq!(
            decide(&[
                (t("a"), Some(Status::Completed)),
                (t("b"), Some(Status::Running))
            ]),
            Decision::Wait
        );
        assert_eq!(
            decide(&[
                (t("a"), Some(Status::Completed)),
                (t("b"), Some(Status::Completed))
            ]),
            Decision::Release
        );
        assert_eq!(
            decide(&[
                (t("a"), Some(Status::Running)),
                (t("b"), Some(Status::DeadLettered))
            ]),
            Decision::Cancel("dependency b ended dead_lettered".into())
        );
        assert!(matches!(decide(&[(t("x"), None)]), Decision::Cancel(_)));
    }
}
