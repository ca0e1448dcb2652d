//! The conformance suite every Store backend must pass: a backend is done when the
//! suite passes, and the suite is the precise meaning of the [`Store`] contract.
//!
//! Each case is a public async function taking a fresh, empty store. A backend
//! crate runs them all with one macro call in its `tests/`:
//!
//! ```ignore
//! baton_store::store_conformance_tests!(
//!     async { SqliteStore::open_temp().expect("open store") },
//!     reopen = |store: SqliteStore| async move { store.reopen().expect("reopen store") },
//! );
//! ```
//!
//! The first argument is an expression evaluated once per case (so usually an
//! `async` block) that yields a fresh, empty store. The optional `reopen` closure
//! takes a store, closes it and opens a new store over the same data; backends
//! that persist must give it, and then also run [`data_survives_reopen`]. The
//! calling crate needs `tokio` (with `macros` and `rt-multi-thread`) as a
//! dev-dependency.
//!
//! Time is always passed in: cases use fixed fake clocks ([`T0`] onwards) and never
//! sleep. Retry policies in the cases have no jitter, so every delay is exact.
//!
//! Beyond the trait's doc comments, the suite pins down these choices:
//! - a claim returns fewer than `max` tasks only if no more claimable tasks of the
//!   type are queued (tasks failed for a passed deadline do not use up `max`), and
//!   returns them in the order they were picked (priority, then submission);
//! - `promote_due` returns each task type once, and promotes tasks whose
//!   `ready_at_ms <= now`; `expire_leases` fails attempts whose deadline is `< now`;
//! - extending a lease is not a transition: it records no event;
//! - a list page ends with `next_cursor: None` when nothing older matches, even if
//!   the page is full; a cursor the store did not hand out is
//!   [`Error::InvalidCursor`];
//! - [`Counts`] holds only non-zero entries, keyed by [`Status::as_str`];
//!   `queued_types` lists each type once.

use crate::{
    initial_state, ClaimRequest, Claimed, Counts, Error, Fence, FlowOutcome, Leadership,
    ListFilter, RunFilter, RunPage, RunRecord, RunWrite, RunWriteOutcome, Selected,
    SelectedOutcome, StartAt, Store, SubmitOutcome, SyncMode, TaskRecord, Update, UpdateOutcome,
};
use baton_core::input::InputKind;
use baton_core::lifecycle::{
    apply, Command, Ctx, Effect, EventKind, Failure, FailureKind, Refusal, TaskState,
};
use baton_core::{AgentId, InputPart, Millis, Priority, RetryPolicy, Status, TaskId, TaskSpec};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};

/// The fake clock every case starts from.
pub const T0: Millis = 1_700_000_000_000;

