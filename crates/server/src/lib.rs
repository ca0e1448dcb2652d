//! Baton's orchestrator: the only crate that spawns tasks and talks to the network.
//! [`run`] takes its listeners, its store and a shutdown future from the caller, so
//! tests bind port 0 and stop it cleanly; nothing here hard-codes a port.

pub mod app;
pub mod clock;
pub mod config;
pub mod dispatcher;
pub mod flow_tasks;
pub mod grpc;
pub mod grpc_runs;
mod input_refs;
pub mod leader;
pub mod metered_store;
pub mod metrics;
pub mod progress;
pub mod rest;
mod rest_events;
mod rest_runs;
mod rest_sched;
pub mod scheduler;
pub mod sla;
pub mod telemetry;
pub mod view;
pub mod workflows;

use anyhow::Context;
use baton_proto::v1;
use baton_store::Store;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

pub use config::Config;

/// The sockets the server serves on, bound by the caller.
pub struct Listeners {
    pub http: TcpListener,
    pub grpc: TcpListener,
    /// Prometheus metrics on a port of their own (seed 000: 8000), if configured.
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    pub async fn bind(cfg: &Config) -> anyhow::Result<Self> {
        let http = TcpListener::bind(cfg.http_addr)
            .await
            .with_context(|| format!("cannot listen on http_addr {}", cfg.http_addr))?;
        let grpc = TcpListener::bind(cfg.grpc_addr)
            .await
            .with_context(|| format!("cannot listen on grpc_addr {}", cfg.grpc_addr))?;
        let metrics = match cfg.metrics_socket().map_err(anyhow::Error::msg)? {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on metrics_addr {addr}"))?,
            ),
            None => None,
        };
        Ok(Self {
            http,
            grpc,
            metrics,
        })
    }

    /// Where metrics are served on their own port, if they are.
    pub fn metrics_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        Ok(match &self.metrics {
            Some(l) => Some(l.local_addr()?),
            None => None,
        })
    }

    pub fn addrs(&self) -> anyhow::Result<(SocketAddr, SocketAddr)> {
        Ok((self.http.local_addr()?, self.grpc.local_addr()?))
    }
}

/// Opens the store `cfg` names: PostgreSQL for a `postgres://` URL in `store`, else
/// the embedded store in `data_dir`. A shared store that cannot be reached is tried
/// again with backoff for `store_wait_ms` (it may be starting too), saying why each
/// time; a URL that does not parse is refused at once.
pub async fn open_store(cfg: &Config) -> anyhow::Result<Arc<dyn Store>> {
    match cfg.store.as_deref().map(str::trim) {
        None | Some("") => open_embedded_store(cfg),
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let options = baton_store_postgres::Options {
                schema: cfg.store_schema.clone(),
                ..Default::default()
            };
            let give_up = Instant::now() + Duration::from_millis(cfg.store_wait_ms);
            let mut delay = Duration::from_millis(250);
            loop {
                match baton_store_postgres::PgStore::connect(url, options.clone()).await {
                    Ok(store) => return Ok(Arc::new(store)),
                    Err(baton_store::Error::Unavailable(why))
                        if !why.starts_with("invalid postgres url")
                            && Instant::now() + delay < give_up =>
                    {
                        tracing::warn!(
                            retry_in_ms = delay.as_millis() as u64,
                            "cannot open the PostgreSQL store yet: {why}"
                        );
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e).context("cannot open the PostgreSQL store"))
                    }
                }
            }
        }
        Some(other) => anyhow::bail!(
            "unsupported store {other:?}: use postgres://user@host:port/database, or leave it unset for the embedded store"
        ),
    }
}

/// A name for this process in the leadership election: the embedded store has one
/// process, which keeps its name across restarts (so a restarted server leads at
/// once); on a shared store, the host name (a Kubernetes pod's name) and a random
/// suffix.
fn replica_id(store: &dyn Store) -> String {
    if store.exclusive() {
        return "embedded".into();
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "baton".into());
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    format!("{host}-{}", &suffix[suffix.len() - 8..])
}

/// Opens the embedded store configured by `cfg`.
pub fn open_embedded_store(cfg: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let options = baton_store_sqlite::Options {
        synchronous: match cfg.durability {
            config::Durability::Full => baton_store_sqlite::Synchronous::Full,
            config::Durability::Normal => baton_store_sqlite::Synchronous::Normal,
        },
        ..Default::default()
    };
    let store =
        baton_store_sqlite::SqliteStore::open(&cfg.data_dir, options).with_context(|| {
            format!(
                "cannot open the embedded store in {}",
                cfg.data_dir.display()
            )
        })?;
    Ok(Arc::new(store))
}

