//! The gRPC `Workflows` service: flows and runs with the operations, validation
//! and errors of the REST API (`rest_runs`). Each request is turned into the JSON a
//! REST client would send and read by the same parser, so the same bad input gets
//! the same code, message and details on both; documents travel as JSON text.

use crate::app::App;
use crate::rest_runs::{run_filter, started_view, stored_summary};
use crate::workflows::{RegisterRequest, StartRequest, Watched};
use baton_core::workflow::RunCommand;
use baton_core::Error;
use baton_proto::v1;
use serde_json::{json, Map, Value};
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

fn status(e: impl Into<Error>) -> Status {
    baton_proto::to_status(&e.into())
}

#[derive(Clone)]
pub struct WorkflowsApi {
    pub app: Arc<App>,
}

/// Parses a `*_json` field; empty means absent.
fn json_field(raw: &str, field: &str) -> Result<Option<Value>, Error> {
    if raw.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(raw)
        .map(Some)
        .map_err(|e| Error::invalid(format!("{field} is not valid json: {e}")).with_field(field))
}

/// The REST body of `POST /api/v1/runs` for a gRPC start request.
fn start_body(r: v1::StartRunRequest) -> Result<Value, Error> {
    let mut obj = Map::new();
    if !r.run_id.is_empty() {
        obj.insert("run_id".into(), r.run_id.into());
    }
    if !r.flow.is_empty() {
        obj.insert("flow".into(), r.flow.into());
    }
    if r.version > 0 {
        obj.insert("version".into(), r.version.into());
    }
    if let Some(d) = json_field(&r.definition_json, "definition_json")? {
        obj.insert("definition".into(), d);
    }
    if let Some(i) = json_field(&r.input_json, "input_json")? {
        obj.insert("input".into(), i);
    }
    if !r.priority.trim().is_empty() {
        let p = r.priority.trim();
        obj.insert(
            "priority".into(),
            p.parse::<i64>()
                .map(Into::into)
                .unwrap_or_else(|_| p.into()),
        );
    }
    if !r.on_failure.is_empty() {
        obj.insert("on_failure".into(), r.on_failure.into());
    }
    if !r.execution_mode.is_empty() {
        obj.insert("execution_mode".into(), r.execution_mode.into());
    }
    Ok(Value::Object(obj))
}

fn start_request(r: v1::StartRunRequest) -> Result<StartRequest, Error> {
    StartRequest::from_json(&start_body(r)?)
}

fn flow_proto(f: &baton_store::FlowRecord) -> v1::Flow {
    v1::Flow {
        name: f.name.clone(),
        version: f.version,
        created_at_ms: f.created_at_ms,
        definition_json: f.definition.to_string(),
    }
}

/// A run message around its REST view.
fn run_proto(view: Value) -> v1::Run {
    let count = |k: &str| view["progress"][k].as_u64().unwrap_or(0) as u32;
    v1::Run {
        run_id: view["run_id"].as_str().unwrap_or_default().into(),
        status: view["status"].as_str().unwrap_or_default().into(),
        steps_done: count("steps_done"),
        steps_total: count("steps_total"),
        run_json: view.to_string(),
    }
}

fn run_error(e: Error) -> v1::RunError {
    v1::RunError {
        code: e.code.as_str().into(),
        message: e.message,
        details_json: if e.details.is_null() {
            String::new()
        } else {
            e.details.to_string()
        },
    }
}

type EventStream = Pin<Box<dyn futures::Stream<Item = Result<v1::RunEvent, Status>> + Send>>;

impl WorkflowsApi {
    async fn command(&self, run_id: &str, cmd: RunCommand) -> Result<Response<v1::Run>, Status> {
        let run = self.app.engine.command(run_id, cmd).await.map_err(status)?;
        Ok(Response::new(run_proto(started_view(&self.app, &run))))
    }
}