/// Expands to one `#[tokio::test]` per conformance case. See the module docs.
#[macro_export]
macro_rules! store_conformance_tests {
    ($fresh:expr $(,)?) => {
        $crate::__store_conformance_cases!($fresh;
            submit_creates_queued_tasks,
            submit_same_spec_is_existing,
            submit_different_spec_is_conflict,
            submit_batch_keeps_order,
            submit_duplicate_ids_in_one_batch,
            submit_starting_stores_running_attempts,
            submit_starting_then_hands_the_outcomes_over_once,
            get_unknown_task_is_none,
            claim_only_requested_type_up_to_max,
            claim_highest_priority_first_then_fifo,
            claim_starts_an_attempt,
            claim_fails_tasks_past_deadline,
            claim_never_returns_a_task_twice,
            peek_queued_shows_claim_order_and_claims_nothing,
            peek_queued_leaves_out_the_tasks_it_is_told_to_skip,
            claim_by_id_takes_only_a_queued_task,
            claim_selected_takes_only_queued_tasks,
            yield_requeues_without_counting_the_attempt,
            update_succeed_completes,
            update_stale_attempt_is_refused,
            update_retryable_failure_waits_then_promotes,
            update_exhausted_retries_dead_letter_then_reprocess,
            update_permanent_failure_fails,
            update_cancel,
            update_unknown_task_is_not_found,
            update_outcomes_follow_input_order,
            update_same_task_several_times_in_one_batch,
            leases_extend_moves_only_the_owners_running_tasks,
            leases_expire_fails_overdue_attempts,
            leases_release_owner_fails_only_that_owner,
            leases_extend_many_owners_at_once,
            leadership_goes_to_one_holder_and_passes_on_when_it_lapses,
            leadership_stale_holders_writes_are_refused,
            list_filters_newest_first,
            list_paginates_with_cursor,
            list_rejects_invalid_cursor,
            counts_by_status_and_type,
            queued_types_lists_types_with_queued_work,
            events_one_per_transition_as_lifecycle_decides,
            ping_answers,
            waiting_tasks_are_not_claimed_until_released,
            waiting_tasks_can_be_cancelled_and_listed,
            flows_get_versions_and_are_immutable,
            flows_list_every_version,
            runs_create_once_then_compare_and_set,
            write_runs_then_hands_the_outcomes_over_once,
            runs_write_submits_tasks_atomically,
            runs_list_filters_and_paginates,
            runs_active_lists_unfinished_oldest_first,
            runs_submit_refuses_the_id_of_a_run_from_a_flow,
        );

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn claim_concurrent_claimers_get_disjoint_tasks() {
            let store = $fresh.await;
            $crate::conformance::claim_concurrent_claimers_get_disjoint_tasks(::std::sync::Arc::new(store)).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn claim_selected_racing_replicas_claim_each_task_once() {
            let store = $fresh.await;
            $crate::conformance::claim_selected_racing_replicas_claim_each_task_once(::std::sync::Arc::new(store)).await;
        }
    };
    ($fresh:expr, reopen = $reopen:expr $(,)?) => {
        $crate::store_conformance_tests!($fresh);

        #[tokio::test]
        async fn data_survives_reopen() {
            let store = $fresh.await;
            $crate::conformance::data_survives_reopen(store, $reopen).await;
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __store_conformance_cases {
    ($fresh:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let store = $fresh.await;
                $crate::conformance::$case(&store).await;
            }
        )*
    };
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A retry policy without jitter, so delays are exact: 1 s, 2 s, 4 s, … capped at 60 s.
pub fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        backoff_base_ms: 1_000,
        backoff_cap_ms: 60_000,
        backoff_multiplier: 2.0,
        jitter: 0.0,
    }
}

/// A task with every kind of field filled, so that a backend must store it faithfully.
pub fn spec(id: &str, task_type: &str) -> TaskSpec {
    let mut metadata = serde_json::Map::new();
    metadata.insert("label".into(), json!(id));
    metadata.insert("ratio".into(), json!(0.1));
    metadata.insert(
        "nested".into(),
        json!({"list": [1, 2.5, "three", null, true]}),
    );
    TaskSpec {
        task_id: TaskId::from_trusted(id),
        task_type: task_type.into(),
        inputs: vec![
            InputPart::text(format!("input of {id}")),
            InputPart::json(json!({"k": [1, 2, 3]})),
            InputPart::bytes(InputKind::Binary, vec![0, 159, 146, 150, 255]),
        ],
        priority: Priority::Normal,
        timeout_ms: 30_000,
        metadata,
        retry: policy(3),
        deadline_ms: None,
        execution_mode: None,
        dependencies: Vec::new(),
        run_id: None,
    }
}

pub fn spec_with(id: &str, task_type: &str, edit: impl FnOnce(&mut TaskSpec)) -> TaskSpec {
    let mut s = spec(id, task_type);
    edit(&mut s);
    s
}

fn id(raw: &str) -> TaskId {
    TaskId::from_trusted(raw)
}

fn agent(raw: &str) -> AgentId {
    AgentId::from_trusted(raw)
}

fn ids(raw: &[&str]) -> Vec<TaskId> {
    raw.iter().map(|r| id(r)).collect()
}

fn claimed_ids(claimed: &[Claimed]) -> Vec<TaskId> {
    claimed.iter().map(|c| c.spec.task_id.clone()).collect()
}

fn id_set(list: &[TaskId]) -> BTreeSet<TaskId> {
    let set: BTreeSet<TaskId> = list.iter().cloned().collect();
    assert_eq!(set.len(), list.len(), "duplicate task ids in {list:?}");
    set
}

async fn submit(store: &dyn Store, tasks: Vec<TaskSpec>, now: Millis) -> Vec<SubmitOutcome> {
    store.submit(tasks, now).await.expect("submit")
}

async fn claim_as(
    store: &dyn Store,
    task_type: &str,
    max: usize,
    owner: &str,
    lease_deadline_ms: Millis,
    now: Millis,
) -> Vec<Claimed> {
    let request = ClaimRequest {
        task_type: task_type.into(),
        max,
        agent_id: agent(&format!("agent-{owner}")),
        lease_owner: owner.into(),
        lease_deadline_ms,
        now,
    };
    store.claim(request).await.expect("claim")
}

async fn claim(store: &dyn Store, task_type: &str, max: usize, now: Millis) -> Vec<Claimed> {
    claim_as(store, task_type, max, "owner-1", now + 60_000, now).await
}

async fn get(store: &dyn Store, task_id: &str) -> TaskRecord {
    store
        .get(&id(task_id))
        .await
        .expect("get")
        .unwrap_or_else(|| panic!("task {task_id} not found"))
}

async fn update(
    store: &dyn Store,
    updates: Vec<(&str, Command)>,
    now: Millis,
) -> Vec<UpdateOutcome> {
    let n = updates.len();
    let updates = updates
        .into_iter()
        .map(|(t, command)| Update {
            task_id: id(t),
            command,
        })
        .collect();
    let outcomes = store.update(updates, now).await.expect("update");
    assert_eq!(outcomes.len(), n, "one outcome per update");
    outcomes
}

async fn update_one(
    store: &dyn Store,
    task_id: &str,
    command: Command,
    now: Millis,
) -> UpdateOutcome {
    update(store, vec![(task_id, command)], now).await.remove(0)
}

fn applied(outcome: UpdateOutcome) -> (TaskRecord, Vec<Effect>) {
    match outcome {
        UpdateOutcome::Applied { record, effects } => (record, effects),
        other => panic!("expected the update to apply, got {other:?}"),
    }
}

fn succeed(attempt: u32) -> Command {
    Command::Succeed {
        attempt,
        output: json!({"answer": 42, "ratio": 0.3}),
    }
}

fn fail(attempt: u32, kind: FailureKind) -> Command {
    Command::Fail {
        attempt,
        failure: Failure::new(kind, "boom"),
    }
}

fn cancel() -> Command {
    Command::Cancel {
        reason: Some("no longer needed".into()),
    }
}

/// Long enough for any case's fake clock.
const DAY_MS: u64 = 86_400_000;

/// The fence of the holder that keeps the singleton duties for a day from [`T0`]
/// (asking again renews it: same epoch).
async fn duties(store: &dyn Store) -> Fence {
    let leadership = store
        .acquire_leadership("duties", T0, DAY_MS)
        .await
        .expect("acquire_leadership");
    leadership
        .fence_for("duties")
        .unwrap_or_else(|| panic!("another holder has the duties: {leadership:?}"))
}

fn event_kinds(record: &TaskRecord) -> Vec<EventKind> {
    record.state.events.iter().map(|e| e.kind).collect()
}

fn sorted_unique(types: Vec<String>) -> Vec<String> {
    let set: BTreeSet<String> = types.iter().cloned().collect();
    assert_eq!(set.len(), types.len(), "duplicate task types in {types:?}");
    set.into_iter().collect()
}

fn strings(raw: &[&str]) -> Vec<String> {
    raw.iter().map(|s| s.to_string()).collect()
}

async fn list_ids(store: &dyn Store, filter: ListFilter) -> Vec<TaskId> {
    let page = store.list(filter).await.expect("list");
    page.tasks.iter().map(|t| t.spec.task_id.clone()).collect()
}

// ---------------------------------------------------------------------------
// submit
// ---------------------------------------------------------------------------

pub async fn submit_creates_queued_tasks(store: &dyn Store) {
    let a = spec("a", "echo");
    let b = spec_with("b", "resize", |s| {
        s.priority = Priority::High;
        s.deadline_ms = Some(T0 + 60_000);
        s.execution_mode = Some(baton_core::ExecutionMode::Parallel);
    });
    let out = submit(store, vec![a.clone(), b.clone()], T0).await;
    let rec_a = TaskRecord {
        spec: a,
        state: TaskState::new_queued(T0),
    };
    let rec_b = TaskRecord {
        spec: b,
        state: TaskState::new_queued(T0),
    };
    assert_eq!(
        out,
        vec![
            SubmitOutcome::Created(rec_a.clone()),
            SubmitOutcome::Created(rec_b.clone())
        ]
    );
    assert_eq!(get(store, "a").await, rec_a);
    assert_eq!(get(store, "b").await, rec_b);
}

/// `submit_starting_then` calls its hook exactly once, before it answers, with
/// the outcomes it answers (created, started, existing alike); an empty submit
/// calls it with none. With `SyncMode::Deferred` it stores what it does with
/// `SyncMode::Now`.
pub async fn submit_starting_then_hands_the_outcomes_over_once(store: &dyn Store) {
    let run = |tasks: Vec<TaskSpec>, starts: Vec<Option<StartAt>>, sync: SyncMode| async move {
        let seen = Arc::new(Mutex::new(Vec::<Vec<SubmitOutcome>>::new()));
        let hook_seen = seen.clone();
        let hook: crate::AtCommit<SubmitOutcome> =
            Box::new(move |o| hook_seen.lock().unwrap().push(o.to_vec()));
        let out = store
            .submit_starting_then(tasks, starts, T0 + 1, hook, sync)
            .await
            .expect("submit_starting_then");
        let seen = std::mem::take(&mut *seen.lock().unwrap());
        (out, seen)
    };
    for (sync, [old, a, b]) in [
        (SyncMode::Now, ["old", "a", "b"]),
        (SyncMode::Deferred, ["old2", "c", "d"]),
    ] {
        submit(store, vec![spec(old, "echo")], T0).await;
        let start = Some(StartAt {
            agent_id: agent("agent-S"),
            lease_owner: "S".into(),
            lease_deadline_ms: T0 + 30_000,
        });
        let (out, seen) = run(
            vec![spec(a, "echo"), spec(b, "echo"), spec(old, "echo")],
            vec![start, None, None],
            sync,
        )
        .await;
        assert_eq!(seen, vec![out.clone()], "called once, with the answer");
        assert!(matches!(&out[0], SubmitOutcome::Created(r) if r.state.status == Status::Running));
        assert!(matches!(&out[1], SubmitOutcome::Created(r) if r.state.status == Status::Queued));
        assert!(matches!(&out[2], SubmitOutcome::Existing(_)));
        for (i, id) in [a, b].into_iter().enumerate() {
            let SubmitOutcome::Created(created) = &out[i] else {
                unreachable!()
            };
            assert_eq!(&get(store, id).await, created, "{id} stored as answered");
        }
        let (out, seen) = run(Vec::new(), Vec::new(), sync).await;
        assert!(out.is_empty());
        assert_eq!(seen, vec![Vec::new()], "an empty submit calls it with none");
    }
}

/// A submit that names where tasks start stores each of those it creates as a
/// running attempt, the same as a claim would have left it: not claimable,
/// held by its lease owner (extended, expired and released with it), and
/// completed by a result for its attempt. Tasks that cannot start (waiting on
/// a dependency, past their deadline, already stored) are stored or left as
/// a plain submit would.
pub async fn submit_starting_stores_running_attempts(store: &dyn Store) {
    let at = |owner: &str| {
        Some(StartAt {
            agent_id: agent(&format!("agent-{owner}")),
            lease_owner: owner.into(),
            lease_deadline_ms: T0 + 30_000,
        })
    };
    submit(store, vec![spec("old", "echo")], T0).await;
    let old = get(store, "old").await;
    let late = spec_with("late", "echo", |s| s.deadline_ms = Some(T0));
    let child = spec_with("child", "echo", |s| s.dependencies = ids(&["old"]));
    let tasks = vec![
        spec("a", "echo"),
        spec("b", "echo"),
        spec("c", "other"),
        late.clone(),
        child.clone(),
        spec("old", "echo"),
    ];
    let starts = vec![at("S"), None, at("S"), at("S"), at("S"), at("S")];
    let out = store
        .submit_starting(tasks.clone(), starts.clone(), T0 + 1)
        .await
        .expect("submit_starting");
    assert_eq!(out.len(), 6, "one outcome per task");
    for (i, t) in ["a", "b", "c", "late", "child"].iter().enumerate() {
        let want = TaskRecord {
            spec: tasks[i].clone(),
            state: initial_state(&tasks[i], starts[i].as_ref(), T0 + 1),
        };
        assert_eq!(out[i], SubmitOutcome::Created(want.clone()), "{t}");
        assert_eq!(get(store, t).await, want, "{t}");
    }
    assert_eq!(out[5], SubmitOutcome::Existing(old.clone()));
    assert_eq!(
        get(store, "old").await,
        old,
        "an existing task is not started"
    );

    for t in ["a", "c"] {
        let state = get(store, t).await.state;
        assert_eq!(state.status, Status::Running, "{t}");
        assert_eq!(state.attempt, 1, "{t}");
        assert_eq!(state.agent_id, Some(agent("agent-S")), "{t}");
        assert_eq!(state.lease_owner.as_deref(), Some("S"), "{t}");
        assert_eq!(state.lease_deadline_ms, Some(T0 + 30_000), "{t}");
        assert_eq!(
            event_kinds(&get(store, t).await),
            vec![EventKind::Submitted, EventKind::Started],
            "{t}"
        );
    }
    assert_eq!(get(store, "late").await.state.status, Status::Queued);
    assert_eq!(get(store, "child").await.state.status, Status::Waiting);

    // Only what was not started is claimable.
    let claimed = claim(store, "echo", 10, T0 + 2).await;
    assert_eq!(id_set(&claimed_ids(&claimed)), id_set(&ids(&["old", "b"])));
    assert!(claim(store, "other", 10, T0 + 2).await.is_empty());
    let counts = store.counts().await.expect("counts");
    assert_eq!(counts.by_status.get("running"), Some(&4), "{counts:?}");

    // The started attempts are held by their owner like claimed ones.
    let held = store
        .extend_leases(&strings(&["S"]), T0 + 40_000)
        .await
        .expect("extend");
    assert_eq!(held, 2);
    assert_eq!(
        get(store, "a").await.state.lease_deadline_ms,
        Some(T0 + 40_000)
    );
    let (record, _) = applied(update_one(store, "a", succeed(1), T0 + 3).await);
    assert_eq!(record.state.status, Status::Completed);
    let lost = Failure::new(FailureKind::AgentLost, "agent disconnected");
    let released = store
        .release_owner("S", lost, T0 + 4)
        .await
        .expect("release");
    assert_eq!(released, ids(&["c"]));
    assert_eq!(get(store, "c").await.state.status, Status::RetryWait);
}

pub async fn submit_same_spec_is_existing(store: &dyn Store) {
    let a = spec("a", "echo");
    submit(store, vec![a.clone()], T0).await;
    assert_eq!(claim(store, "echo", 1, T0 + 1).await.len(), 1);
    let before = get(store, "a").await;
    assert_eq!(before.state.status, Status::Running);

    let out = submit(store, vec![a.clone()], T0 + 2).await;
    assert_eq!(
        out,
        vec![SubmitOutcome::Existing(before.clone())],
        "resubmission returns the stored task"
    );
    assert_eq!(
        get(store, "a").await,
        before,
        "resubmission changes nothing"
    );
}

pub async fn submit_different_spec_is_conflict(store: &dyn Store) {
    let a = spec("a", "echo");
    submit(store, vec![a.clone()], T0).await;
    let stored = get(store, "a").await;
    let variants = [
        spec_with("a", "echo", |s| s.priority = Priority::Critical),
        spec_with("a", "other-type", |_| {}),
        spec_with("a", "echo", |s| {
            s.metadata.insert("label".into(), json!("changed"));
        }),
        spec_with("a", "echo", |s| s.retry.max_attempts = 4),
        spec_with("a", "echo", |s| {
            s.inputs.pop();
        }),
    ];
    for variant in variants {
        let out = submit(store, vec![variant.clone()], T0 + 5).await;
        assert_eq!(
            out,
            vec![SubmitOutcome::Conflict(stored.clone())],
            "conflicting spec {variant:?}"
        );
    }
    assert_eq!(get(store, "a").await, stored, "a conflict changes nothing");
    assert_eq!(
        claim(store, "other-type", 10, T0 + 6).await,
        vec![],
        "a conflicting type is not stored"
    );
}

pub async fn submit_batch_keeps_order(store: &dyn Store) {
    submit(store, vec![spec("b", "echo"), spec("c", "echo")], T0).await;
    let stored_b = get(store, "b").await;
    let stored_c = get(store, "c").await;
    let out = submit(
        store,
        vec![
            spec("a", "echo"),
            spec("b", "echo"),
            spec_with("c", "echo", |s| s.timeout_ms = 1),
            spec("d", "echo"),
        ],
        T0 + 10,
    )
    .await;
    assert_eq!(
        out,
        vec![
            SubmitOutcome::Created(TaskRecord {
                spec: spec("a", "echo"),
                state: TaskState::new_queued(T0 + 10)
            }),
            SubmitOutcome::Existing(stored_b),
            SubmitOutcome::Conflict(stored_c),
            SubmitOutcome::Created(TaskRecord {
                spec: spec("d", "echo"),
                state: TaskState::new_queued(T0 + 10)
            }),
        ]
    );
    // Submission order is the claim order within a priority.
    assert_eq!(
        claimed_ids(&claim(store, "echo", 10, T0 + 20).await),
        ids(&["b", "c", "a", "d"])
    );
}

pub async fn submit_duplicate_ids_in_one_batch(store: &dyn Store) {
    let x = spec("x", "echo");
    let x_changed = spec_with("x", "echo", |s| s.priority = Priority::Low);
    let out = submit(store, vec![x.clone(), x.clone(), x_changed], T0).await;
    let record = TaskRecord {
        spec: x,
        state: TaskState::new_queued(T0),
    };
    assert_eq!(
        out,
        vec![
            SubmitOutcome::Created(record.clone()),
            SubmitOutcome::Existing(record.clone()),
            SubmitOutcome::Conflict(record.clone()),
        ]
    );
    assert_eq!(get(store, "x").await, record);
    assert_eq!(
        claim(store, "echo", 10, T0 + 1).await.len(),
        1,
        "the task is stored once"
    );
}

pub async fn get_unknown_task_is_none(store: &dyn Store) {
    assert_eq!(store.get(&id("ghost")).await.expect("get"), None);
    submit(store, vec![spec("a", "echo")], T0).await;
    assert_eq!(store.get(&id("ghost")).await.expect("get"), None);
}

// ---------------------------------------------------------------------------
// claim
// ---------------------------------------------------------------------------

pub async fn claim_only_requested_type_up_to_max(store: &dyn Store) {
    let echo: Vec<TaskSpec> = (0..5).map(|i| spec(&format!("e{i}"), "echo")).collect();
    let resize: Vec<TaskSpec> = (0..3).map(|i| spec(&format!("r{i}"), "resize")).collect();
    submit(store, echo.into_iter().chain(resize).collect(), T0).await;

    assert_eq!(
        claim(store, "echo", 0, T0 + 1).await,
        vec![],
        "max 0 claims nothing"
    );
    assert_eq!(get(store, "e0").await.state.status, Status::Queued);

    let first = claim(store, "echo", 3, T0 + 2).await;
    assert_eq!(claimed_ids(&first), ids(&["e0", "e1", "e2"]));
    let resized = claim(store, "resize", 10, T0 + 3).await;
    assert_eq!(claimed_ids(&resized), ids(&["r0", "r1", "r2"]));
    assert_eq!(
        claimed_ids(&claim(store, "echo", 10, T0 + 4).await),
        ids(&["e3", "e4"])
    );
    assert_eq!(claim(store, "echo", 10, T0 + 5).await, vec![]);
    assert_eq!(claim(store, "unknown", 10, T0 + 6).await, vec![]);
}

pub async fn claim_highest_priority_first_then_fifo(store: &dyn Store) {
    let p = work_at;
    submit(
        store,
        vec![
            p("n1", Priority::Normal),
            p("l1", Priority::Low),
            p("c1", Priority::Critical),
        ],
        T0,
    )
    .await;
    submit(
        store,
        vec![
            p("n2", Priority::Normal),
            p("c2", Priority::Critical),
            p("b1", Priority::Background),
            p("h1", Priority::High),
        ],
        T0 + 1,
    )
    .await;

    assert_eq!(
        claimed_ids(&claim(store, "work", 3, T0 + 2).await),
        ids(&["c1", "c2", "h1"])
    );
    let mut rest = Vec::new();
    for step in 0..5 {
        rest.extend(claimed_ids(&claim(store, "work", 1, T0 + 3 + step).await));
    }
    assert_eq!(rest, ids(&["n1", "n2", "l1", "b1"]));
}

pub async fn peek_queued_shows_claim_order_and_claims_nothing(store: &dyn Store) {
    use Priority::*;
    let queue = [
        ("n1", Normal),
        ("l1", Low),
        ("c1", Critical),
        ("n2", Normal),
    ];
    submit_work(store, &queue).await;
    let peeked = store
        .peek_queued("work", 3, Vec::new())
        .await
        .expect("peek");
    let order: Vec<&str> = peeked.iter().map(|s| s.task_id.as_str()).collect();
    assert_eq!(order, ["c1", "n1", "n2"]);
    assert_eq!(peeked[0], work_at("c1", Critical), "the whole spec");
    // Nothing was claimed: the claim sees the same order.
    assert_eq!(
        claimed_ids(&claim(store, "work", 4, T0 + 1).await),
        ids(&["c1", "n1", "n2", "l1"])
    );
    assert!(peeked_ids(store, "work", 10, &[]).await.is_empty());
    assert!(peeked_ids(store, "none", 10, &[]).await.is_empty());
}

pub async fn peek_queued_leaves_out_the_tasks_it_is_told_to_skip(store: &dyn Store) {
    use Priority::*;
    let queue = [
        ("n1", Normal),
        ("h1", High),
        ("n2", Normal),
        ("n3", Normal),
        ("n4", Normal),
    ];
    submit_work(store, &queue).await;
    // The skipped do not count towards the limit: the window is still full.
    assert_eq!(
        peeked_ids(store, "work", 3, &["h1", "n2"]).await,
        ["n1", "n3", "n4"]
    );
    assert_eq!(peeked_ids(store, "work", 2, &["n3"]).await, ["h1", "n1"]);
    // Ids that are not queued (or of another type) change nothing.
    assert_eq!(
        peeked_ids(store, "work", 2, &["other", "missing"]).await,
        ["h1", "n1"]
    );
    let all = ["h1", "n1", "n2", "n3", "n4"];
    assert!(peeked_ids(store, "work", 10, &all).await.is_empty());
    let whole = store
        .peek_queued("work", 1, vec![id("h1")])
        .await
        .expect("peek");
    assert_eq!(whole[0], work_at("n1", Normal), "the whole spec");
    // Nothing was claimed.
    assert_eq!(
        claimed_ids(&claim(store, "work", 5, T0 + 1).await),
        ids(&all)
    );
}

/// A task of type `work` at `priority`.
fn work_at(name: &str, priority: Priority) -> TaskSpec {
    spec_with(name, "work", |s| s.priority = priority)
}

/// Submits `work` tasks in this order, with one of another type among them.
async fn submit_work(store: &dyn Store, queue: &[(&str, Priority)]) {
    let mut specs: Vec<TaskSpec> = queue.iter().map(|(n, p)| work_at(n, *p)).collect();
    specs.insert(specs.len() / 2, spec("other", "elsewhere"));
    submit(store, specs, T0).await;
}

/// The ids `peek_queued` returns, in its order.
async fn peeked_ids(
    store: &dyn Store,
    task_type: &str,
    limit: usize,
    skip: &[&str],
) -> Vec<String> {
    let skip = skip.iter().map(|s| id(s)).collect();
    let peeked = store
        .peek_queued(task_type, limit, skip)
        .await
        .expect("peek");
    peeked
        .into_iter()
        .map(|s| s.task_id.as_str().to_string())
        .collect()
}

pub async fn claim_by_id_takes_only_a_queued_task(store: &dyn Store) {
    submit(store, vec![spec("a", "work"), spec("b", "work")], T0).await;
    let by_id = |agent: &str| Command::Claim {
        agent_id: AgentId::from_trusted(agent),
        lease_owner: format!("owner-{agent}"),
        lease_deadline_ms: T0 + 60_000,
    };
    let (record, _) = applied(update_one(store, "b", by_id("x"), T0 + 1).await);
    assert_eq!(record.state.status, Status::Running);
    assert_eq!(record.state.attempt, 1);
    assert_eq!(record.state.lease_owner.as_deref(), Some("owner-x"));
    // Taken: a second claim of the same task (another replica's) is refused.
    assert!(matches!(
        update_one(store, "b", by_id("y"), T0 + 2).await,
        UpdateOutcome::Refused(_)
    ));
    // It is no longer queued, and the claim path skips it.
    let peeked = store
        .peek_queued("work", 10, Vec::new())
        .await
        .expect("peek");
    assert_eq!(peeked.len(), 1);
    assert_eq!(peeked[0].task_id.as_str(), "a");
    assert_eq!(
        claimed_ids(&claim(store, "work", 5, T0 + 3).await),
        ids(&["a"])
    );
    // Its lease is the owner's: releasing the owner gives it back.
    let released = store
        .release_owner(
            "owner-x",
            Failure::new(FailureKind::AgentLost, "gone"),
            T0 + 4,
        )
        .await
        .expect("release");
    assert_eq!(released, vec![id("b")]);
}

fn selected(task_id: &str, owner: &str) -> Selected {
    Selected {
        task_id: id(task_id),
        agent_id: agent(&format!("agent-{owner}")),
        lease_owner: owner.into(),
    }
}

pub async fn claim_selected_takes_only_queued_tasks(store: &dyn Store) {
    let late = spec_with("late", "work", |s| s.deadline_ms = Some(T0 + 5));
    submit(
        store,
        vec![
            spec("a", "work"),
            spec("b", "work"),
            late.clone(),
            spec("gone", "work"),
            spec("left", "work"),
        ],
        T0,
    )
    .await;
    applied(update_one(store, "gone", cancel(), T0 + 1).await);
    let outcomes = store
        .claim_selected(
            vec![
                selected("b", "owner-x"),
                selected("a", "owner-y"),
                selected("late", "owner-x"),
                selected("gone", "owner-x"),
                selected("missing", "owner-x"),
                // Chosen twice: the first claim takes it.
                selected("b", "owner-y"),
            ],
            T0 + 60_000,
            T0 + 10,
        )
        .await
        .expect("claim selected");
    let claimed = SelectedOutcome::Claimed { attempt: 1 };
    assert_eq!(outcomes.len(), 6, "one outcome per selected task");
    assert_eq!(outcomes[0], claimed);
    assert_eq!(outcomes[1], claimed);
    // Past its deadline: it fails instead, exactly as a claim in bulk decides.
    let SelectedOutcome::Finished { record, effects } = &outcomes[2] else {
        panic!("expected the late task to end, got {:?}", outcomes[2]);
    };
    let expected = apply(
        &TaskState::new_queued(T0),
        Command::Claim {
            agent_id: agent("agent-owner-x"),
            lease_owner: "owner-x".into(),
            lease_deadline_ms: T0 + 60_000,
        },
        Ctx::for_spec(&late, T0 + 10, 0.5),
    )
    .expect("lifecycle accepts the claim");
    assert_eq!(record.spec, late, "the whole spec of an ended task");
    assert_eq!(record.state, expected.state);
    assert_eq!(effects, &expected.effects);
    assert_eq!(get(store, "late").await, *record);
    assert_eq!(
        outcomes[3..],
        [
            SelectedOutcome::NotQueued,
            SelectedOutcome::NotQueued,
            SelectedOutcome::NotQueued
        ]
    );

    // Each claim is the attempt `Command::Claim` starts, for its own agent and owner.
    for (task, owner) in [("b", "owner-x"), ("a", "owner-y")] {
        let record = get(store, task).await;
        let expected = apply(
            &TaskState::new_queued(T0),
            Command::Claim {
                agent_id: agent(&format!("agent-{owner}")),
                lease_owner: owner.into(),
                lease_deadline_ms: T0 + 60_000,
            },
            Ctx::for_spec(&record.spec, T0 + 10, 0.5),
        )
        .expect("lifecycle accepts the claim");
        assert_eq!(record.state, expected.state, "task {task}");
    }
    // Taken: another replica's claim of the same task changes nothing.
    assert_eq!(
        store
            .claim_selected(vec![selected("a", "owner-z")], T0 + 60_000, T0 + 11)
            .await
            .expect("claim selected"),
        vec![SelectedOutcome::NotQueued]
    );
    assert_eq!(
        get(store, "a").await.state.lease_owner.as_deref(),
        Some("owner-y")
    );
    assert!(store
        .claim_selected(Vec::new(), T0 + 60_000, T0 + 12)
        .await
        .expect("claim nothing")
        .is_empty());

    // What was not chosen is still queued, and the counts follow.
    let peeked = store
        .peek_queued("work", 10, Vec::new())
        .await
        .expect("peek");
    let left: Vec<&str> = peeked.iter().map(|s| s.task_id.as_str()).collect();
    assert_eq!(left, ["left"]);
    let counts = store.counts().await.expect("counts");
    assert_eq!(
        counts.by_status,
        BTreeMap::from([
            ("queued".to_string(), 1u64),
            ("running".to_string(), 2),
            ("failed".to_string(), 1),
            ("cancelled".to_string(), 1),
        ])
    );
    assert_eq!(
        counts.queued_by_type,
        BTreeMap::from([("work".to_string(), 1u64)])
    );
    // Their leases are the owners': releasing one owner gives its task back.
    let released = store
        .release_owner(
            "owner-x",
            Failure::new(FailureKind::AgentLost, "gone"),
            T0 + 20,
        )
        .await
        .expect("release");
    assert_eq!(released, vec![id("b")]);
}

/// Replicas that chose the same tasks (each from its own peek) claim them at
/// once: each task is claimed by exactly one, with attempt 1.
pub async fn claim_selected_racing_replicas_claim_each_task_once<S: Store>(store: Arc<S>) {
    const TASKS: usize = 200;
    const REPLICAS: usize = 6;
    let all: Vec<TaskSpec> = (0..TASKS)
        .map(|i| spec(&format!("s-{i:04}"), "race"))
        .collect();
    for chunk in all.chunks(100) {
        submit(&*store, chunk.to_vec(), T0).await;
    }
    let mut handles = Vec::new();
    for replica in 0..REPLICAS {
        let store = Arc::clone(&store);
        let all = all.clone();
        handles.push(tokio::spawn(async move {
            let owner = format!("replica-{replica}");
            let mut got = Vec::new();
            // Each replica goes through the tasks in its own order, in small
            // windows, as independent peeks would.
            let mut order: Vec<&TaskSpec> = all.iter().collect();
            order.rotate_left(replica * TASKS / REPLICAS);
            if replica % 2 == 1 {
                order.reverse();
            }
            for window in order.chunks(9) {
                let chosen = window
                    .iter()
                    .map(|s| selected(s.task_id.as_str(), &owner))
                    .collect::<Vec<_>>();
                let outcomes = store
                    .claim_selected(chosen, T0 + 60_000, T0 + 1)
                    .await
                    .expect("claim selected");
                assert_eq!(outcomes.len(), window.len());
                for (s, outcome) in window.iter().zip(outcomes) {
                    match outcome {
                        SelectedOutcome::Claimed { attempt } => {
                            assert_eq!(attempt, 1, "task {} claimed again", s.task_id);
                            got.push(s.task_id.clone());
                        }
                        SelectedOutcome::NotQueued => {}
                        other => panic!("unexpected outcome {other:?}"),
                    }
                }
            }
            (owner, got)
        }));
    }
    let owner_of = claimed_once_each(handles, &all).await;
    for (task, owner) in owner_of.iter().take(20) {
        let record = store.get(task).await.expect("get").expect("stored");
        assert_eq!(record.state.status, Status::Running);
        assert_eq!(record.state.lease_owner.as_deref(), Some(owner.as_str()));
    }
}

pub async fn yield_requeues_without_counting_the_attempt(store: &dyn Store) {
    submit(
        store,
        vec![spec_with("y", "work", |s| s.retry = policy(1))],
        T0,
    )
    .await;
    let first = claim(store, "work", 1, T0 + 1).await;
    assert_eq!(first[0].attempt, 1);
    let yielded = Command::Yield {
        attempt: 1,
        reason: "preempted".into(),
    };
    let (record, effects) = applied(update_one(store, "y", yielded, T0 + 2).await);
    assert_eq!(record.state.status, Status::Queued);
    assert_eq!(effects, vec![Effect::Ready]);
    assert_eq!(record.state.lease_owner, None);
    let got = get(store, "y").await;
    assert_eq!(got.state.status, Status::Queued);
    assert_eq!(got.state.attempts_used(), 0);
    assert_eq!(
        store.queued_types().await.expect("types"),
        vec!["work".to_string()]
    );
    let second = claim(store, "work", 1, T0 + 3).await;
    assert_eq!(second[0].attempt, 2, "a fresh fencing token");
    // The stopped attempt's late result is stale.
    let late = Command::Succeed {
        attempt: 1,
        output: serde_json::json!("late"),
    };
    assert!(matches!(
        update_one(store, "y", late, T0 + 4).await,
        UpdateOutcome::Refused(_)
    ));
}

pub async fn claim_starts_an_attempt(store: &dyn Store) {
    let a = spec("a", "echo");
    submit(store, vec![a.clone()], T0).await;
    let request = ClaimRequest {
        task_type: "echo".into(),
        max: 5,
        agent_id: agent("agent-7"),
        lease_owner: "session-3".into(),
        lease_deadline_ms: T0 + 30_010,
        now: T0 + 10,
    };
    let claimed = store.claim(request).await.expect("claim");
    assert_eq!(
        claimed,
        vec![Claimed {
            spec: a.clone(),
            attempt: 1
        }]
    );

    let record = get(store, "a").await;
    let state = &record.state;
    assert_eq!(state.status, Status::Running);
    assert_eq!(state.attempt, 1);
    assert_eq!(state.agent_id, Some(agent("agent-7")));
    assert_eq!(state.lease_owner.as_deref(), Some("session-3"));
    assert_eq!(state.lease_deadline_ms, Some(T0 + 30_010));
    assert_eq!(state.updated_at_ms, T0 + 10);
    let started = state.events.last().expect("events");
    assert_eq!(state.events.len(), 2);
    assert_eq!(
        (
            started.kind,
            started.from,
            started.to,
            started.attempt,
            started.at_ms
        ),
        (
            EventKind::Started,
            Some(Status::Queued),
            Status::Running,
            1,
            T0 + 10
        )
    );
    assert_eq!(started.agent_id, Some(agent("agent-7")));

    let command = Command::Claim {
        agent_id: agent("agent-7"),
        lease_owner: "session-3".into(),
        lease_deadline_ms: T0 + 30_010,
    };
    let expected = apply(
        &TaskState::new_queued(T0),
        command,
        Ctx::for_spec(&a, T0 + 10, 0.5),
    )
    .expect("claim applies");
    assert_eq!(
        record,
        TaskRecord {
            spec: a,
            state: expected.state
        }
    );
}

pub async fn claim_fails_tasks_past_deadline(store: &dyn Store) {
    let with = |name: &str, priority: Priority, deadline: Option<Millis>| {
        spec_with(name, "echo", |s| {
            s.priority = priority;
            s.deadline_ms = deadline;
        })
    };
    submit(
        store,
        vec![
            with("late", Priority::Critical, Some(T0 + 100)),
            with("future", Priority::Critical, Some(T0 + 1_000)),
            with("ok1", Priority::Normal, None),
            with("ok2", Priority::Normal, None),
        ],
        T0,
    )
    .await;

    // `late` would come first but its deadline has passed: it fails and does not
    // use up one of the two places.
    let claimed = claim(store, "echo", 2, T0 + 100).await;
    assert_eq!(claimed_ids(&claimed), ids(&["future", "ok1"]));

    let late = get(store, "late").await;
    assert_eq!(late.state.status, Status::Failed);
    assert_eq!(late.state.attempt, 0);
    assert_eq!(
        late.state.error.as_ref().map(|e| e.kind.as_str()),
        Some("deadline_exceeded")
    );
    assert_eq!(late.state.finished_at_ms, Some(T0 + 100));
    assert_eq!(
        event_kinds(&late),
        vec![EventKind::Submitted, EventKind::DeadlineExceeded]
    );

    assert_eq!(
        claimed_ids(&claim(store, "echo", 5, T0 + 101).await),
        ids(&["ok2"])
    );
    assert_eq!(claim(store, "echo", 5, T0 + 102).await, vec![]);
}

pub async fn claim_never_returns_a_task_twice(store: &dyn Store) {
    submit(
        store,
        vec![spec("a", "echo"), spec("b", "echo"), spec("c", "echo")],
        T0,
    )
    .await;
    let first = claim_as(store, "echo", 10, "owner-1", T0 + 10_000, T0 + 1).await;
    assert_eq!(claimed_ids(&first), ids(&["a", "b", "c"]));
    assert_eq!(
        claim_as(store, "echo", 10, "owner-2", T0 + 10_000, T0 + 2).await,
        vec![]
    );
    for t in ["a", "b", "c"] {
        let record = get(store, t).await;
        assert_eq!(record.state.attempt, 1);
        assert_eq!(record.state.lease_owner.as_deref(), Some("owner-1"));
        assert_eq!(record.state.agent_id, Some(agent("agent-owner-1")));
    }
}

/// Eight claimers race over 500 tasks: every task is claimed exactly once.
pub async fn claim_concurrent_claimers_get_disjoint_tasks<S: Store>(store: Arc<S>) {
    const TASKS: usize = 500;
    const CLAIMERS: usize = 8;
    let all: Vec<TaskSpec> = (0..TASKS)
        .map(|i| spec(&format!("c-{i:04}"), "race"))
        .collect();
    for chunk in all.chunks(100) {
        submit(&*store, chunk.to_vec(), T0).await;
    }

    let mut handles = Vec::new();
    for claimer in 0..CLAIMERS {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            let owner = format!("claimer-{claimer}");
            let mut got = Vec::new();
            let mut now = T0 + 1;
            loop {
                let batch = claim_as(&*store, "race", 7, &owner, now + 60_000, now).await;
                if batch.is_empty() {
                    break;
                }
                assert!(batch.len() <= 7, "claimed more than max");
                for c in batch {
                    assert_eq!(
                        c.attempt, 1,
                        "task {} claimed with attempt {}",
                        c.spec.task_id, c.attempt
                    );
                    got.push(c.spec.task_id);
                }
                now += 1;
                assert!(
                    now < T0 + TASKS as u64 + 2,
                    "claims never run out: tasks are handed out again"
                );
            }
            (owner, got)
        }));
    }

    let owner_of = claimed_once_each(handles, &all).await;
    for (task, owner) in &owner_of {
        let record = get(&*store, task.as_str()).await;
        assert_eq!(
            (record.state.status, record.state.attempt),
            (Status::Running, 1)
        );
        assert_eq!(record.state.lease_owner.as_ref(), Some(owner));
    }
    let counts = store.counts().await.expect("counts");
    assert_eq!(
        counts.by_status,
        BTreeMap::from([("running".to_string(), TASKS as u64)])
    );
}

