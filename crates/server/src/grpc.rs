//! The gRPC API: the client service (same operations and errors as REST) and the
//! agent service (one bidirectional stream per agent connection).

use crate::app::App;
use crate::clock::now_ms;
use crate::dispatcher::PendingResults;
use crate::view::task_proto;
use baton_core::{AgentId, Error, InputKind, InputPart};
use baton_proto::v1;
use baton_proto::v1::agent_message::Msg;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

fn status(e: impl Into<Error>) -> Status {
    baton_proto::to_status(&e.into())
}

#[derive(Clone)]
pub struct ClientApi {
    pub app: Arc<App>,
}

/// Turns a gRPC task request into the same JSON the REST API takes, so both go
/// through one validator; input bytes are attached afterwards without base64.
fn spec_from_proto(
    app: &App,
    req: v1::TaskRequest,
    prefix: &str,
) -> Result<baton_core::TaskSpec, Error> {
    let mut obj = serde_json::Map::new();
    if !req.task_id.is_empty() {
        obj.insert("task_id".into(), req.task_id.into());
    }
    obj.insert("task_type".into(), req.task_type.into());
    if !req.priority.is_empty() {
        let p = req.priority.trim();
        obj.insert(
            "priority".into(),
            p.parse::<i64>()
                .map(Into::into)
                .unwrap_or_else(|_| p.into()),
        );
    }
    if req.timeout_ms > 0 {
        obj.insert("timeout_ms".into(), req.timeout_ms.into());
    }
    if !req.metadata_json.trim().is_empty() {
        let meta: serde_json::Value = serde_json::from_str(&req.metadata_json).map_err(|e| {
            Error::invalid(format!("{prefix}metadata_json is not valid json: {e}"))
                .with_field("metadata_json")
        })?;
        obj.insert("metadata".into(), meta);
    }
    if let Some(r) = req.retry {
        let mut m = serde_json::Map::new();
        if r.max_attempts > 0 {
            m.insert("max_attempts".into(), r.max_attempts.into());
        }
        if r.backoff_base_ms > 0 {
            m.insert("backoff_base_ms".into(), r.backoff_base_ms.into());
        }
        if r.backoff_cap_ms > 0 {
            m.insert("backoff_cap_ms".into(), r.backoff_cap_ms.into());
        }
        if r.backoff_multiplier != 0.0 {
            m.insert("backoff_multiplier".into(), r.backoff_multiplier.into());
        }
        m.insert("jitter".into(), r.jitter.into());
        obj.insert("retry".into(), m.into());
    }
    if !req.deadline.is_empty() {
        let d = req.deadline.trim();
        obj.insert(
            "deadline".into(),
            d.parse::<u64>()
                .map(Into::into)
                .unwrap_or_else(|_| d.into()),
        );
    }
    if !req.execution_mode.is_empty() {
        obj.insert("execution_mode".into(), req.execution_mode.into());
    }
    let mut spec = app.parse(&serde_json::Value::Object(obj), prefix)?;
    let mut total = 0;
    for (i, part) in req.inputs.into_iter().enumerate() {
        let field = format!("{prefix}inputs[{i}]");
        let kind = InputKind::parse(&part.r#type).map_err(|e| {
            Error::invalid(format!("{field}.type: {}", e.message)).with_field(&field)
        })?;
        let mut p = InputPart::from_wire(kind, part.data)
            .map_err(|e| Error::invalid(format!("{field}: {}", e.message)).with_field(&field))?;
        p.mime_type = (!part.mime_type.is_empty()).then_some(part.mime_type);
        p.name = (!part.name.is_empty()).then_some(part.name);
        total += p.approx_size();
        spec.inputs.push(p);
    }
    if total > app.limits.max_task_bytes {
        return Err(Error::new(
            baton_core::ErrorCode::PayloadTooLarge,
            format!(
                "{prefix}inputs: total {total} bytes exceed the limit of {} bytes",
                app.limits.max_task_bytes
            ),
        ));
    }
    Ok(spec)
}

fn list_proto(page: baton_store::Page) -> v1::ListTasksResponse {
    let now = now_ms();
    v1::ListTasksResponse {
        tasks: page
            .tasks
            .iter()
            .map(|t| task_proto(t, now, false))
            .collect(),
        next_cursor: page.next_cursor.unwrap_or_default(),
    }
}

