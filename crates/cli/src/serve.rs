//! `baton serve`, `baton dev` and `baton agent`.

use anyhow::{Context, Result};
use baton_server::config::{Config, Durability, LogFormat};
use clap::Args;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Args, Clone, Default)]
pub struct ServeArgs {
    /// TOML config file (fields as in `Config`); also BATON_CONFIG.
    #[arg(long, env = "BATON_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory of the embedded store [default: ./baton-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Shared store URL (postgres://user@host:port/db) instead of the embedded store; also BATON_STORE.
    #[arg(long)]
    store: Option<String>,
    /// PostgreSQL schema of the shared store [default: baton]; also BATON_STORE_SCHEMA.
    #[arg(long)]
    store_schema: Option<String>,
    /// REST listen address [default: 0.0.0.0:8080].
    #[arg(long)]
    http_addr: Option<String>,
    /// gRPC listen address [default: 0.0.0.0:50051, or GRPC_PORT].
    #[arg(long)]
    grpc_addr: Option<String>,
    /// full (fsync every group commit) or normal (survives a killed process, not a power loss).
    #[arg(long, value_parser = ["full", "normal"])]
    durability: Option<String>,
    /// Attempts running at once across all agents [default: 100, or MAX_WORKERS].
    #[arg(long)]
    max_workers: Option<usize>,
    /// Threads of the async runtime (HTTP, gRPC, scheduling) [default: 0, one
    /// less than the CPUs, at least one; or BATON_WORKER_THREADS].
    #[arg(long)]
    worker_threads: Option<usize>,
    /// trace, debug, info, warn or error [default: info, or LOG_LEVEL].
    #[arg(long)]
    log_level: Option<String>,
    /// text or json [default: text, or LOG_FORMAT].
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Prometheus metrics listen address, or off [default: 0.0.0.0:8000]; /metrics is also on the REST port.
    #[arg(long)]
    metrics_addr: Option<String>,
}

impl ServeArgs {
    fn overrides(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        if let Some(v) = &self.data_dir {
            m.insert("data_dir".into(), v.display().to_string().into());
        }
        if let Some(v) = &self.store {
            m.insert("store".into(), v.clone().into());
        }
        if let Some(v) = &self.store_schema {
            m.insert("store_schema".into(), v.clone().into());
        }
        if let Some(v) = &self.http_addr {
            m.insert("http_addr".into(), v.clone().into());
        }
        if let Some(v) = &self.grpc_addr {
            m.insert("grpc_addr".into(), v.clone().into());
        }
        if let Some(v) = &self.durability {
            m.insert("durability".into(), v.clone().into());
        }
        if let Some(v) = self.max_workers {
            m.insert("max_workers".into(), v.into());
        }
        if let Some(v) = self.worker_threads {
            m.insert("worker_threads".into(), v.into());
        }
        if let Some(v) = &self.log_level {
            m.insert("log_level".into(), v.clone().into());
        }
        if let Some(v) = &self.log_format {
            m.insert("log_format".into(), v.clone().into());
        }
        if let Some(v) = &self.metrics_addr {
            m.insert("metrics_addr".into(), v.clone().into());
        }
        m
    }

    /// The layered, validated config. `main` loads it before it builds the
    /// runtime, whose size it gives.
    pub fn load(&self) -> Result<Config> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Ok(Config::load(
            self.config.as_deref(),
            &env,
            self.overrides(),
        )?)
    }
}