// ---------------------------------------------------------------------------
// update
// ---------------------------------------------------------------------------

pub async fn update_succeed_completes(store: &dyn Store) {
    let a = spec("a", "echo");
    submit(store, vec![a.clone()], T0).await;
    claim(store, "echo", 1, T0 + 1).await;
    let (record, effects) = applied(update_one(store, "a", succeed(1), T0 + 20).await);
    assert_eq!(effects, vec![Effect::Finished(Status::Completed)]);
    assert_eq!(record.spec, a);
    assert_eq!(record.state.status, Status::Completed);
    assert_eq!(
        record.state.output,
        Some(json!({"answer": 42, "ratio": 0.3}))
    );
    assert_eq!(record.state.finished_at_ms, Some(T0 + 20));
    assert_eq!(
        (
            record.state.lease_owner.as_ref(),
            record.state.lease_deadline_ms
        ),
        (None, None)
    );
    assert_eq!(
        event_kinds(&record),
        vec![
            EventKind::Submitted,
            EventKind::Started,
            EventKind::Succeeded
        ]
    );
    assert_eq!(get(store, "a").await, record);
    assert_eq!(claim(store, "echo", 1, T0 + 21).await, vec![]);
}

pub async fn update_stale_attempt_is_refused(store: &dyn Store) {
    submit(store, vec![spec("running", "echo")], T0).await;
    claim(store, "echo", 1, T0 + 1).await;
    submit(store, vec![spec("queued", "echo")], T0 + 2).await;
    let running = get(store, "running").await;
    let queued = get(store, "queued").await;

    let out = update(
        store,
        vec![
            ("running", succeed(2)),
            ("running", fail(0, FailureKind::Retryable)),
            ("queued", succeed(1)),
        ],
        T0 + 3,
    )
    .await;
    assert_eq!(
        out,
        vec![
            UpdateOutcome::Refused(Refusal::StaleAttempt {
                got: 2,
                current: 1,
                status: Status::Running
            }),
            UpdateOutcome::Refused(Refusal::StaleAttempt {
                got: 0,
                current: 1,
                status: Status::Running
            }),
            UpdateOutcome::Refused(Refusal::StaleAttempt {
                got: 1,
                current: 0,
                status: Status::Queued
            }),
        ]
    );
    assert_eq!(
        get(store, "running").await,
        running,
        "a refused command changes nothing"
    );
    assert_eq!(
        get(store, "queued").await,
        queued,
        "a refused command changes nothing"
    );
}

