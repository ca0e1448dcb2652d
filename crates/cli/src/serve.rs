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
    /// trace, debug, info, warn or error [default: info, or LOG_LEVEL].
    #[arg(long)]
    log_level: Option<String>,
    /// text or json.
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
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
        if let Some(v) = &self.log_level {
            m.insert("log_level".into(), v.clone().into());
        }
        if let Some(v) = &self.log_format {
            m.insert("log_format".into(), v.clone().into());
        }
        m
    }

    fn load(&self) -> Result<Config> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Ok(Config::load(
            self.config.as_deref(),
            &env,
            self.overrides(),
        )?)
    }
}

pub fn init_logging(level: &str, format: LogFormat) {
    let level = if level.eq_ignore_ascii_case("warning") {
        "warn".to_string()
    } else {
        level.to_ascii_lowercase()
    };
    let filter =
        tracing_subscriber::EnvFilter::try_new(format!("{level},h2=warn,hyper=warn,tower=warn"))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
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
    init_logging(&cfg.log_level, cfg.log_format);
    let store = baton_server::open_store(&cfg).await?;
    let listeners = baton_server::Listeners::bind(&cfg).await?;
    let (http, grpc) = listeners.addrs()?;
    println!(
        "baton listening http={http} grpc={grpc} data_dir={}",
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
            if let Err(e) =
                run_builtin_agent(vec![grpc_url], types, concurrency, None, Box::pin(stop)).await
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

pub async fn serve(args: ServeArgs) -> Result<()> {
    let cfg = args.load()?;
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

pub async fn dev(args: DevArgs) -> Result<()> {
    let cfg = args.serve.load()?;
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
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    log_level: String,
}

pub async fn agent(args: AgentArgs) -> Result<()> {
    init_logging(&args.log_level, LogFormat::Text);
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
    run_builtin_agent(
        args.orchestrator,
        args.types,
        args.concurrency,
        args.agent_id,
        Box::pin(shutdown_signal()),
    )
    .await
}

async fn run_builtin_agent(
    endpoints: Vec<String>,
    types: Vec<String>,
    concurrency: usize,
    agent_id: Option<String>,
    stop: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) -> Result<()> {
    let mut builder = baton_sdk::Agent::builder(endpoints)
        .max_concurrent(concurrency.min(u32::MAX as usize) as u32)
        .version(env!("CARGO_PKG_VERSION"));
    for t in &types {
        builder = builder.task_type(t.clone());
    }
    if let Some(id) = agent_id {
        builder = builder.agent_id(id);
    }
    builder
        .run_until(baton_agents::builtin(), stop)
        .await
        .context("agent failed")?;
    Ok(())
}