fn submitted(s: crate::app::Submitted) -> v1::SubmitTaskResponse {
    v1::SubmitTaskResponse {
        task: Some(task_proto(&s.record, now_ms(), false)),
        created: s.created,
        error: None,
    }
}

#[tonic::async_trait]
impl v1::baton_server::Baton for ClientApi {
    async fn submit_task(
        &self,
        req: Request<v1::SubmitTaskRequest>,
    ) -> Result<Response<v1::SubmitTaskResponse>, Status> {
        let task = req
            .into_inner()
            .task
            .ok_or_else(|| status(Error::invalid("task is required")))?;
        let spec = spec_from_proto(&self.app, task, "").map_err(status)?;
        // Seed 000: a task whose type is a flow runs as that flow, as over REST.
        if let Some((run_id, created)) = self.app.start_flow_task(&spec).await.map_err(status)? {
            let task = self
                .app
                .flow_task_proto(&run_id)
                .await
                .map_err(status)?
                .ok_or_else(|| {
                    status(Error::internal("the flow task vanished after it started"))
                })?;
            return Ok(Response::new(v1::SubmitTaskResponse {
                task: Some(task),
                created,
                error: None,
            }));
        }
        let out = self
            .app
            .submit(vec![spec])
            .await
            .map_err(status)?
            .pop()
            .expect("one outcome");
        Ok(Response::new(submitted(out.map_err(status)?)))
    }