pub async fn update_retryable_failure_waits_then_promotes(store: &dyn Store) {
    assert_eq!(store.next_wake().await.expect("next_wake"), None);
    submit(
        store,
        vec![spec("r1", "a"), spec("r2", "b"), spec("r3", "a")],
        T0,
    )
    .await;
    claim(store, "a", 2, T0 + 1).await;
    claim(store, "b", 1, T0 + 1).await;

    let (r1, effects) =
        applied(update_one(store, "r1", fail(1, FailureKind::Retryable), T0 + 100).await);
    assert_eq!(effects, vec![Effect::WakeAt(T0 + 1_100)]);
    assert_eq!(r1.state.status, Status::RetryWait);
    assert_eq!(r1.state.ready_at_ms, Some(T0 + 1_100));
    assert_eq!(
        r1.state
            .error
            .as_ref()
            .map(|e| (e.kind.as_str(), e.attempt)),
        Some(("retryable", 1))
    );
    let busy = Failure {
        retry_after_ms: Some(5_000),
        ..Failure::new(FailureKind::Retryable, "busy")
    };
    let (r2, _) = applied(
        update_one(
            store,
            "r2",
            Command::Fail {
                attempt: 1,
                failure: busy,
            },
            T0 + 50,
        )
        .await,
    );
    assert_eq!(r2.state.ready_at_ms, Some(T0 + 5_050));
    applied(update_one(store, "r3", fail(1, FailureKind::Timeout), T0 + 200).await);
    assert_eq!(
        store.next_wake().await.expect("next_wake"),
        Some(T0 + 1_100)
    );
    assert_eq!(
        claim(store, "a", 10, T0 + 300).await,
        vec![],
        "retry-waiting tasks are not claimable"
    );

    let before = get(store, "r1").await;
    assert_eq!(
        store
            .promote_due(T0 + 1_099, &duties(store).await)
            .await
            .expect("promote"),
        Vec::<String>::new()
    );
    assert_eq!(get(store, "r1").await, before, "nothing is due yet");

    assert_eq!(
        store
            .promote_due(T0 + 1_100, &duties(store).await)
            .await
            .expect("promote"),
        strings(&["a"])
    );
    let r1 = get(store, "r1").await;
    assert_eq!(
        (r1.state.status, r1.state.ready_at_ms),
        (Status::Queued, None)
    );
    assert_eq!(
        r1.state.events.last().map(|e| (e.kind, e.at_ms)),
        Some((EventKind::RetryReady, T0 + 1_100))
    );
    assert_eq!(get(store, "r3").await.state.status, Status::RetryWait);
    assert_eq!(
        store.next_wake().await.expect("next_wake"),
        Some(T0 + 1_200)
    );

    let types = store
        .promote_due(T0 + 10_000, &duties(store).await)
        .await
        .expect("promote");
    assert_eq!(sorted_unique(types), strings(&["a", "b"]));
    assert_eq!(store.next_wake().await.expect("next_wake"), None);
    assert_eq!(
        store
            .promote_due(T0 + 20_000, &duties(store).await)
            .await
            .expect("promote"),
        Vec::<String>::new()
    );

    let again = claim(store, "a", 10, T0 + 10_001).await;
    assert_eq!(claimed_ids(&again), ids(&["r1", "r3"]));
    assert!(
        again.iter().all(|c| c.attempt == 2),
        "the next attempt is 2: {again:?}"
    );
}

pub async fn update_exhausted_retries_dead_letter_then_reprocess(store: &dyn Store) {
    submit(
        store,
        vec![spec_with("d", "echo", |s| s.retry = policy(2))],
        T0,
    )
    .await;
    claim(store, "echo", 1, T0 + 1).await;
    applied(update_one(store, "d", fail(1, FailureKind::Retryable), T0 + 2).await);
    assert_eq!(
        store
            .promote_due(T0 + 1_002, &duties(store).await)
            .await
            .expect("promote"),
        strings(&["echo"])
    );
    assert_eq!(claim(store, "echo", 1, T0 + 1_003).await[0].attempt, 2);

    let (record, effects) =
        applied(update_one(store, "d", fail(2, FailureKind::AgentLost), T0 + 1_004).await);
    assert_eq!(effects, vec![Effect::Finished(Status::DeadLettered)]);
    assert_eq!(record.state.status, Status::DeadLettered);
    assert_eq!(
        record.state.error.as_ref().map(|e| e.kind.as_str()),
        Some("retries_exhausted")
    );
    assert_eq!(store.next_wake().await.expect("next_wake"), None);
    assert_eq!(claim(store, "echo", 1, T0 + 1_005).await, vec![]);

    let (record, effects) = applied(update_one(store, "d", Command::Reprocess, T0 + 2_000).await);
    assert_eq!(effects, vec![Effect::Ready]);
    assert_eq!(
        (
            record.state.status,
            record.state.attempt,
            record.state.error.clone()
        ),
        (Status::Queued, 2, None)
    );
    assert_eq!(get(store, "d").await, record);

    let claimed = claim(store, "echo", 1, T0 + 2_001).await;
    assert_eq!(
        claimed.iter().map(|c| c.attempt).collect::<Vec<_>>(),
        vec![3],
        "attempt numbers keep growing"
    );
    let (record, _) =
        applied(update_one(store, "d", fail(3, FailureKind::Retryable), T0 + 2_002).await);
    assert_eq!(
        record.state.status,
        Status::RetryWait,
        "reprocess gives a fresh attempt budget"
    );
}

