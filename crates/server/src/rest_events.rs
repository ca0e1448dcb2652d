//! `GET /api/v1/tasks/{task_id}/events`: a task's life as server-sent events while
//! it runs. Lifecycle changes come from the stored record (`event: status`; for a
//! built-in flow task, the run's events), what agents emit comes from the progress
//! hub (`event: alert`, `event: token`, ... with the agent's JSON as data), and the
//! last event is `event: end` with the task in its `GET /api/v1/tasks/{task_id}`
//! shape; then the stream closes. A client that connects after the task ended gets
//! its recorded history and the end at once.

use crate::app::App;
use crate::clock::now_ms;
use crate::progress::{Emitted, Subscription};
use crate::rest::ApiError;
use crate::view::{event_view, task_view};
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use baton_core::{ErrorCode, TaskId};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

/// How often a running task's record is read again for lifecycle changes that do
/// not end it (queued → running, a retry scheduled); its end wakes the stream at once.
const POLL: Duration = Duration::from_millis(250);
/// Events buffered for a slow client before the producer waits for it.
const CLIENT_BUFFER: usize = 256;

type Tx = mpsc::Sender<Result<Event, Infallible>>;

/// Stream a task's events (server-sent events) until it ends.
#[utoipa::path(get, path = "/api/v1/tasks/{task_id}/events", params(("task_id" = String, Path)),
    responses((status = 200, content_type = "text/event-stream",
        description = "`status` (a lifecycle event), one event per agent event (`alert`, `token`, ...: its JSON), `lagged` (n events skipped), then `end` with the task as GET shows it",
        body = String),
        (status = 404, body = crate::rest::ErrorBody)))]
pub(crate) async fn task_events(
    State(app): State<Arc<App>>,
    Path(task_id): Path<String>,
) -> Result<Response, ApiError> {
    let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
    match app.get(&task_id).await {
        Ok(record) => {
            // Subscribed after the read: the replay buffer holds what came between.
            let sub = app.dispatcher.progress().subscribe(&task_id);
            if record.state.status.is_terminal() {
                // A late client must not keep a topic of a finished task alive.
                app.dispatcher.progress().end(&task_id);
            }
            tokio::spawn(plain_task(app, record, sub, tx));
        }
        // Seed 000: a task whose type is a flow is a run.
        Err(e) if e.code == ErrorCode::NotFound => {
            // Subscribed before the read, so no run event falls in between.
            let run_events = app.engine.subscribe();
            let run = match app.engine.get(&task_id).await {
                Ok((run, _)) if run.flow.is_some() => run,
                Ok(_) => return Err(ApiError(e)),
                Err(re) if re.code == ErrorCode::NotFound => return Err(ApiError(e)),
                Err(re) => return Err(ApiError(re)),
            };
            let sub = app.dispatcher.progress().subscribe(&task_id);
            if !run.status.is_active() {
                app.dispatcher.progress().end(&task_id);
            }
            tokio::spawn(flow_task(app, run, run_events, sub, tx));
        }
        Err(e) => return Err(ApiError(e)),
    }
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn progress_event(e: &Emitted) -> Event {
    Event::default()
        .event(e.kind.as_str())
        .id(e.seq.to_string())
        .data(e.data.as_str())
}

fn json_event(name: &str, data: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .json_data(data)
        .unwrap_or_else(|_| Event::default().event(name).data("null"))
}

/// Sends one event; `false` when the client is gone.
async fn send(tx: &Tx, event: Event) -> bool {
    tx.send(Ok(event)).await.is_ok()
}

/// What the hub's live channel gave, as the stream shows it.
enum Live {
    Event(Arc<Emitted>),
    Lagged(u64),
    Closed,
}

async fn next_live(rx: &mut broadcast::Receiver<Arc<Emitted>>) -> Live {
    match rx.recv().await {
        Ok(e) => Live::Event(e),
        Err(broadcast::error::RecvError::Lagged(n)) => Live::Lagged(n),
        Err(broadcast::error::RecvError::Closed) => Live::Closed,
    }
}

/// Sends what is already waiting on the live channel (events an agent emitted
/// before the end was seen); `false` when the client is gone.
async fn drain_live(tx: &Tx, rx: &mut broadcast::Receiver<Arc<Emitted>>) -> bool {
    loop {
        match rx.try_recv() {
            Ok(e) => {
                if !send(tx, progress_event(&e)).await {
                    return false;
                }
            }
            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                if !send(tx, Event::default().event("lagged").data(n.to_string())).await {
                    return false;
                }
            }
            Err(_) => return true,
        }
    }
}

/// The recorded history and the replay, in the order things happened.
async fn send_head(tx: &Tx, mut lifecycle: Vec<(u64, Event)>, replay: &[Arc<Emitted>]) -> bool {
    lifecycle.extend(replay.iter().map(|e| (e.at_ms, progress_event(e))));
    // Stable: events of the same millisecond keep their own order.
    lifecycle.sort_by_key(|(at, _)| *at);
    for (_, event) in lifecycle {
        if !send(tx, event).await {
            return false;
        }
    }
    true
}