    async fn submit_tasks(
        &self,
        req: Request<v1::SubmitTasksRequest>,
    ) -> Result<Response<v1::SubmitTasksResponse>, Status> {
        let tasks = req.into_inner().tasks;
        if tasks.is_empty() {
            return Err(status(
                Error::invalid("tasks must not be empty").with_field("tasks"),
            ));
        }
        let mut specs = Vec::with_capacity(tasks.len());
        let mut problems = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            match spec_from_proto(&self.app, t, &format!("tasks[{i}].")) {
                Ok(s) => specs.push(s),
                // As over REST: every problem of every task, by field.
                Err(e) => problems.extend(e.problems(&format!("tasks[{i}]"))),
            }
        }
        if !problems.is_empty() {
            return Err(status(Error::from_problems(problems)));
        }
        let results = self.app.submit(specs).await.map_err(status)?;
        // As over REST: a conflicting id is reported on its own item.
        let out = results
            .into_iter()
            .map(|r| match r {
                Ok(s) => submitted(s),
                Err(e) => v1::SubmitTaskResponse {
                    task: None,
                    created: false,
                    error: Some(v1::ErrorReply {
                        code: e.code.as_str().into(),
                        message: e.message,
                    }),
                },
            })
            .collect();
        Ok(Response::new(v1::SubmitTasksResponse { results: out }))
    }

    async fn get_task(
        &self,
        req: Request<v1::GetTaskRequest>,
    ) -> Result<Response<v1::Task>, Status> {
        let task_id = req.into_inner().task_id;
        match self.app.get(&task_id).await {
            Ok(rec) => Ok(Response::new(task_proto(&rec, now_ms(), true))),
            // A task whose type is a flow is a run, as over REST.
            Err(e) if e.code == baton_core::ErrorCode::NotFound => {
                match self.app.flow_task_proto(&task_id).await.map_err(status)? {
                    Some(task) => Ok(Response::new(task)),
                    None => Err(status(e)),
                }
            }
            Err(e) => Err(status(e)),
        }
    }

    async fn list_tasks(
        &self,
        req: Request<v1::ListTasksRequest>,
    ) -> Result<Response<v1::ListTasksResponse>, Status> {
        let r = req.into_inner();
        let limit = (r.limit > 0).then_some(r.limit as usize);
        let page = self
            .app
            .list(Some(&r.status), Some(&r.task_type), limit, Some(r.cursor))
            .await
            .map_err(status)?;
        Ok(Response::new(list_proto(page)))
    }

    async fn cancel_task(
        &self,
        req: Request<v1::CancelTaskRequest>,
    ) -> Result<Response<v1::Task>, Status> {
        let r = req.into_inner();
        let rec = self
            .app
            .cancel(&r.task_id, (!r.reason.is_empty()).then_some(r.reason))
            .await
            .map_err(status)?;
        Ok(Response::new(task_proto(&rec, now_ms(), false)))
    }

    async fn list_agents(
        &self,
        _req: Request<v1::ListAgentsRequest>,
    ) -> Result<Response<v1::ListAgentsResponse>, Status> {
        let agents = self.app.agents().into_iter().map(agent_info).collect();
        Ok(Response::new(v1::ListAgentsResponse { agents }))
    }

    async fn discover_agents(
        &self,
        req: Request<v1::DiscoverAgentsRequest>,
    ) -> Result<Response<v1::DiscoverAgentsResponse>, Status> {
        let r = req.into_inner();
        let params = crate::rest_sched::DiscoverParams {
            capabilities: Some(r.capabilities.join(",")),
            min_health: r.min_health,
            version: Some(r.version),
            location: Some(r.location),
            agent_type: Some(r.agent_type),
            tags: Some(r.tags.join(",")),
            limit: Some(r.limit as usize),
        };
        let query = crate::rest_sched::query_of(&params).map_err(status)?;
        let agents = crate::rest_sched::discover(&self.app, &query)
            .agents
            .into_iter()
            .map(|d| v1::DiscoveredAgent {
                agent_id: d.agent_id,
                health: d.health,
                same_location: d.same_location,
                load: d.load,
                agent: Some(agent_info(d.agent)),
            })
            .collect();
        Ok(Response::new(v1::DiscoverAgentsResponse { agents }))
    }

    async fn list_dead_letters(
        &self,
        req: Request<v1::ListDeadLettersRequest>,
    ) -> Result<Response<v1::ListTasksResponse>, Status> {
        let r = req.into_inner();
        let limit = (r.limit > 0).then_some(r.limit as usize);
        let page = self
            .app
            .list(
                Some("dead_lettered"),
                Some(&r.task_type),
                limit,
                Some(r.cursor),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(list_proto(page)))
    }

    async fn reprocess_dead_letter(
        &self,
        req: Request<v1::ReprocessDeadLetterRequest>,
    ) -> Result<Response<v1::Task>, Status> {
        let rec = self
            .app
            .reprocess(&req.into_inner().task_id)
            .await
            .map_err(status)?;
        Ok(Response::new(task_proto(&rec, now_ms(), false)))
    }

    async fn health(
        &self,
        _req: Request<v1::HealthRequest>,
    ) -> Result<Response<v1::HealthResponse>, Status> {
        let doc = self.app.health().await;
        Ok(Response::new(v1::HealthResponse {
            healthy: doc["healthy"] == true,
            version: doc["version"].as_str().unwrap_or_default().into(),
            uptime_seconds: doc["uptime_seconds"].as_u64().unwrap_or(0),
            stats_json: doc["stats"].to_string(),
        }))
    }
}

#[derive(Clone)]
pub struct AgentApi {
    pub app: Arc<App>,
}

fn error_reply(e: &Error) -> v1::ServerMessage {
    v1::ServerMessage {
        msg: Some(v1::server_message::Msg::Error(v1::ErrorReply {
            code: e.code.as_str().into(),
            message: e.message.clone(),
        })),
    }
}

fn agent_info(a: crate::dispatcher::AgentInfo) -> v1::AgentInfo {
    v1::AgentInfo {
        agent_id: a.agent_id,
        task_types: a.task_types,
        version: a.version,
        max_concurrent: a.max_concurrent as u32,
        in_flight: a.in_flight as u32,
        labels: a.labels.into_iter().collect(),
        connected_at_ms: a.connected_at_ms,
        last_heartbeat_ms: a.last_heartbeat_ms,
        completed: a.completed,
        failed: a.failed,
        agent_type: a.agent_type,
        capabilities: a.capabilities,
        service_types: a.service_types,
        endpoint: a.endpoint,
        tags: a.tags,
        location: a.location.unwrap_or_default(),
        cost_factor: a.cost_factor,
        weight: a.weight,
        health: a.health,
        breaker: a.breaker,
        cpu_usage: a.cpu_usage,
        error_rate: a.error_rate,
        response_time_ms: a.response_time_ms,
    }
}