pub async fn update_permanent_failure_fails(store: &dyn Store) {
    submit(store, vec![spec("p", "echo")], T0).await;
    claim(store, "echo", 1, T0 + 1).await;
    let (record, effects) =
        applied(update_one(store, "p", fail(1, FailureKind::Permanent), T0 + 2).await);
    assert_eq!(effects, vec![Effect::Finished(Status::Failed)]);
    assert_eq!(record.state.status, Status::Failed);
    assert_eq!(
        record.state.error.as_ref().map(|e| e.kind.as_str()),
        Some("permanent")
    );
    assert_eq!(store.next_wake().await.expect("next_wake"), None);
    assert_eq!(
        update_one(store, "p", Command::Reprocess, T0 + 3).await,
        UpdateOutcome::Refused(Refusal::Illegal {
            from: Status::Failed,
            command: "reprocess"
        })
    );
    assert_eq!(get(store, "p").await, record);
}

pub async fn update_cancel(store: &dyn Store) {
    submit(
        store,
        vec![spec("r", "echo"), spec("w", "echo"), spec("c", "echo")],
        T0,
    )
    .await;
    claim_as(store, "echo", 3, "owner-9", T0 + 60_000, T0 + 1).await;
    applied(update_one(store, "w", fail(1, FailureKind::Retryable), T0 + 2).await);
    applied(update_one(store, "c", succeed(1), T0 + 2).await);
    submit(store, vec![spec("q", "echo")], T0 + 3).await;

    let out = update(
        store,
        vec![("q", cancel()), ("r", cancel()), ("w", cancel())],
        T0 + 4,
    )
    .await;
    let mut out = out.into_iter();
    let (q, q_effects) = applied(out.next().expect("q"));
    assert_eq!(q_effects, vec![Effect::Finished(Status::Cancelled)]);
    let (r, r_effects) = applied(out.next().expect("r"));
    assert_eq!(
        r_effects,
        vec![
            Effect::CancelOnAgent {
                agent_id: agent("agent-owner-9"),
                attempt: 1
            },
            Effect::Finished(Status::Cancelled)
        ]
    );
    let (w, w_effects) = applied(out.next().expect("w"));
    assert_eq!(w_effects, vec![Effect::Finished(Status::Cancelled)]);
    for record in [&q, &r, &w] {
        assert_eq!(record.state.status, Status::Cancelled);
        assert_eq!(record.state.finished_at_ms, Some(T0 + 4));
        assert_eq!(
            record
                .state
                .events
                .last()
                .and_then(|e| e.message.as_deref()),
            Some("no longer needed")
        );
        assert_eq!(get(store, record.spec.task_id.as_str()).await, *record);
    }
    assert_eq!(
        (r.state.lease_owner.as_ref(), r.state.lease_deadline_ms),
        (None, None)
    );
    assert_eq!(w.state.ready_at_ms, None);

    assert_eq!(
        update(store, vec![("q", cancel()), ("c", cancel())], T0 + 5).await,
        vec![
            UpdateOutcome::Refused(Refusal::Illegal {
                from: Status::Cancelled,
                command: "cancel"
            }),
            UpdateOutcome::Refused(Refusal::Illegal {
                from: Status::Completed,
                command: "cancel"
            }),
        ]
    );
    assert_eq!(claim(store, "echo", 10, T0 + 6).await, vec![]);
    assert_eq!(store.next_wake().await.expect("next_wake"), None);
    assert_eq!(
        store
            .promote_due(T0 + 100_000, &duties(store).await)
            .await
            .expect("promote"),
        Vec::<String>::new()
    );
    assert_eq!(
        store
            .expire_leases(T0 + 100_000, &duties(store).await)
            .await
            .expect("expire"),
        Vec::<TaskId>::new()
    );
}

pub async fn update_unknown_task_is_not_found(store: &dyn Store) {
    assert_eq!(
        update_one(store, "ghost", cancel(), T0).await,
        UpdateOutcome::NotFound
    );
    assert_eq!(
        update_one(store, "ghost", succeed(1), T0).await,
        UpdateOutcome::NotFound
    );
    assert_eq!(store.get(&id("ghost")).await.expect("get"), None);
}

pub async fn update_outcomes_follow_input_order(store: &dyn Store) {
    submit(store, vec![spec("b", "echo")], T0).await;
    claim(store, "echo", 1, T0 + 1).await;
    submit(store, vec![spec("a", "echo")], T0 + 2).await;
    let out = update(
        store,
        vec![
            ("ghost", cancel()),
            ("b", succeed(1)),
            ("a", succeed(1)),
            ("a", cancel()),
            ("ghost-2", cancel()),
        ],
        T0 + 3,
    )
    .await;
    assert_eq!(out[0], UpdateOutcome::NotFound);
    let (b, _) = applied(out[1].clone());
    assert_eq!(
        (b.spec.task_id.as_str(), b.state.status),
        ("b", Status::Completed)
    );
    assert_eq!(
        out[2],
        UpdateOutcome::Refused(Refusal::StaleAttempt {
            got: 1,
            current: 0,
            status: Status::Queued
        })
    );
    let (a, _) = applied(out[3].clone());
    assert_eq!(
        (a.spec.task_id.as_str(), a.state.status),
        ("a", Status::Cancelled)
    );
    assert_eq!(out[4], UpdateOutcome::NotFound);
    assert_eq!(get(store, "a").await, a);
    assert_eq!(get(store, "b").await, b);
}

pub async fn update_same_task_several_times_in_one_batch(store: &dyn Store) {
    submit(store, vec![spec("t", "echo")], T0).await;
    claim(store, "echo", 1, T0 + 1).await;
    let out = update(
        store,
        vec![
            ("t", fail(1, FailureKind::Retryable)),
            ("t", Command::Promote),
            ("t", succeed(1)),
            ("t", cancel()),
            ("t", cancel()),
        ],
        T0 + 2,
    )
    .await;
    let mut out = out.into_iter();
    assert_eq!(
        applied(out.next().expect("fail")).0.state.status,
        Status::RetryWait
    );
    assert_eq!(
        applied(out.next().expect("promote")).0.state.status,
        Status::Queued
    );
    assert_eq!(
        out.next().expect("succeed"),
        UpdateOutcome::Refused(Refusal::StaleAttempt {
            got: 1,
            current: 1,
            status: Status::Queued
        })
    );
    let (cancelled, _) = applied(out.next().expect("cancel"));
    assert_eq!(cancelled.state.status, Status::Cancelled);
    assert_eq!(
        out.next().expect("second cancel"),
        UpdateOutcome::Refused(Refusal::Illegal {
            from: Status::Cancelled,
            command: "cancel"
        })
    );
    assert_eq!(
        event_kinds(&cancelled),
        vec![
            EventKind::Submitted,
            EventKind::Started,
            EventKind::AttemptFailed,
            EventKind::RetryReady,
            EventKind::Cancelled
        ]
    );
    assert_eq!(get(store, "t").await, cancelled);
}

// ---------------------------------------------------------------------------
// leases
// ---------------------------------------------------------------------------

pub async fn leases_extend_moves_only_the_owners_running_tasks(store: &dyn Store) {
    submit(store, vec![spec("a1", "echo"), spec("a2", "echo")], T0).await;
    claim_as(store, "echo", 2, "A", T0 + 1_000, T0 + 1).await;
    submit(store, vec![spec("b1", "echo")], T0 + 2).await;
    claim_as(store, "echo", 1, "B", T0 + 1_000, T0 + 2).await;
    submit(store, vec![spec("a3", "echo")], T0 + 3).await;
    claim_as(store, "echo", 1, "A", T0 + 1_000, T0 + 3).await;
    applied(update_one(store, "a3", succeed(1), T0 + 4).await);
    let before_a1 = get(store, "a1").await;
    let before_b1 = get(store, "b1").await;
    let before_a3 = get(store, "a3").await;

    assert_eq!(
        store
            .extend_leases(&strings(&["A"]), T0 + 9_000)
            .await
            .expect("extend"),
        2
    );
    assert_eq!(
        store
            .extend_leases(&strings(&["nobody"]), T0 + 9_000)
            .await
            .expect("extend"),
        0
    );

    for t in ["a1", "a2"] {
        let record = get(store, t).await;
        assert_eq!(record.state.lease_deadline_ms, Some(T0 + 9_000), "{t}");
        assert_eq!(
            (record.state.status, record.state.attempt),
            (Status::Running, 1),
            "{t}"
        );
    }
    let after_a1 = get(store, "a1").await;
    assert_eq!(
        after_a1.state.events, before_a1.state.events,
        "extending a lease records no event"
    );
    assert_eq!(
        get(store, "b1").await,
        before_b1,
        "another owner's lease is untouched"
    );
    assert_eq!(
        get(store, "a3").await,
        before_a3,
        "a finished attempt has no lease"
    );

    // The moved deadline is the one lease expiry looks at.
    assert_eq!(
        store
            .expire_leases(T0 + 5_000, &duties(store).await)
            .await
            .expect("expire"),
        ids(&["b1"])
    );
    assert_eq!(get(store, "a1").await.state.status, Status::Running);
    assert_eq!(
        id_set(
            &store
                .expire_leases(T0 + 9_001, &duties(store).await)
                .await
                .expect("expire")
        ),
        id_set(&ids(&["a1", "a2"]))
    );
}

pub async fn leases_expire_fails_overdue_attempts(store: &dyn Store) {
    let tasks = [
        ("e1", T0 + 1_000, 3),
        ("e2", T0 + 2_000, 3),
        ("e3", T0 + 1_500, 3),
        ("e4", T0 + 1_000, 1),
        ("e5", T0 + 1_000, 3),
    ];
    for (i, (name, deadline, max_attempts)) in tasks.into_iter().enumerate() {
        let now = T0 + i as u64;
        submit(
            store,
            vec![spec_with(name, "echo", |s| s.retry = policy(max_attempts))],
            now,
        )
        .await;
        assert_eq!(
            claimed_ids(&claim_as(store, "echo", 1, "owner", deadline, now).await),
            ids(&[name])
        );
    }
    applied(update_one(store, "e5", succeed(1), T0 + 10).await);
    let e2 = get(store, "e2").await;
    let e3 = get(store, "e3").await;
    let e5 = get(store, "e5").await;

    let expired = store
        .expire_leases(T0 + 1_500, &duties(store).await)
        .await
        .expect("expire");
    assert_eq!(id_set(&expired), id_set(&ids(&["e1", "e4"])));

    let e1 = get(store, "e1").await;
    assert_eq!(e1.state.status, Status::RetryWait);
    assert_eq!(e1.state.ready_at_ms, Some(T0 + 2_500));
    assert_eq!(
        e1.state
            .error
            .as_ref()
            .map(|e| (e.kind.as_str(), e.attempt)),
        Some(("lease_expired", 1))
    );
    assert_eq!(
        e1.state.events.last().map(|e| e.kind),
        Some(EventKind::AttemptFailed)
    );
    let e4 = get(store, "e4").await;
    assert_eq!(
        e4.state.status,
        Status::DeadLettered,
        "the expired attempt counts against the budget"
    );
    assert_eq!(
        e4.state.error.as_ref().map(|e| e.kind.as_str()),
        Some("retries_exhausted")
    );
    assert_eq!(get(store, "e2").await, e2);
    assert_eq!(
        get(store, "e3").await,
        e3,
        "a deadline equal to now has not passed"
    );
    assert_eq!(get(store, "e5").await, e5);

    assert_eq!(
        store
            .expire_leases(T0 + 1_500, &duties(store).await)
            .await
            .expect("expire"),
        Vec::<TaskId>::new()
    );
    assert_eq!(
        store
            .promote_due(T0 + 2_500, &duties(store).await)
            .await
            .expect("promote"),
        strings(&["echo"])
    );
    assert_eq!(
        claim(store, "echo", 5, T0 + 2_501).await,
        vec![Claimed {
            spec: e1.spec,
            attempt: 2
        }]
    );
}