/// Logs to stderr (text or JSON), and spans to OpenTelemetry when `otel` is given.
pub fn init_logging(
    level: &str,
    format: LogFormat,
    otel: Option<(&opentelemetry_sdk::trace::SdkTracerProvider, &'static str)>,
) {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let level = if level.eq_ignore_ascii_case("warning") {
        "warn".to_string()
    } else {
        level.to_ascii_lowercase()
    };
    let filter =
        tracing_subscriber::EnvFilter::try_new(format!("{level},h2=warn,hyper=warn,tower=warn"))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let otel_layer = otel.map(|(provider, name)| {
        opentelemetry::global::set_tracer_provider(provider.clone());
        baton_server::telemetry::enable();
        tracing_opentelemetry::layer().with_tracer(provider.tracer(name))
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel_layer)
        .try_init();
    if let Some(e) = crate::THP_OFF_ERROR.get() {
        tracing::warn!(error = %e, "cannot turn transparent huge pages off: memory freed and touched again may come back as zeroed 2 MiB pages (slower, not wrong)");
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Binds, prints the addresses (tests and scripts read this line), and serves.
async fn start(cfg: Config, with_agents: Option<(usize, Vec<String>)>) -> Result<()> {
    let otel = crate::telemetry::from_env("baton-orchestrator", false)?;
    init_logging(
        &cfg.log_level,
        cfg.log_format,
        otel.as_ref().map(|p| (p, "baton-orchestrator")),
    );
    let result = serve_until_stopped(cfg, with_agents).await;
    crate::telemetry::shutdown(otel).await;
    result
}

async fn serve_until_stopped(cfg: Config, with_agents: Option<(usize, Vec<String>)>) -> Result<()> {
    let store = baton_server::open_store(&cfg).await?;
    let listeners = baton_server::Listeners::bind(&cfg).await?;
    let (http, grpc) = listeners.addrs()?;
    let metrics = match listeners.metrics_addr()? {
        Some(addr) => addr.to_string(),
        None => "off".into(),
    };
    println!(
        "baton listening http={http} grpc={grpc} metrics={metrics} data_dir={}",
        cfg.data_dir.display()
    );
    if cfg.durability == Durability::Normal {
        tracing::warn!(
            "durability=normal: accepted tasks survive a killed process but not a power loss"
        );
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let agents = with_agents.map(|(concurrency, types)| {
        let grpc_url = format!("http://{}", loopback(grpc));
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            let stop = async move {
                let _ = rx.changed().await;
            };
            let descriptor = Descriptor {
                agent_type: Some(BUILTIN_AGENT_TYPE.into()),
                ..Descriptor::default()
            };
            if let Err(e) = run_builtin_agent(
                vec![grpc_url],
                types,
                concurrency,
                None,
                descriptor,
                Box::pin(stop),
            )
            .await
            {
                tracing::error!(error = %e, "built-in agents stopped");
            }
        })
    });
    let server = baton_server::run(cfg, store, listeners, async move {
        shutdown_signal().await;
    });
    let result = server.await;
    let _ = stop_tx.send(true);
    if let Some(a) = agents {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), a).await;
    }
    result
}

fn loopback(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    if addr.ip().is_unspecified() {
        std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    }
}

/// `baton serve`, with the config its [`ServeArgs`] loaded.
pub async fn serve(cfg: Config) -> Result<()> {
    start(cfg, None).await
}

#[derive(Args, Clone)]
pub struct DevArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// Concurrency of the built-in agents.
    #[arg(long, default_value_t = 64)]
    agent_concurrency: usize,
}

impl DevArgs {
    pub fn load(&self) -> Result<Config> {
        self.serve.load()
    }
}

/// `baton dev`, with the config its [`DevArgs`] loaded.
pub async fn dev(cfg: Config, args: DevArgs) -> Result<()> {
    let types = baton_agents::builtin_types()
        .into_iter()
        .map(str::to_string)
        .collect();
    start(cfg, Some((args.agent_concurrency, types))).await
}