#[tonic::async_trait]
impl v1::workflows_server::Workflows for WorkflowsApi {
    async fn register_flow(
        &self,
        req: Request<v1::RegisterFlowRequest>,
    ) -> Result<Response<v1::RegisterFlowResponse>, Status> {
        let r = req.into_inner();
        let definition = json_field(&r.definition_json, "definition_json")
            .map_err(status)?
            .ok_or_else(|| {
                status(Error::invalid("definition_json is required").with_field("definition_json"))
            })?;
        let mut body = json!({ "definition": definition });
        if !r.name.is_empty() {
            body["name"] = r.name.into();
        }
        if r.version > 0 {
            body["version"] = r.version.into();
        }
        let reg = RegisterRequest::from_json(&body).map_err(status)?;
        let (flow, created) = self
            .app
            .engine
            .register_flow(&reg.name, reg.version, reg.definition)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::RegisterFlowResponse {
            flow: Some(flow_proto(&flow)),
            created,
        }))
    }

    async fn list_flows(
        &self,
        _req: Request<v1::ListFlowsRequest>,
    ) -> Result<Response<v1::ListFlowsResponse>, Status> {
        let flows = self.app.engine.list_flows().await.map_err(status)?;
        Ok(Response::new(v1::ListFlowsResponse {
            flows: flows.iter().map(flow_proto).collect(),
        }))
    }

    async fn get_flow(
        &self,
        req: Request<v1::GetFlowRequest>,
    ) -> Result<Response<v1::Flow>, Status> {
        let r = req.into_inner();
        let flow = self
            .app
            .engine
            .get_flow(&r.name, (r.version > 0).then_some(r.version))
            .await
            .map_err(status)?;
        Ok(Response::new(flow_proto(&flow)))
    }

    async fn start_run(
        &self,
        req: Request<v1::StartRunRequest>,
    ) -> Result<Response<v1::StartRunResponse>, Status> {
        let start = start_request(req.into_inner()).map_err(status)?;
        let (run, created) = self.app.engine.start(start).await.map_err(status)?;
        Ok(Response::new(v1::StartRunResponse {
            run: Some(run_proto(started_view(&self.app, &run))),
            created,
            error: None,
        }))
    }

    async fn start_runs(
        &self,
        req: Request<v1::StartRunsRequest>,
    ) -> Result<Response<v1::StartRunsResponse>, Status> {
        let items = req.into_inner().runs;
        let requests = items.into_iter().map(start_request).collect();
        let outcomes = self
            .app
            .engine
            .start_batch(requests, self.app.max_batch_tasks)
            .await
            .map_err(status)?;
        let mut out = v1::StartRunsResponse::default();
        for outcome in outcomes {
            out.results.push(match outcome {
                Ok((run, created)) => {
                    if created {
                        out.created += 1;
                    } else {
                        out.existing += 1;
                    }
                    v1::StartRunResponse {
                        run: Some(run_proto(started_view(&self.app, &run))),
                        created,
                        error: None,
                    }
                }
                Err(e) => {
                    out.errors += 1;
                    v1::StartRunResponse {
                        run: None,
                        created: false,
                        error: Some(run_error(e)),
                    }
                }
            });
        }
        Ok(Response::new(out))
    }

    async fn get_run(&self, req: Request<v1::GetRunRequest>) -> Result<Response<v1::Run>, Status> {
        let r = req.into_inner();
        let (run, outputs) = self.app.engine.get(&r.run_id).await.map_err(status)?;
        let view = crate::view::run_view(
            &run,
            &outputs,
            &self.app.dispatcher.agents(),
            r.include_outputs,
        );
        Ok(Response::new(run_proto(view)))
    }

    async fn list_runs(
        &self,
        req: Request<v1::ListRunsRequest>,
    ) -> Result<Response<v1::ListRunsResponse>, Status> {
        let r = req.into_inner();
        let filter = run_filter(
            Some(r.status),
            Some(r.flow),
            (r.limit > 0).then_some(r.limit as usize),
            Some(r.cursor),
        )
        .map_err(status)?;
        let page = self.app.engine.list(filter).await.map_err(status)?;
        let runs = page
            .runs
            .iter()
            .map(|rec| {
                let summary = stored_summary(rec);
                v1::RunSummary {
                    run_id: rec.run_id.clone(),
                    flow: rec.flow_name.clone().unwrap_or_default(),
                    status: rec.status.clone(),
                    steps_done: summary.done as u32,
                    steps_total: summary.total as u32,
                    created_at_ms: rec.created_at_ms,
                    updated_at_ms: rec.updated_at_ms,
                    error: summary.error.unwrap_or_default(),
                }
            })
            .collect();
        Ok(Response::new(v1::ListRunsResponse {
            runs,
            next_cursor: page.next_cursor.unwrap_or_default(),
        }))
    }

    async fn cancel_run(&self, req: Request<v1::RunRef>) -> Result<Response<v1::Run>, Status> {
        let cmd = RunCommand::Cancel {
            reason: Some("cancelled by a client".into()),
        };
        self.command(&req.into_inner().run_id, cmd).await
    }

    async fn pause_run(&self, req: Request<v1::RunRef>) -> Result<Response<v1::Run>, Status> {
        self.command(&req.into_inner().run_id, RunCommand::Pause)
            .await
    }

    async fn resume_run(&self, req: Request<v1::RunRef>) -> Result<Response<v1::Run>, Status> {
        self.command(&req.into_inner().run_id, RunCommand::Resume)
            .await
    }

    async fn retry_run(&self, req: Request<v1::RunRef>) -> Result<Response<v1::Run>, Status> {
        self.command(&req.into_inner().run_id, RunCommand::Retry)
            .await
    }

    type WatchRunStream = EventStream;

    async fn watch_run(
        &self,
        req: Request<v1::WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        use futures::StreamExt;
        let run_id = req.into_inner().run_id;
        let watched = self.app.engine.watch(&run_id).await.map_err(status)?;
        let app = self.app.clone();
        let stream = watched.then(move |w| {
            let app = app.clone();
            let run_id = run_id.clone();
            async move {
                Ok(match w {
                    Watched::Event(e) => v1::RunEvent {
                        kind: e.kind.clone(),
                        event_json: serde_json::to_string(&e).unwrap_or_default(),
                        run: None,
                    },
                    Watched::Lagged(n) => v1::RunEvent {
                        kind: "lagged".into(),
                        event_json: json!({ "missed": n }).to_string(),
                        run: None,
                    },
                    Watched::End(final_status) => {
                        // The final state, with outputs, as GetRun shows it.
                        let run = match app.engine.get(&run_id).await {
                            Ok((run, outputs)) => run_proto(crate::view::run_view(
                                &run,
                                &outputs,
                                &app.dispatcher.agents(),
                                true,
                            )),
                            Err(e) => return Err(status(e)),
                        };
                        v1::RunEvent {
                            kind: "end".into(),
                            event_json: json!({ "status": final_status.as_str() }).to_string(),
                            run: Some(run),
                        }
                    }
                })
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