pub async fn leases_release_owner_fails_only_that_owner(store: &dyn Store) {
    submit(store, vec![spec("a1", "echo"), spec("a2", "other")], T0).await;
    claim_as(store, "echo", 1, "A", T0 + 60_000, T0 + 1).await;
    claim_as(store, "other", 1, "A", T0 + 60_000, T0 + 1).await;
    submit(store, vec![spec("b1", "echo"), spec("a3", "echo")], T0 + 2).await;
    claim_as(store, "echo", 1, "B", T0 + 60_000, T0 + 2).await;
    claim_as(store, "echo", 1, "A", T0 + 60_000, T0 + 2).await;
    applied(update_one(store, "a3", succeed(1), T0 + 3).await);
    let b1 = get(store, "b1").await;
    let a3 = get(store, "a3").await;

    let lost = Failure::new(FailureKind::AgentLost, "agent disconnected");
    let released = store
        .release_owner("A", lost.clone(), T0 + 100)
        .await
        .expect("release");
    assert_eq!(id_set(&released), id_set(&ids(&["a1", "a2"])));
    for t in ["a1", "a2"] {
        let record = get(store, t).await;
        assert_eq!(record.state.status, Status::RetryWait, "{t}");
        assert_eq!(record.state.ready_at_ms, Some(T0 + 1_100), "{t}");
        let error = record.state.error.as_ref().expect("error");
        assert_eq!(
            (error.kind.as_str(), error.message.as_str(), error.attempt),
            ("agent_lost", "agent disconnected", 1)
        );
        assert_eq!(
            record.state.events.last().map(|e| e.kind),
            Some(EventKind::AttemptFailed)
        );
    }
    assert_eq!(get(store, "b1").await, b1);
    assert_eq!(get(store, "a3").await, a3);
    assert_eq!(
        store
            .release_owner("A", lost, T0 + 101)
            .await
            .expect("release"),
        Vec::<TaskId>::new()
    );

    let permanent = Failure::new(FailureKind::Permanent, "agent rejected the task");
    assert_eq!(
        store
            .release_owner("B", permanent, T0 + 102)
            .await
            .expect("release"),
        ids(&["b1"])
    );
    assert_eq!(get(store, "b1").await.state.status, Status::Failed);
}

// ---------------------------------------------------------------------------
// list, counts, queued types
// ---------------------------------------------------------------------------

pub async fn leases_extend_many_owners_at_once(store: &dyn Store) {
    let names = ["o1", "o2", "o3", "o4"];
    submit(store, names.iter().map(|n| spec(n, "echo")).collect(), T0).await;
    for (owner, now) in [("A", T0 + 1), ("B", T0 + 2), ("C", T0 + 3)] {
        claim_as(store, "echo", 1, owner, T0 + 1_000, now).await;
    }
    claim_as(store, "echo", 1, "A", T0 + 1_000, T0 + 4).await;
    assert_eq!(
        store
            .extend_leases(&strings(&["A", "B", "gone"]), T0 + 5_000)
            .await
            .expect("extend"),
        3,
        "A holds two attempts, B one, an unknown owner none"
    );
    assert_eq!(
        store.extend_leases(&[], T0 + 5_000).await.expect("extend"),
        0
    );
    // An extension never shortens a lease.
    store
        .extend_leases(&strings(&["A"]), T0 + 2_000)
        .await
        .expect("extend");
    assert_eq!(
        get(store, "o1").await.state.lease_deadline_ms,
        Some(T0 + 5_000)
    );
    assert_eq!(
        store
            .expire_leases(T0 + 1_001, &duties(store).await)
            .await
            .expect("expire"),
        ids(&["o3"]),
        "only C's lease was not extended"
    );
    assert_eq!(
        id_set(
            &store
                .expire_leases(T0 + 5_001, &duties(store).await)
                .await
                .expect("expire")
        ),
        id_set(&ids(&["o1", "o2", "o4"]))
    );
}

pub async fn leadership_goes_to_one_holder_and_passes_on_when_it_lapses(store: &dyn Store) {
    let lead = |holder: &str, epoch: u64, expires_at_ms: Millis| Leadership {
        holder: holder.into(),
        epoch,
        expires_at_ms,
    };
    let acquire = |candidate: &'static str, now: Millis| async move {
        store
            .acquire_leadership(candidate, now, 1_000)
            .await
            .expect("acquire_leadership")
    };
    assert_eq!(acquire("A", T0).await, lead("A", 1, T0 + 1_000), "vacant");
    assert_eq!(
        acquire("B", T0 + 500).await,
        lead("A", 1, T0 + 1_000),
        "held: B gets the current leadership back, unchanged"
    );
    assert_eq!(
        acquire("A", T0 + 600).await,
        lead("A", 1, T0 + 1_600),
        "the holder renews without a new epoch"
    );
    assert_eq!(acquire("B", T0 + 1_599).await, lead("A", 1, T0 + 1_600));
    assert_eq!(
        acquire("B", T0 + 1_600).await,
        lead("B", 2, T0 + 2_600),
        "a lapsed role goes to the next candidate with the next epoch"
    );
    assert_eq!(acquire("A", T0 + 1_700).await, lead("B", 2, T0 + 2_600));
    assert_eq!(
        acquire("B", T0 + 3_000).await,
        lead("B", 3, T0 + 4_000),
        "a holder whose own lease lapsed comes back with a new epoch"
    );
    let fence = lead("B", 3, T0 + 4_000).fence_for("B").expect("B holds it");
    store.resign_leadership(&fence).await.expect("resign");
    assert_eq!(
        acquire("C", T0 + 3_001).await,
        lead("C", 4, T0 + 4_001),
        "a resigned role is free at once"
    );
    store
        .resign_leadership(&fence)
        .await
        .expect("resigning a role one no longer holds changes nothing");
    assert_eq!(acquire("A", T0 + 3_002).await, lead("C", 4, T0 + 4_001));
}

pub async fn leadership_stale_holders_writes_are_refused(store: &dyn Store) {
    submit(
        store,
        vec![
            spec_with("r", "echo", |s| s.retry = policy(3)),
            spec("x", "echo"),
        ],
        T0,
    )
    .await;
    claim_as(store, "echo", 1, "lost", T0 + 1_000, T0 + 1).await;
    applied(update_one(store, "r", fail(1, FailureKind::Retryable), T0 + 2).await);
    claim_as(store, "echo", 1, "lost", T0 + 1_000, T0 + 3).await;
    let a = store
        .acquire_leadership("A", T0, 2_000)
        .await
        .expect("acquire");
    let stale = a.fence_for("A").expect("A leads");
    let before = (get(store, "r").await, get(store, "x").await);

    // A's lease lapsed: nobody took over yet, but A may no longer act.
    let lapsed = store.expire_leases(T0 + 2_000, &stale).await;
    assert!(matches!(lapsed, Err(Error::Fenced(_))), "{lapsed:?}");
    let b = store
        .acquire_leadership("B", T0 + 2_500, 2_000)
        .await
        .expect("acquire");
    assert_eq!((b.holder.as_str(), b.epoch), ("B", 2));
    // A stalled and comes back thinking it is still early: its epoch is gone.
    let expired = store.expire_leases(T0 + 1_500, &stale).await;
    assert!(
        matches!(&expired, Err(Error::Fenced(m)) if m.contains('B')),
        "{expired:?}"
    );
    let promoted = store.promote_due(T0 + 1_500, &stale).await;
    assert!(matches!(promoted, Err(Error::Fenced(_))), "{promoted:?}");
    let forged = Fence {
        holder: "B".into(),
        epoch: 1,
    };
    let forged = store.promote_due(T0 + 2_600, &forged).await;
    assert!(matches!(forged, Err(Error::Fenced(_))), "{forged:?}");
    assert_eq!(
        (get(store, "r").await, get(store, "x").await),
        before,
        "a refused duty changes nothing"
    );

    let fence = b.fence_for("B").expect("B leads");
    assert_eq!(
        store
            .expire_leases(T0 + 2_600, &fence)
            .await
            .expect("the leader sweeps"),
        ids(&["x"])
    );
    assert_eq!(
        store
            .promote_due(T0 + 2_600, &fence)
            .await
            .expect("the leader promotes"),
        strings(&["echo"])
    );
    assert_eq!(get(store, "r").await.state.status, Status::Queued);
}

pub async fn list_filters_newest_first(store: &dyn Store) {
    submit(
        store,
        vec![spec("x1", "a"), spec("x2", "b"), spec("x3", "a")],
        T0,
    )
    .await;
    submit(store, vec![spec("x4", "b"), spec("x5", "a")], T0 + 1).await;
    claim(store, "a", 1, T0 + 2).await;
    let filter = |status: Option<Status>, task_type: Option<&str>, limit: usize| ListFilter {
        status,
        task_type: task_type.map(str::to_string),
        limit,
        cursor: None,
    };

    let page = store.list(filter(None, None, 100)).await.expect("list");
    assert_eq!(page.next_cursor, None);
    assert_eq!(
        page.tasks
            .iter()
            .map(|t| t.spec.task_id.clone())
            .collect::<Vec<_>>(),
        ids(&["x5", "x4", "x3", "x2", "x1"])
    );
    for record in &page.tasks {
        assert_eq!(get(store, record.spec.task_id.as_str()).await, *record);
    }
    assert_eq!(
        list_ids(store, filter(Some(Status::Queued), None, 100)).await,
        ids(&["x5", "x4", "x3", "x2"])
    );
    assert_eq!(
        list_ids(store, filter(None, Some("a"), 100)).await,
        ids(&["x5", "x3", "x1"])
    );
    assert_eq!(
        list_ids(store, filter(Some(Status::Running), Some("a"), 100)).await,
        ids(&["x1"])
    );
    assert_eq!(
        list_ids(store, filter(Some(Status::Running), Some("b"), 100)).await,
        Vec::<TaskId>::new()
    );
    assert_eq!(
        list_ids(store, filter(Some(Status::Completed), None, 100)).await,
        Vec::<TaskId>::new()
    );
    assert_eq!(
        list_ids(store, filter(None, Some("zzz"), 100)).await,
        Vec::<TaskId>::new()
    );

    let first = store.list(filter(None, None, 2)).await.expect("list");
    assert_eq!(first.tasks.len(), 2);
    assert!(first.next_cursor.is_some(), "older tasks remain");
}