#[derive(Args, Clone)]
pub struct AgentArgs {
    /// Built-in agent type(s) to serve: echo, sleep, fail, data_ingest, data_analysis,
    /// synthesis, report_generation, video_detection, alerting, real_time_monitoring,
    /// api_caller, and llm when BATON_LLM_BASE_URL or an API key is set (repeatable;
    /// also AGENT_TYPE, comma-separated).
    #[arg(
        long = "type",
        env = "AGENT_TYPE",
        value_delimiter = ',',
        required = true
    )]
    types: Vec<String>,
    /// Orchestrator gRPC URL(s); the agent moves to the next when one goes away.
    #[arg(
        long,
        env = "BATON_ORCHESTRATOR",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:50051"
    )]
    orchestrator: Vec<String>,
    /// Tasks handled at once (also MAX_CONCURRENT_TASKS).
    #[arg(long, env = "MAX_CONCURRENT_TASKS", default_value_t = 16)]
    concurrency: usize,
    /// Agent id [default: generated].
    #[arg(long)]
    agent_id: Option<String>,
    /// The agent's kind, for per-type cost budgets, `type:` routing rules and
    /// discovery [default: the first --type].
    #[arg(long)]
    agent_type: Option<String>,
    /// The agent's semantic version, matched by discovery's version ranges
    /// [default: baton's own version].
    #[arg(long = "agent-version", visible_alias = "version")]
    agent_version: Option<String>,
    /// A label for `tag:` routing rules and discovery (repeatable, or comma-separated).
    #[arg(long = "tag", value_delimiter = ',')]
    tags: Vec<String>,
    /// A `key=value` label that tasks' `resources` requirements are matched
    /// against (`gpu=1`, `memory_mb=16384`, `zone=eu`; repeatable, or
    /// comma-separated; also AGENT_LABELS).
    #[arg(long = "label", env = "AGENT_LABELS", value_delimiter = ',', value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Region or zone (us-east-1), preferred by discovery queries that name it.
    #[arg(long)]
    location: Option<String>,
    /// Price of an hour of this agent's work, for cost-based routing and cost
    /// budgets [default: 1].
    #[arg(long, allow_negative_numbers = true)]
    cost_factor: Option<f64>,
    /// Share of work under the weighted routing strategies [default: 1].
    #[arg(long, allow_negative_numbers = true)]
    weight: Option<f64>,
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], ignore_case = true)]
    log_format: String,
    /// Threads of the async runtime; 0: one less than the CPUs, at least one.
    #[arg(long, env = "BATON_WORKER_THREADS", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=baton_server::config::MAX_WORKER_THREADS as i64))]
    pub worker_threads: u16,
}

pub async fn agent(args: AgentArgs) -> Result<()> {
    let format = if args.log_format.eq_ignore_ascii_case("json") {
        LogFormat::Json
    } else {
        LogFormat::Text
    };
    let otel = crate::telemetry::from_env("baton-agent", true)?;
    init_logging(
        &args.log_level,
        format,
        otel.as_ref().map(|p| (p, "baton-agent")),
    );
    let result = agent_until_stopped(args).await;
    crate::telemetry::shutdown(otel).await;
    result
}

async fn agent_until_stopped(args: AgentArgs) -> Result<()> {
    let known = baton_agents::builtin_types();
    for t in &args.types {
        if t == "llm" && !known.contains(&"llm") {
            anyhow::bail!(
                "agent type \"llm\" needs an LLM: set BATON_LLM_BASE_URL and/or BATON_LLM_API_KEY (or OPENAI_BASE_URL / OPENAI_API_KEY), and BATON_LLM_MODEL"
            );
        }
        if !known.contains(&t.as_str()) {
            anyhow::bail!(
                "unknown agent type {t:?}: built-in types are {}",
                known.join(", ")
            );
        }
    }
    if args.concurrency == 0 {
        anyhow::bail!("--concurrency must be at least 1");
    }
    let descriptor = Descriptor {
        agent_type: args.agent_type,
        version: args
            .agent_version
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").into()),
        tags: args.tags,
        labels: args.labels,
        location: args.location,
        cost_factor: args.cost_factor,
        weight: args.weight,
    };
    run_builtin_agent(
        args.orchestrator,
        args.types,
        args.concurrency,
        args.agent_id,
        descriptor,
        Box::pin(shutdown_signal()),
    )
    .await
}

/// The agent type `baton dev`'s in-process agents declare: one agent serving
/// every built-in task type.
const BUILTIN_AGENT_TYPE: &str = "baton-builtin";

/// Seed 004's descriptor fields a built-in agent declares; the SDK builder
/// validates them.
struct Descriptor {
    agent_type: Option<String>,
    version: String,
    tags: Vec<String>,
    labels: Vec<(String, String)>,
    location: Option<String>,
    cost_factor: Option<f64>,
    weight: Option<f64>,
}

fn parse_label(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("{raw:?} is not key=value")),
    }
}

impl Default for Descriptor {
    fn default() -> Self {
        Self {
            agent_type: None,
            version: env!("CARGO_PKG_VERSION").into(),
            tags: Vec::new(),
            labels: Vec::new(),
            location: None,
            cost_factor: None,
            weight: None,
        }
    }
}