async fn plain_task(app: Arc<App>, mut record: baton_store::TaskRecord, sub: Subscription, tx: Tx) {
    let id = record.spec.task_id.clone();
    let Subscription { replay, mut live } = sub;
    let mut n_sent = record.state.events.len();
    let head: Vec<(u64, Event)> = record
        .state
        .events
        .iter()
        .map(|e| (e.at_ms, json_event("status", &event_view(e))))
        .collect();
    if !send_head(&tx, head, &replay).await {
        return;
    }
    let mut waiter = app.dispatcher.waiter(&id);
    loop {
        if record.state.status.is_terminal() {
            if drain_live(&tx, &mut live).await {
                send(&tx, json_event("end", &task_view(&record, now_ms(), false))).await;
            }
            return;
        }
        let mut reread = false;
        tokio::select! {
            live_event = next_live(&mut live) => match live_event {
                Live::Event(e) => {
                    // The first event of a newer attempt: show that it started first.
                    if e.attempt > record.state.attempt
                        && !refresh(&app, &id, &mut record, &mut n_sent, &tx).await
                    {
                        return;
                    }
                    if !send(&tx, progress_event(&e)).await {
                        return;
                    }
                }
                Live::Lagged(n) => {
                    if !send(&tx, Event::default().event("lagged").data(n.to_string())).await {
                        return;
                    }
                }
                // The hub never drops a sender while it is subscribed to; poll on.
                Live::Closed => tokio::time::sleep(POLL).await,
            },
            _ = &mut waiter => {
                waiter = app.dispatcher.waiter(&id);
                reread = true;
            }
            _ = tokio::time::sleep(POLL) => reread = true,
            _ = tx.closed() => return,
        }
        if reread && !refresh(&app, &id, &mut record, &mut n_sent, &tx).await {
            return;
        }
    }
}

/// Reads the task again and sends its new lifecycle events; `false` when the
/// client is gone. A store error keeps the old record (the next poll tries again).
async fn refresh(
    app: &App,
    id: &TaskId,
    record: &mut baton_store::TaskRecord,
    n_sent: &mut usize,
    tx: &Tx,
) -> bool {
    match app.store.get(id).await {
        Ok(Some(fresh)) => *record = fresh,
        Ok(None) => {}
        Err(e) => tracing::debug!(task_id = %id, error = %e, "could not re-read a watched task"),
    }
    for e in record.state.events.iter().skip(*n_sent) {
        if !send(tx, json_event("status", &event_view(e))).await {
            return false;
        }
    }
    *n_sent = record.state.events.len().max(*n_sent);
    true
}

type RunEvents = broadcast::Receiver<crate::workflows::LiveEvent>;

async fn flow_task(
    app: Arc<App>,
    run: baton_core::workflow::Run,
    mut run_events: RunEvents,
    sub: Subscription,
    tx: Tx,
) {
    let run_id = run.run_id.clone();
    let Subscription { replay, mut live } = sub;
    let head: Vec<(u64, Event)> = run
        .events
        .iter()
        .map(|e| (e.at_ms, json_event("status", e)))
        .collect();
    // Counted with the events the run dropped, so the count only grows.
    let mut seen = run.events_dropped as usize + run.events.len();
    if !send_head(&tx, head, &replay).await {
        return;
    }
    let mut active = run.status.is_active();
    let mut check = tokio::time::interval(Duration::from_secs(1));
    check.tick().await;
    while active {
        tokio::select! {
            live_event = next_live(&mut live) => match live_event {
                Live::Event(e) => {
                    if !send(&tx, progress_event(&e)).await {
                        return;
                    }
                }
                Live::Lagged(n) => {
                    if !send(&tx, Event::default().event("lagged").data(n.to_string())).await {
                        return;
                    }
                }
                Live::Closed => tokio::time::sleep(POLL).await,
            },
            ev = run_events.recv() => match ev {
                Ok(live) if live.run_id == run_id => {
                    // Events are numbered in the run: one the first read already
                    // held (published between the subscription and the read) is
                    // not sent again, and a gap is filled from the stored run.
                    let seq = usize::try_from(live.seq).unwrap_or(usize::MAX);
                    if seq > seen {
                        active = catch_up(&app, &run_id, &mut seen, &tx).await;
                    }
                    if seq >= seen {
                        seen = seq + 1;
                        if !send(&tx, json_event("status", &live.event)).await {
                            return;
                        }
                    }
                    // The run ended in the batch this event came from: the events
                    // after it in that batch are read from the stored run.
                    if !live.status.is_active() {
                        active = catch_up(&app, &run_id, &mut seen, &tx).await;
                    }
                }
                Ok(_) => {}
                // Missed some: the stored run says where it stands.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    active = catch_up(&app, &run_id, &mut seen, &tx).await;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            // A run advanced by another replica is only seen in the store.
            _ = check.tick() => active = catch_up(&app, &run_id, &mut seen, &tx).await,
            _ = tx.closed() => return,
        }
    }
    if !drain_live(&tx, &mut live).await {
        return;
    }
    match app.flow_task_view(&run_id).await {
        Ok(view) => {
            send(&tx, json_event("end", &view)).await;
        }
        Err(e) => {
            tracing::warn!(run_id = %run_id, error = %e, "could not read a finished flow task");
        }
    }
}

/// Sends the run events not yet sent, from the stored run; whether it is still active.
async fn catch_up(app: &App, run_id: &str, seen: &mut usize, tx: &Tx) -> bool {
    match app.engine.get(run_id).await {
        Ok((run, _)) => {
            let dropped = run.events_dropped as usize;
            for e in run.events.iter().skip(seen.saturating_sub(dropped)) {
                if !send(tx, json_event("status", e)).await {
                    return false;
                }
            }
            *seen = (dropped + run.events.len()).max(*seen);
            run.status.is_active()
        }
        Err(e) => {
            tracing::debug!(run_id, error = %e, "could not re-read a watched run");
            true
        }
    }
}