async fn collect_pages(
    store: &dyn Store,
    task_type: Option<&str>,
    limit: usize,
) -> (Vec<usize>, Vec<TaskId>) {
    let mut sizes = Vec::new();
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let filter = ListFilter {
            status: None,
            task_type: task_type.map(str::to_string),
            limit,
            cursor,
        };
        let page = store.list(filter).await.expect("list");
        assert!(page.tasks.len() <= limit, "page larger than the limit");
        sizes.push(page.tasks.len());
        seen.extend(page.tasks.into_iter().map(|t| t.spec.task_id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
        assert!(sizes.len() < 100, "pagination does not end");
    }
    (sizes, seen)
}

pub async fn list_paginates_with_cursor(store: &dyn Store) {
    let names: Vec<String> = (0..25).map(|i| format!("p{i:02}")).collect();
    for (i, chunk) in names.chunks(10).enumerate() {
        submit(
            store,
            chunk.iter().map(|n| spec(n, "p")).collect(),
            T0 + i as u64,
        )
        .await;
    }
    let newest_first: Vec<TaskId> = names.iter().rev().map(|n| id(n)).collect();

    let (sizes, seen) = collect_pages(store, None, 10).await;
    assert_eq!(sizes, vec![10, 10, 5]);
    assert_eq!(seen, newest_first, "every task once, newest first");

    // Tasks submitted between pages do not shift the later pages.
    let first = store
        .list(ListFilter {
            limit: 10,
            ..ListFilter::default()
        })
        .await
        .expect("list");
    submit(
        store,
        vec![spec("newer-1", "p"), spec("newer-2", "q")],
        T0 + 10,
    )
    .await;
    let second = store
        .list(ListFilter {
            limit: 10,
            cursor: first.next_cursor,
            ..ListFilter::default()
        })
        .await;
    let second: Vec<TaskId> = second
        .expect("list")
        .tasks
        .into_iter()
        .map(|t| t.spec.task_id)
        .collect();
    assert_eq!(second, newest_first[10..20].to_vec());

    // Interleaved types, filtered; and a last page that is exactly full.
    let mixed: Vec<TaskSpec> = (0..20)
        .map(|i| spec(&format!("m{i:02}"), if i % 2 == 0 { "even" } else { "odd" }))
        .collect();
    submit(store, mixed, T0 + 20).await;
    let (sizes, seen) = collect_pages(store, Some("even"), 5).await;
    assert_eq!(sizes, vec![5, 5], "a full last page still ends the listing");
    let expected: Vec<TaskId> = (0..20)
        .rev()
        .filter(|i| i % 2 == 0)
        .map(|i| id(&format!("m{i:02}")))
        .collect();
    assert_eq!(seen, expected);
}

pub async fn list_rejects_invalid_cursor(store: &dyn Store) {
    submit(store, vec![spec("a", "echo")], T0).await;
    for bad in ["not a cursor", "", "!!!", "-1"] {
        let filter = ListFilter {
            limit: 10,
            cursor: Some(bad.into()),
            ..ListFilter::default()
        };
        match store.list(filter).await {
            Err(Error::InvalidCursor) => {}
            other => panic!("cursor {bad:?}: expected Error::InvalidCursor, got {other:?}"),
        }
    }
}

pub async fn counts_by_status_and_type(store: &dyn Store) {
    assert_eq!(store.counts().await.expect("counts"), Counts::default());
    submit(
        store,
        vec![
            spec("a1", "a"),
            spec("b1", "b"),
            spec("a2", "a"),
            spec("a3", "a"),
            spec("b2", "b"),
        ],
        T0,
    )
    .await;
    claim(store, "a", 1, T0 + 1).await;
    claim(store, "b", 1, T0 + 1).await;
    applied(update_one(store, "b1", succeed(1), T0 + 2).await);
    applied(update_one(store, "a2", cancel(), T0 + 2).await);

    let counts = store.counts().await.expect("counts");
    let expected_status = BTreeMap::from([
        ("queued", 2u64),
        ("running", 1),
        ("completed", 1),
        ("cancelled", 1),
    ])
    .into_iter();
    let expected_types = BTreeMap::from([("a", 1u64), ("b", 1)]).into_iter();
    assert_eq!(
        counts,
        Counts {
            by_status: expected_status.map(|(k, v)| (k.to_string(), v)).collect(),
            queued_by_type: expected_types.map(|(k, v)| (k.to_string(), v)).collect(),
        }
    );
    assert_eq!(
        store
            .queued_by_priority()
            .await
            .expect("queued by priority"),
        BTreeMap::from([("normal".to_string(), 2u64)])
    );
    submit(
        store,
        vec![
            spec_with("c1", "c", |s| s.priority = Priority::Critical),
            spec_with("c2", "c", |s| s.priority = Priority::Critical),
            spec_with("c3", "c", |s| s.priority = Priority::Low),
        ],
        T0 + 3,
    )
    .await;
    claim(store, "c", 1, T0 + 4).await;
    assert_eq!(
        store
            .queued_by_priority()
            .await
            .expect("queued by priority"),
        BTreeMap::from([
            ("critical".to_string(), 1u64),
            ("low".to_string(), 1),
            ("normal".to_string(), 2),
        ]),
        "queued tasks per priority, claimed ones excluded"
    );
}

pub async fn queued_types_lists_types_with_queued_work(store: &dyn Store) {
    assert_eq!(
        store.queued_types().await.expect("queued_types"),
        Vec::<String>::new()
    );
    submit(
        store,
        vec![
            spec("x1", "x"),
            spec("y1", "y"),
            spec("z1", "z"),
            spec("x2", "x"),
        ],
        T0,
    )
    .await;
    assert_eq!(
        sorted_unique(store.queued_types().await.expect("queued_types")),
        strings(&["x", "y", "z"])
    );
    claim(store, "y", 1, T0 + 1).await;
    claim(store, "x", 1, T0 + 1).await;
    assert_eq!(
        sorted_unique(store.queued_types().await.expect("queued_types")),
        strings(&["x", "z"])
    );
    applied(update_one(store, "z1", cancel(), T0 + 2).await);
    assert_eq!(
        store.queued_types().await.expect("queued_types"),
        strings(&["x"])
    );
}

// ---------------------------------------------------------------------------
// events and lifecycle
// ---------------------------------------------------------------------------

/// Drives one task through a life and checks, after every step, that the store holds
/// exactly what `baton_core::lifecycle::apply` computes.
pub async fn events_one_per_transition_as_lifecycle_decides(store: &dyn Store) {
    let s = spec("life", "echo");
    let step = |state: &TaskState, command: Command, now: Millis| {
        apply(state, command, Ctx::for_spec(&s, now, 0.5))
            .expect("lifecycle accepts the step")
            .state
    };
    let claim_command = |owner: &str, deadline: Millis| Command::Claim {
        agent_id: agent(&format!("agent-{owner}")),
        lease_owner: owner.into(),
        lease_deadline_ms: deadline,
    };

    let mut expected = TaskState::new_queued(T0);
    let created = submit(store, vec![s.clone()], T0).await;
    assert_eq!(
        created,
        vec![SubmitOutcome::Created(TaskRecord {
            spec: s.clone(),
            state: expected.clone()
        })]
    );

    expected = step(&expected, claim_command("o1", T0 + 500), T0 + 1);
    claim_as(store, "echo", 1, "o1", T0 + 500, T0 + 1).await;
    assert_eq!(get(store, "life").await.state, expected);

    expected = step(&expected, fail(1, FailureKind::Retryable), T0 + 2);
    let (record, _) =
        applied(update_one(store, "life", fail(1, FailureKind::Retryable), T0 + 2).await);
    assert_eq!(record.state, expected);
    assert_eq!(get(store, "life").await, record);

    expected = step(&expected, Command::Promote, T0 + 1_002);
    store
        .promote_due(T0 + 1_002, &duties(store).await)
        .await
        .expect("promote");
    assert_eq!(get(store, "life").await.state, expected);

    expected = step(&expected, claim_command("o2", T0 + 2_000), T0 + 1_003);
    claim_as(store, "echo", 1, "o2", T0 + 2_000, T0 + 1_003).await;
    assert_eq!(get(store, "life").await.state, expected);

    expected = step(&expected, succeed(2), T0 + 1_004);
    let (record, _) = applied(update_one(store, "life", succeed(2), T0 + 1_004).await);
    assert_eq!(record.state, expected);
    assert_eq!(get(store, "life").await, record);

    assert_eq!(
        event_kinds(&record),
        vec![
            EventKind::Submitted,
            EventKind::Started,
            EventKind::AttemptFailed,
            EventKind::RetryReady,
            EventKind::Started,
            EventKind::Succeeded
        ]
    );
    // Refused commands record nothing.
    update(
        store,
        vec![
            ("life", cancel()),
            ("life", succeed(2)),
            ("life", Command::Promote),
        ],
        T0 + 1_005,
    )
    .await;
    assert_eq!(get(store, "life").await, record);
}

pub async fn ping_answers(store: &dyn Store) {
    store.ping().await.expect("ping");
    submit(store, vec![spec("a", "echo")], T0).await;
    store.ping().await.expect("ping");
}

// ---------------------------------------------------------------------------
// persistence
// ---------------------------------------------------------------------------

/// Everything a reader can see of a store.
#[derive(Debug, PartialEq)]
struct Snapshot {
    records: Vec<TaskRecord>,
    listed: Vec<TaskRecord>,
    counts: Counts,
    next_wake: Option<Millis>,
    queued_types: Vec<String>,
}

async fn snapshot(store: &dyn Store, names: &[&str]) -> Snapshot {
    let mut records = Vec::new();
    for n in names {
        records.push(get(store, n).await);
    }
    Snapshot {
        records,
        listed: store
            .list(ListFilter {
                limit: 1_000,
                ..ListFilter::default()
            })
            .await
            .expect("list")
            .tasks,
        counts: store.counts().await.expect("counts"),
        next_wake: store.next_wake().await.expect("next_wake"),
        queued_types: sorted_unique(store.queued_types().await.expect("queued_types")),
    }
}

/// Everything a store said it stored is still there after the store is closed and
/// opened again, and the store goes on from where it stopped.
pub async fn data_survives_reopen<S, F, Fut>(store: S, reopen: F)
where
    S: Store,
    F: Fn(S) -> Fut,
    Fut: Future<Output = S>,
{
    let names = ["p1", "p2", "p3", "p4", "p5", "p6"];
    submit(&store, names.iter().map(|n| spec(n, "echo")).collect(), T0).await;
    claim_as(&store, "echo", 1, "keeper", T0 + 1_000, T0 + 1).await;
    claim_as(&store, "echo", 2, "worker", T0 + 1_000, T0 + 1).await;
    applied(update_one(&store, "p2", succeed(1), T0 + 2).await);
    applied(update_one(&store, "p3", fail(1, FailureKind::Retryable), T0 + 2).await);
    applied(update_one(&store, "p4", cancel(), T0 + 2).await);
    assert_eq!(
        store
            .extend_leases(&strings(&["keeper"]), T0 + 5_000)
            .await
            .expect("extend"),
        1
    );
    store
        .put_flow("kept", None, json!({"steps": []}), T0)
        .await
        .expect("put_flow");
    let run = run_record("kept-run", "running", true, 3, T0);
    store
        .write_runs(vec![write(run.clone(), None, vec![])], T0)
        .await
        .expect("write_runs");
    let before = snapshot(&store, &names).await;

    let store = reopen(store).await;
    let after = snapshot(&store, &names).await;
    assert_eq!(after, before, "everything survives a reopen");
    assert_eq!(store.get_run("kept-run").await.unwrap(), Some(run));
    assert_eq!(store.active_runs().await.unwrap().len(), 1);
    assert_eq!(
        store
            .get_flow("kept", None)
            .await
            .unwrap()
            .map(|f| f.version),
        Some(1)
    );

    assert_eq!(
        submit(&store, vec![spec("p5", "echo"), spec("p7", "echo")], T0 + 3).await,
        vec![
            SubmitOutcome::Existing(get(&store, "p5").await),
            SubmitOutcome::Created(TaskRecord {
                spec: spec("p7", "echo"),
                state: TaskState::new_queued(T0 + 3)
            }),
        ]
    );
    assert_eq!(
        claimed_ids(&claim(&store, "echo", 10, T0 + 4).await),
        ids(&["p5", "p6", "p7"])
    );
    assert_eq!(
        store
            .expire_leases(T0 + 4_000, &duties(&store).await)
            .await
            .expect("expire"),
        Vec::<TaskId>::new(),
        "the extended lease"
    );
    assert_eq!(
        store
            .expire_leases(T0 + 5_001, &duties(&store).await)
            .await
            .expect("expire"),
        ids(&["p1"])
    );
    let names = ["p1", "p2", "p3", "p4", "p5", "p6", "p7"];
    let before = snapshot(&store, &names).await;

    let store = reopen(store).await;
    assert_eq!(
        snapshot(&store, &names).await,
        before,
        "writes after a reopen survive the next one"
    );
}

// ---------------------------------------------------------------------------
// Waiting tasks (dependencies)
// ---------------------------------------------------------------------------

pub async fn waiting_tasks_are_not_claimed_until_released(store: &dyn Store) {
    submit(store, vec![spec("parent", "t")], 1).await;
    let child = spec_with("child", "t", |s| s.dependencies = ids(&["parent"]));
    let out = submit(store, vec![child.clone()], 2).await;
    match &out[0] {
        SubmitOutcome::Created(r) => assert_eq!(r.state.status, Status::Waiting),
        other => panic!("expected Created, got {other:?}"),
    }
    assert_eq!(get(store, "child").await.spec, child, "dependencies stored");
    assert_eq!(
        claimed_ids(&claim(store, "t", 10, 3).await),
        ids(&["parent"])
    );
    assert!(
        claim(store, "t", 10, 4).await.is_empty(),
        "waiting is never claimed"
    );
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.by_status.get("waiting"), Some(&1));
    assert_eq!(counts.queued_by_type.get("t"), None);

    let (record, effects) = applied(update_one(store, "child", Command::Release, 5).await);
    assert_eq!(record.state.status, Status::Queued);
    assert_eq!(effects, vec![Effect::Ready]);
    assert!(matches!(
        update_one(store, "child", Command::Release, 6).await,
        UpdateOutcome::Refused(Refusal::Illegal { .. })
    ));
    assert_eq!(store.queued_types().await.unwrap(), vec!["t".to_string()]);
    assert_eq!(
        claimed_ids(&claim(store, "t", 10, 7).await),
        ids(&["child"])
    );
}