fn validate_register(
    reg: &v1::Register,
) -> Result<(AgentId, baton_core::sched::registry::Descriptor), Error> {
    let agent_id = AgentId::parse(reg.agent_id.clone())?;
    if reg.task_types.is_empty() {
        return Err(
            Error::invalid("register needs at least one task type").with_field("task_types")
        );
    }
    for t in &reg.task_types {
        baton_core::task::validate_task_type(t)
            .map_err(|m| Error::invalid(format!("task type {t:?} {m}")).with_field("task_types"))?;
    }
    if reg.max_concurrent == 0 || reg.max_concurrent > 100_000 {
        return Err(
            Error::invalid("max_concurrent must be between 1 and 100000")
                .with_field("max_concurrent"),
        );
    }
    let descriptor = crate::scheduler::descriptor_of(reg, agent_id.clone())?;
    Ok((agent_id, descriptor))
}

type ServerStream = Pin<Box<dyn futures::Stream<Item = Result<v1::ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl v1::agent_service_server::AgentService for AgentApi {
    type ConnectStream = ServerStream;

    async fn connect(
        &self,
        req: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the stream closed before register"))?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let reg = match first.msg {
            Some(Msg::Register(r)) => r,
            _ => {
                let e = Error::invalid("the first message on an agent stream must be register");
                let _ = tx.send(Ok(error_reply(&e)));
                return Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))));
            }
        };
        let (agent_id, descriptor) = match validate_register(&reg) {
            Ok(a) => a,
            Err(e) => {
                let _ = tx.send(Ok(error_reply(&e)));
                return Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))));
            }
        };
        let dispatcher = self.app.dispatcher.clone();
        let opts = dispatcher.options().clone();
        // Registered goes out before any assignment can.
        let session_id = uuid::Uuid::now_v7().to_string();
        let _ = tx.send(Ok(v1::ServerMessage {
            msg: Some(v1::server_message::Msg::Registered(v1::Registered {
                session_id: session_id.clone(),
                heartbeat_interval_ms: opts.heartbeat_interval_ms,
                lease_ms: opts.lease_ms,
            })),
        }));
        if let Err(e) = dispatcher.register(session_id.clone(), &reg, descriptor, tx.clone()) {
            let _ = tx.send(Ok(error_reply(&e)));
            return Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))));
        }
        tracing::info!(%agent_id, session_id, task_types = ?reg.task_types, max_concurrent = reg.max_concurrent, "agent connected");
        // Results are recorded by their own task, so that reading the stream (and
        // freeing slots) never waits for a commit, and frames that arrive during
        // one commit go to the store together in the next.
        let (results_tx, mut results_rx) = tokio::sync::mpsc::unbounded_channel::<PendingResults>();
        let recorder = {
            let dispatcher = dispatcher.clone();
            let session_id = session_id.clone();
            tokio::spawn(async move {
                while let Some(first) = results_rx.recv().await {
                    let mut batch = vec![first];
                    while let Ok(more) = results_rx.try_recv() {
                        batch.push(more);
                    }
                    dispatcher.record_results(&session_id, batch).await;
                }
            })
        };
        tokio::spawn(async move {
            let reason = loop {
                match inbound.message().await {
                    Ok(Some(m)) => match m.msg {
                        Some(Msg::Results(r)) => {
                            if let Some(pending) = dispatcher.accept_results(&session_id, r.results)
                            {
                                let _ = results_tx.send(pending);
                            }
                        }
                        Some(Msg::Heartbeat(hb)) => dispatcher.heartbeat(&session_id, &hb),
                        Some(Msg::Progress(p)) => dispatcher.accept_progress(&session_id, p.events),
                        Some(Msg::Drain(_)) => {
                            tracing::info!(%agent_id, session_id, "agent draining");
                            dispatcher.drain(&session_id)
                        }
                        Some(Msg::Register(_)) => {
                            let e = Error::invalid("register may only be sent once per stream");
                            let _ = tx.send(Ok(error_reply(&e)));
                        }
                        None => {}
                    },
                    Ok(None) => break "stream closed".to_string(),
                    Err(e) => break format!("stream error: {}", e.message()),
                }
            };
            // Results already taken are recorded before the session's attempts are released.
            drop(results_tx);
            let _ = recorder.await;
            dispatcher.disconnect(&session_id, &reason).await;
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}
