//! Test support: start the real `baton` binary on port 0 with a fresh data
//! directory, start real agent processes, talk to it over HTTP like a user.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BATON: &str = env!("CARGO_BIN_EXE_baton");

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("baton-e2e-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Server {
    pub child: Child,
    pub http: String,
    pub grpc: String,
    pub http_addr: String,
    pub grpc_addr: String,
    /// The metrics port's base URL (`http://127.0.0.1:PORT`), unless turned off.
    pub metrics: Option<String>,
}

/// `baton serve` on free ports with this data directory, for a test that
/// watches the process itself (its exit, its stderr) rather than use [`Server`].
pub fn serve_command(data_dir: &Path) -> Command {
    let mut cmd = Command::new(BATON);
    cmd.args([
        "serve",
        "--http-addr",
        "127.0.0.1:0",
        "--grpc-addr",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(data_dir);
    cmd
}

impl Server {
    /// Starts `baton serve` on the given addresses (use 127.0.0.1:0 for any port).
    pub fn start_on(data_dir: &Path, http_addr: &str, grpc_addr: &str, extra: &[&str]) -> Server {
        Self::start_with_env(data_dir, http_addr, grpc_addr, extra, &[])
    }

    pub fn start_with_env(
        data_dir: &Path,
        http_addr: &str,
        grpc_addr: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let mut child = Command::new(BATON)
            // Never the default port 8000: tests run in parallel.
            .env("BATON_METRICS_ADDR", "127.0.0.1:0")
            .envs(env.iter().copied())
            .args([
                "serve",
                "--http-addr",
                http_addr,
                "--grpc-addr",
                grpc_addr,
                "--log-level",
                "info",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env_remove("GRPC_PORT")
            .env_remove("MAX_WORKERS")
            .env_remove("LOG_LEVEL")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start baton serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                .to_string()
        };
        let (http_addr, grpc_addr) = (field("http"), field("grpc"));
        let metrics = Some(field("metrics"))
            .filter(|m| m != "off")
            .map(|m| format!("http://{m}"));
        Server {
            metrics,
            child,
            http: format!("http://{http_addr}"),
            grpc: format!("http://{grpc_addr}"),
            http_addr,
            grpc_addr,
        }
    }

    pub fn start(data_dir: &Path) -> Server {
        Self::start_on(data_dir, "127.0.0.1:0", "127.0.0.1:0", &[])
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct AgentProc(pub Child);

impl AgentProc {
    pub fn start(grpc: &str, types: &str, concurrency: usize, id: &str) -> AgentProc {
        Self::start_with_env(grpc, types, concurrency, id, &[])
    }

    pub fn start_with_env(
        grpc: &str,
        types: &str,
        concurrency: usize,
        id: &str,
        env: &[(&str, &str)],
    ) -> AgentProc {
        Self::spawn(grpc, types, concurrency, id, env, &[])
    }

    /// With extra `baton agent` flags.
    pub fn start_args(
        grpc: &str,
        types: &str,
        concurrency: usize,
        id: &str,
        args: &[&str],
    ) -> AgentProc {
        Self::spawn(grpc, types, concurrency, id, &[], args)
    }

    fn spawn(
        grpc: &str,
        types: &str,
        concurrency: usize,
        id: &str,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> AgentProc {
        let child = Command::new(BATON)
            .envs(env.iter().copied())
            .args([
                "agent",
                "--type",
                types,
                "--orchestrator",
                grpc,
                "--agent-id",
                id,
            ])
            .args([
                "--concurrency",
                &concurrency.to_string(),
                "--log-level",
                "info",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start baton agent");
        AgentProc(child)
    }

    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig} failed");
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Api {
    pub fn new(base: &str) -> Api {
        Api {
            base: base.to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        }
    }

    pub async fn raw(&self, method: reqwest::Method, path: &str, body: Option<Vec<u8>>) -> Resp {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.expect("request reaches the server");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Resp {
            status,
            body,
            headers,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.raw(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        self.raw(
            reqwest::Method::POST,
            path,
            Some(serde_json::to_vec(body).unwrap()),
        )
        .await
    }

    pub async fn submit(&self, task: Value) -> Value {
        let r = self.post("/api/v1/tasks", &task).await;
        assert!(
            r.status == 201 || r.status == 200,
            "submit failed: {} {}",
            r.status,
            r.body
        );
        r.body
    }

    /// Waits (long-polling) until the task reaches a terminal status.
    pub async fn wait_done(&self, task_id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "task {task_id} did not finish within {within:?}"
            );
            let r = self
                .get(&format!(
                    "/api/v1/tasks/{task_id}?wait_ms={}",
                    left.as_millis().min(20_000)
                ))
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
            if matches!(
                r.body["status"].as_str(),
                Some("completed" | "failed" | "cancelled" | "dead_lettered")
            ) {
                return r.body;
            }
        }
    }

    /// Polls until `check` holds for the task.
    pub async fn wait_for(
        &self,
        task_id: &str,
        within: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let r = self.get(&format!("/api/v1/tasks/{task_id}")).await;
            if r.status == 200 && check(&r.body) {
                return r.body;
            }
            assert!(
                Instant::now() < deadline,
                "task {task_id} never reached the expected state: {}",
                r.body
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_agents(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(resp) = self
                .http
                .get(format!("{}/api/v1/agents", self.base))
                .send()
                .await
            {
                if let Ok(v) = resp.json::<Value>().await {
                    if v["agents"].as_array().map_or(0, |a| a.len()) >= n {
                        return;
                    }
                }
            }
            assert!(Instant::now() < deadline, "{n} agents did not connect");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(resp) = self.http.get(format!("{}/health", self.base)).send().await {
                if resp.status().as_u16() == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "server did not become healthy");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

pub fn echo(id: &str) -> Value {
    json!({"task_id": id, "task_type": "echo", "inputs": [{"type": "text", "data": "hello"}]})
}

/// Reads a server-sent event stream until the server closes it (at most `within`),
/// returning every event in arrival order.
pub async fn read_events(
    base: &str,
    path: &str,
    within: Duration,
) -> Vec<baton_agents::sse::SseEvent> {
    let mut resp = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .send()
        .await
        .expect("the event stream opens");
    assert_eq!(resp.status().as_u16(), 200, "{path}");
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"),
        "{:?}",
        resp.headers()
    );
    let mut parser = baton_agents::sse::SseParser::default();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("{path} did not end within {within:?}; got {events:?}"))
            .expect("the stream reads");
        match chunk {
            Some(bytes) => events.extend(parser.push(&bytes)),
            None => {
                events.extend(parser.finish());
                return events;
            }
        }
    }
}

/// The name of an event (`message` when it has none).
pub fn event_name(e: &baton_agents::sse::SseEvent) -> &str {
    e.event.as_deref().unwrap_or("message")
}

/// An event's data as JSON.
pub fn event_data(e: &baton_agents::sse::SseEvent) -> Value {
    serde_json::from_str(&e.data).unwrap_or_else(|_| panic!("event data is not json: {e:?}"))
}

/// Polls a workflow run (with outputs) until `check` holds, for up to 60 s.
pub async fn wait_run(api: &Api, run_id: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = api
            .get(&format!("/api/v1/runs/{run_id}?include_outputs=true"))
            .await;
        if r.status == 200 && check(&r.body) {
            return r.body;
        }
        assert!(
            Instant::now() < deadline,
            "run {run_id} never reached the expected state: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the run is no longer running, paused or compensating.
pub async fn wait_finished(api: &Api, run_id: &str) -> Value {
    wait_run(api, run_id, |r| {
        !matches!(
            r["status"].as_str(),
            Some("running" | "paused" | "compensating")
        )
    })
    .await
}

/// One step of a run view, by id.
pub fn step<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no step {id} in {run}"))
}

/// Runs the `baton` CLI against `server`: (succeeded, stdout, stderr).
pub fn baton(server: &Server, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BATON)
        .args(args)
        .env("BATON_SERVER", &server.http)
        .output()
        .expect("run baton");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A gRPC channel to the server under test.
pub async fn grpc_channel(server: &Server) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(server.grpc.clone())
        .unwrap()
        .connect()
        .await
        .expect("grpc connects")
}

/// The next message on an agent stream, within 10 s.
pub async fn next_msg(
    stream: &mut tonic::Streaming<baton_proto::v1::ServerMessage>,
) -> baton_proto::v1::server_message::Msg {
    use tokio_stream::StreamExt;
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a message within 10 s")
        .unwrap()
        .unwrap()
        .msg
        .unwrap()
}

/// The kinds of a task's events, in order.
pub fn event_kinds(task: &Value) -> Vec<&str> {
    task["events"]
        .as_array()
        .map(|events| events.iter().filter_map(|e| e["kind"].as_str()).collect())
        .unwrap_or_default()
}