pub async fn waiting_tasks_can_be_cancelled_and_listed(store: &dyn Store) {
    let w = |i: &str| spec_with(i, "t", |s| s.dependencies = ids(&["nowhere"]));
    submit(store, vec![w("w1"), w("w2"), spec("q", "t")], 1).await;
    let page = store
        .list(ListFilter {
            status: Some(Status::Waiting),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let listed: Vec<_> = page.tasks.iter().map(|t| t.spec.task_id.clone()).collect();
    assert_eq!(listed, ids(&["w2", "w1"]));
    let (record, effects) = applied(
        update_one(
            store,
            "w1",
            Command::Cancel {
                reason: Some("dependency nowhere failed".into()),
            },
            2,
        )
        .await,
    );
    assert_eq!(record.state.status, Status::Cancelled);
    assert_eq!(effects, vec![Effect::Finished(Status::Cancelled)]);
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.by_status.get("waiting"), Some(&1));
    assert_eq!(counts.by_status.get("cancelled"), Some(&1));
}

// ---------------------------------------------------------------------------
// Flow registry
// ---------------------------------------------------------------------------

pub async fn flows_get_versions_and_are_immutable(store: &dyn Store) {
    let d1 = json!({"steps": [{"id": "a", "task_type": "t"}]});
    let d2 = json!({"steps": [{"id": "b", "task_type": "t"}]});
    assert!(store.get_flow("f", None).await.unwrap().is_none());
    let FlowOutcome::Created(v1) = store.put_flow("f", None, d1.clone(), 10).await.unwrap() else {
        panic!("first version is created")
    };
    assert_eq!(
        (v1.name.as_str(), v1.version, v1.created_at_ms),
        ("f", 1, 10)
    );
    assert_eq!(v1.definition, d1);
    // The same definition again without a version: nothing new.
    match store.put_flow("f", None, d1.clone(), 11).await.unwrap() {
        FlowOutcome::Existing(r) => assert_eq!(r.version, 1),
        other => panic!("expected Existing, got {other:?}"),
    }
    match store.put_flow("f", None, d2.clone(), 12).await.unwrap() {
        FlowOutcome::Created(r) => assert_eq!(r.version, 2),
        other => panic!("expected Created v2, got {other:?}"),
    }
    // An explicit version that exists with another definition is refused.
    match store.put_flow("f", Some(1), d2.clone(), 13).await.unwrap() {
        FlowOutcome::Conflict(r) => assert_eq!(r.definition, d1),
        other => panic!("expected Conflict, got {other:?}"),
    }
    match store.put_flow("f", Some(1), d1.clone(), 13).await.unwrap() {
        FlowOutcome::Existing(r) => assert_eq!(r.version, 1),
        other => panic!("expected Existing, got {other:?}"),
    }
    match store.put_flow("f", Some(7), d1.clone(), 14).await.unwrap() {
        FlowOutcome::Created(r) => assert_eq!(r.version, 7),
        other => panic!("expected Created v7, got {other:?}"),
    }
    assert_eq!(store.get_flow("f", None).await.unwrap().unwrap().version, 7);
    assert_eq!(
        store
            .get_flow("f", Some(2))
            .await
            .unwrap()
            .unwrap()
            .definition,
        d2
    );
    assert!(store.get_flow("f", Some(3)).await.unwrap().is_none());
    assert!(store.get_flow("g", None).await.unwrap().is_none());
}

pub async fn flows_list_every_version(store: &dyn Store) {
    assert!(store.list_flows().await.unwrap().is_empty());
    store.put_flow("b", None, json!({"n": 1}), 1).await.unwrap();
    store.put_flow("a", None, json!({"n": 2}), 2).await.unwrap();
    store.put_flow("b", None, json!({"n": 3}), 3).await.unwrap();
    let listed: Vec<(String, u32)> = store
        .list_flows()
        .await
        .unwrap()
        .into_iter()
        .map(|f| (f.name, f.version))
        .collect();
    assert_eq!(
        listed,
        vec![("a".into(), 1), ("b".into(), 1), ("b".into(), 2)]
    );
}

// ---------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------

pub fn run_record(
    run_id: &str,
    status: &str,
    active: bool,
    revision: u64,
    now: Millis,
) -> RunRecord {
    RunRecord {
        run_id: run_id.into(),
        flow_name: Some("flow".into()),
        status: status.into(),
        active,
        revision,
        created_at_ms: now,
        updated_at_ms: now,
        body: json!({"steps": {"a": {"status": status}}, "n": revision}).into(),
        definition: Some(json!({"steps": [{"id": "a", "task_type": "t"}]})),
    }
}

fn write(record: RunRecord, expected: Option<u64>, tasks: Vec<TaskSpec>) -> RunWrite {
    RunWrite {
        record,
        expected_revision: expected,
        tasks,
        starts: Vec::new(),
    }
}

/// `write_runs_then` calls its hook exactly once, before it answers, with the
/// outcomes it answers: a written run with its tasks, a conflict alike.
pub async fn write_runs_then_hands_the_outcomes_over_once(store: &dyn Store) {
    let seen = Arc::new(Mutex::new(Vec::<Vec<RunWriteOutcome>>::new()));
    let hook_seen = seen.clone();
    let r1 = run_record("hooked", "running", true, 1, 10);
    let mut task = spec("hooked-a", "echo");
    task.run_id = Some("hooked".into());
    let out = store
        .write_runs_then(
            vec![
                write(r1.clone(), None, vec![task]),
                write(r1.clone(), Some(7), vec![]),
            ],
            10,
            Box::new(move |o| hook_seen.lock().unwrap().push(o.to_vec())),
        )
        .await
        .expect("write_runs_then");
    assert_eq!(out.len(), 2);
    assert!(matches!(&out[0], RunWriteOutcome::Written(t) if t.len() == 1));
    assert!(matches!(&out[1], RunWriteOutcome::Conflict(_)));
    assert_eq!(
        std::mem::take(&mut *seen.lock().unwrap()),
        vec![out],
        "called once, with the answer"
    );
}

pub async fn runs_create_once_then_compare_and_set(store: &dyn Store) {
    assert!(store.get_run("r1").await.unwrap().is_none());
    let r1 = run_record("r1", "running", true, 1, 10);
    let out = store
        .write_runs(vec![write(r1.clone(), None, vec![])], 10)
        .await
        .unwrap();
    assert_eq!(out, vec![RunWriteOutcome::Written(vec![])]);
    assert_eq!(store.get_run("r1").await.unwrap().unwrap(), r1);

    // Creating it again conflicts and shows what is stored.
    let again = run_record("r1", "other", true, 1, 11);
    let out = store
        .write_runs(vec![write(again, None, vec![])], 11)
        .await
        .unwrap();
    assert_eq!(out, vec![RunWriteOutcome::Conflict(Some(r1.clone()))]);

    // A write naming a stale revision conflicts; the right one applies. A write
    // without a definition keeps the stored one.
    let mut r2 = run_record("r1", "completed", false, 2, 10);
    r2.updated_at_ms = 20;
    r2.definition = None;
    let out = store
        .write_runs(
            vec![
                write(r2.clone(), Some(5), vec![]),
                write(r2.clone(), Some(1), vec![]),
            ],
            20,
        )
        .await
        .unwrap();
    assert_eq!(out[0], RunWriteOutcome::Conflict(Some(r1.clone())));
    assert_eq!(out[1], RunWriteOutcome::Written(vec![]));
    let stored = store.get_run("r1").await.unwrap().unwrap();
    assert_eq!(stored.definition, r1.definition);
    assert_eq!(
        stored,
        RunRecord {
            definition: r1.definition.clone(),
            ..r2.clone()
        }
    );
    // A write with a definition replaces it; one stored without any reads back None.
    let mut r3 = run_record("r1", "completed", false, 3, 10);
    r3.definition = Some(json!({"steps": []}));
    store
        .write_runs(vec![write(r3.clone(), Some(2), vec![])], 21)
        .await
        .unwrap();
    assert_eq!(store.get_run("r1").await.unwrap().unwrap(), r3);
    let mut bare = run_record("bare", "running", true, 1, 10);
    bare.definition = None;
    store
        .write_runs(vec![write(bare.clone(), None, vec![])], 21)
        .await
        .unwrap();
    assert_eq!(store.get_run("bare").await.unwrap().unwrap(), bare);

    // Updating a run that does not exist conflicts with nothing stored.
    let ghost = run_record("ghost", "running", true, 2, 10);
    let out = store
        .write_runs(vec![write(ghost, Some(1), vec![])], 21)
        .await
        .unwrap();
    assert_eq!(out, vec![RunWriteOutcome::Conflict(None)]);
}

pub async fn runs_write_submits_tasks_atomically(store: &dyn Store) {
    let step = |i: &str| spec_with(i, "t", |s| s.run_id = Some("r".into()));
    submit(store, vec![step("r/b")], 1).await;
    let out = store
        .write_runs(
            vec![write(
                run_record("r", "running", true, 1, 2),
                None,
                vec![step("r/a"), step("r/b")],
            )],
            2,
        )
        .await
        .unwrap();
    match &out[0] {
        RunWriteOutcome::Written(tasks) => {
            assert!(matches!(tasks[0], SubmitOutcome::Created(_)));
            assert!(matches!(tasks[1], SubmitOutcome::Existing(_)));
        }
        other => panic!("expected Written, got {other:?}"),
    }
    assert_eq!(get(store, "r/a").await.spec.run_id.as_deref(), Some("r"));
    assert_eq!(store.queued_types().await.unwrap(), vec!["t".to_string()]);
    // A conflicting write submits nothing.
    let out = store
        .write_runs(
            vec![write(
                run_record("r", "running", true, 3, 2),
                Some(2),
                vec![step("r/c")],
            )],
            3,
        )
        .await
        .unwrap();
    assert!(matches!(out[0], RunWriteOutcome::Conflict(Some(_))));
    assert!(store.get(&id("r/c")).await.unwrap().is_none());
    assert_eq!(
        store.counts().await.unwrap().by_status.get("queued"),
        Some(&2)
    );
}

pub async fn runs_list_filters_and_paginates(store: &dyn Store) {
    let mut writes = Vec::new();
    for i in 0..5u64 {
        let mut r = run_record(
            &format!("run-{i}"),
            if i % 2 == 0 { "running" } else { "failed" },
            i % 2 == 0,
            1,
            100 + i,
        );
        if i == 4 {
            r.flow_name = None;
        }
        writes.push(write(r, None, vec![]));
    }
    store.write_runs(writes, 100).await.unwrap();
    let names = |p: &RunPage| p.runs.iter().map(|r| r.run_id.clone()).collect::<Vec<_>>();

    let all = store
        .list_runs(RunFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        names(&all),
        vec!["run-4", "run-3", "run-2", "run-1", "run-0"]
    );
    assert_eq!(all.next_cursor, None);

    let running = store
        .list_runs(RunFilter {
            status: Some("running".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(names(&running), vec!["run-4", "run-2", "run-0"]);
    let by_flow = store
        .list_runs(RunFilter {
            flow_name: Some("flow".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(names(&by_flow), vec!["run-3", "run-2", "run-1", "run-0"]);

    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_runs(RunFilter {
                limit: 2,
                cursor: cursor.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(page.runs.len() <= 2);
        seen.extend(names(&page));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, vec!["run-4", "run-3", "run-2", "run-1", "run-0"]);
    let bad = store
        .list_runs(RunFilter {
            limit: 2,
            cursor: Some("not a cursor".into()),
            ..Default::default()
        })
        .await;
    assert!(matches!(bad, Err(Error::InvalidCursor)), "{bad:?}");
}

pub async fn runs_submit_refuses_the_id_of_a_run_from_a_flow(store: &dyn Store) {
    let from_flow = run_record("from-flow", "running", true, 1, 100);
    let mut inline = run_record("inline", "running", true, 1, 100);
    inline.flow_name = None;
    store
        .write_runs(
            vec![write(from_flow, None, vec![]), write(inline, None, vec![])],
            100,
        )
        .await
        .unwrap();
    let out = store
        .submit(
            vec![
                spec("before", "work"),
                spec("from-flow", "work"),
                spec("inline", "work"),
                spec("from-flow", "work"),
            ],
            T0,
        )
        .await
        .unwrap();
    assert!(matches!(&out[0], SubmitOutcome::Created(_)), "{out:?}");
    assert_eq!(
        out[1],
        SubmitOutcome::FlowRun(TaskId::from_trusted("from-flow"))
    );
    // A run from an inline definition is not a task: its id is free.
    assert!(matches!(&out[2], SubmitOutcome::Created(_)), "{out:?}");
    assert_eq!(
        out[3],
        SubmitOutcome::FlowRun(TaskId::from_trusted("from-flow"))
    );
    assert!(store
        .get(&TaskId::from_trusted("from-flow"))
        .await
        .unwrap()
        .is_none());
    let c = store.counts().await.unwrap();
    assert_eq!(
        c.by_status.get("queued").copied(),
        Some(2),
        "nothing else stored"
    );
}

pub async fn runs_active_lists_unfinished_oldest_first(store: &dyn Store) {
    let writes = vec![
        write(run_record("a", "running", true, 1, 1), None, vec![]),
        write(run_record("b", "completed", false, 1, 2), None, vec![]),
        write(run_record("c", "paused", true, 1, 3), None, vec![]),
    ];
    store.write_runs(writes, 3).await.unwrap();
    let active: Vec<_> = store
        .active_runs()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(active, vec!["a", "c"]);
    let done = run_record("a", "completed", false, 2, 1);
    store
        .write_runs(vec![write(done, Some(1), vec![])], 4)
        .await
        .unwrap();
    let active: Vec<_> = store
        .active_runs()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(active, vec!["c"]);
}

/// Gathers what each concurrent claimer got, fails if one task went to two of
/// them or if a task of `all` went to none, and returns each task's claimer.
async fn claimed_once_each(
    handles: Vec<tokio::task::JoinHandle<(String, Vec<TaskId>)>>,
    all: &[TaskSpec],
) -> BTreeMap<TaskId, String> {
    let mut owner_of = BTreeMap::new();
    for handle in handles {
        let (owner, got) = handle.await.expect("claimer task");
        for task in got {
            if let Some(previous) = owner_of.insert(task.clone(), owner.clone()) {
                panic!("task {task} claimed by both {previous} and {owner}");
            }
        }
    }
    let expected: BTreeSet<TaskId> = all.iter().map(|s| s.task_id.clone()).collect();
    assert_eq!(
        owner_of.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "every task claimed by some claimer"
    );
    owner_of
}