async fn run_builtin_agent(
    endpoints: Vec<String>,
    types: Vec<String>,
    concurrency: usize,
    agent_id: Option<String>,
    descriptor: Descriptor,
    stop: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) -> Result<()> {
    let mut builder = baton_sdk::Agent::builder(endpoints)
        .max_concurrent(concurrency.min(u32::MAX as usize) as u32)
        .version(descriptor.version);
    for t in &types {
        builder = builder.task_type(t.clone());
    }
    if let Some(id) = agent_id {
        builder = builder.agent_id(id);
    }
    if let Some(agent_type) = descriptor.agent_type {
        builder = builder.agent_type(agent_type);
    }
    for tag in descriptor.tags {
        builder = builder.tag(tag);
    }
    for (k, v) in descriptor.labels {
        builder = builder.label(k, v);
    }
    if let Some(location) = descriptor.location {
        builder = builder.location(location);
    }
    if let Some(cost_factor) = descriptor.cost_factor {
        builder = builder.cost_factor(cost_factor);
    }
    if let Some(weight) = descriptor.weight {
        builder = builder.weight(weight);
    }
    builder
        .run_until(baton_agents::builtin(), stop)
        .await
        .context("agent failed")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        agent: AgentArgs,
    }

    fn parse(args: &[&str]) -> AgentArgs {
        let argv = ["baton-agent", "--type", "echo"].iter().chain(args);
        Cmd::try_parse_from(argv).unwrap().agent
    }

    #[test]
    fn descriptor_flags_parse() {
        let a = parse(&[
            "--agent-type",
            "summarizer",
            "--tag",
            "gpu,eu",
            "--tag",
            "prod",
            "--location",
            "eu-west-1",
            "--cost-factor",
            "-1",
            "--weight",
            "2.5",
            "--version",
            "1.2.3",
            "--label",
            "gpu=1,zone=eu",
            "--label",
            "memory_mb=4096",
        ]);
        assert_eq!(
            a.labels,
            [("gpu", "1"), ("zone", "eu"), ("memory_mb", "4096")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert!(Cmd::try_parse_from(["baton-agent", "--type", "echo", "--label", "gpu"]).is_err());
        assert_eq!(a.agent_type.as_deref(), Some("summarizer"));
        assert_eq!(a.tags, ["gpu", "eu", "prod"]);
        assert_eq!(a.location.as_deref(), Some("eu-west-1"));
        // Parsed as given: the SDK builder refuses it with its own message.
        assert_eq!(a.cost_factor, Some(-1.0));
        assert_eq!(a.weight, Some(2.5));
        assert_eq!(a.agent_version.as_deref(), Some("1.2.3"));
        assert_eq!(
            parse(&["--agent-version", "2.0.0"])
                .agent_version
                .as_deref(),
            Some("2.0.0")
        );
        let none = parse(&[]);
        assert!(none.agent_type.is_none() && none.tags.is_empty() && none.weight.is_none());
    }

    #[tokio::test]
    async fn bad_descriptors_stop_the_agent_before_it_connects() {
        for (descriptor, want) in [
            (
                Descriptor {
                    weight: Some(-1.0),
                    ..Descriptor::default()
                },
                "weight must be a finite number of at least 0, got -1",
            ),
            (
                Descriptor {
                    cost_factor: Some(f64::NAN),
                    ..Descriptor::default()
                },
                "cost_factor",
            ),
            (
                Descriptor {
                    version: "latest".into(),
                    ..Descriptor::default()
                },
                "version \"latest\" is not a semantic version",
            ),
        ] {
            // Port 1: nothing listens, and validation must fail before any connect.
            let err = run_builtin_agent(
                vec!["http://127.0.0.1:1".into()],
                vec!["echo".into()],
                1,
                None,
                descriptor,
                Box::pin(std::future::pending()),
            )
            .await
            .unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains(want), "{msg:?} should mention {want:?}");
        }
    }

    #[test]
    fn dev_agents_declare_a_semver_version() {
        let d = Descriptor::default();
        assert!(baton_core::sched::registry::parse_version(&d.version).is_ok());
    }
}