/// Accepted gRPC connections with Nagle's algorithm off: assignments and acks are
/// small frames that must not wait for a delayed ACK (about 40 ms each way).
fn incoming(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|stream| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
        })
    })
}

/// Runs the orchestrator until `shutdown` resolves.
pub async fn run(
    cfg: Config,
    store: Arc<dyn Store>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = metrics::Metrics::new(cfg.sla_window_s * 1000, clock::now_ms());
    let store = metered_store::MeteredStore::wrap(store, metrics.clone());
    let dispatcher = dispatcher::Dispatcher::new(
        store.clone(),
        dispatcher::Options {
            max_workers: cfg.max_workers,
            lease_ms: cfg.lease_ms,
            heartbeat_interval_ms: cfg.heartbeat_interval_ms,
            agent_timeout_ms: cfg.agent_timeout_ms,
            replica_id: replica_id(store.as_ref()),
            leader_lease_ms: cfg.leader_lease_ms,
            policies: scheduler::Policies::from_config(&cfg.scheduler)
                .map_err(|e| anyhow::anyhow!("scheduler: {}", e.message))?,
        },
        metrics.clone(),
    );
    dispatcher
        .recover(store.exclusive())
        .await
        .context("cannot recover state from the store")?;
    let engine = workflows::Engine::new(store.clone(), dispatcher.clone(), cfg.limits());
    engine
        .recover()
        .await
        .context("cannot resume workflow runs from the store")?;
    engine
        .register_builtin_flows()
        .await
        .context("cannot register the built-in flows")?;
    let app = Arc::new(app::App {
        store: store.clone(),
        dispatcher: dispatcher.clone(),
        limits: cfg.limits(),
        max_batch_tasks: cfg.max_batch_tasks,
        started: Instant::now(),
        engine: engine.clone(),
        sla_targets: cfg.sla_targets(),
        readiness: Default::default(),
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Work queued by other replicas wakes this one without polling.
    let notifications = store.work_notifications().map(|mut rx| {
        let dispatcher = dispatcher.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(task_type) => dispatcher.work_arrived([task_type.as_str()]),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        })
    });
    let dispatch_loop = tokio::spawn(dispatcher.clone().run(stop_rx.clone()));
    let maintenance = tokio::spawn(dispatcher.clone().maintain(stop_rx.clone()));
    let run_maintenance = tokio::spawn(engine.clone().maintain(stop_rx.clone()));

    let (http_addr, grpc_addr) = listeners.addrs()?;
    let metrics_addr = listeners.metrics_addr()?;
    let metrics_server = listeners.metrics.map(|listener| {
        let router = rest::metrics_router(app.clone());
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .await
        })
    });
    let router = rest::router(app.clone(), cfg.max_body_bytes);
    let mut http_stop = stop_rx.clone();
    let http = tokio::spawn(async move {
        use axum::serve::ListenerExt;
        let listener = listeners.http.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = http_stop.changed().await;
            })
            .await
    });
    let mut grpc_stop = stop_rx.clone();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(
                v1::baton_server::BatonServer::new(grpc::ClientApi { app: app.clone() })
                    .max_decoding_message_size(cfg.max_body_bytes),
            )
            .add_service(
                v1::workflows_server::WorkflowsServer::new(grpc_runs::WorkflowsApi {
                    app: app.clone(),
                })
                .max_decoding_message_size(cfg.max_body_bytes),
            )
            .add_service(
                v1::agent_service_server::AgentServiceServer::new(grpc::AgentApi {
                    app: app.clone(),
                })
                .max_decoding_message_size(cfg.max_body_bytes),
            )
            .serve_with_incoming_shutdown(incoming(listeners.grpc), async move {
                let _ = grpc_stop.changed().await;
            }),
    );
    let runtime_workers = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::info!(%http_addr, %grpc_addr, metrics_addr = ?metrics_addr, data_dir = %cfg.data_dir.display(), runtime_workers, "baton is serving");

    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    dispatcher.close_sessions();
    let grace = Duration::from_millis(cfg.shutdown_grace_ms);
    let _ = tokio::time::timeout(grace, async {
        let _ = http.await;
        let _ = grpc.await;
    })
    .await;
    if let Some(m) = metrics_server {
        m.abort();
    }
    dispatch_loop.abort();
    maintenance.abort();
    run_maintenance.abort();
    if let Some(n) = notifications {
        n.abort();
    }
    Ok(())
}
