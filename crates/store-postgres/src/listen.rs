//! The work listener: one dedicated connection per store that `LISTEN`s on
//! [`WORK_CHANNEL`] and broadcasts each task type it hears of, reconnecting with
//! backoff when the connection drops.
//!
//! Every time it (re)establishes `LISTEN`, it also announces every type that has
//! queued tasks right then: notifications sent while no `LISTEN` was active are
//! lost, and this way a subscriber misses no work queued before it subscribed or
//! while the listener was away.

use crate::codec::describe;
use crate::tasks::{QUEUED_TYPES, WORK_CHANNEL};
use std::time::Duration;
use tokio::sync::{broadcast, oneshot};
use tokio_postgres::{AsyncMessage, NoTls};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Task types a subscriber may fall behind by before it sees `Lagged`.
pub(crate) const CAPACITY: usize = 1024;

/// A running listener; it stops when this is dropped.
pub(crate) struct Listener {
    pub(crate) sender: broadcast::Sender<String>,
    _stop: oneshot::Sender<()>,
}

impl Listener {
    pub(crate) fn spawn(
        mut config: tokio_postgres::Config,
        runtime: &tokio::runtime::Handle,
    ) -> Self {
        // Told apart from the pool's connections in `pg_stat_activity`.
        let name = config.get_application_name().unwrap_or("baton").to_string();
        config.application_name(format!("{name} listener"));
        let (sender, _) = broadcast::channel(CAPACITY);
        let (stop, stopped) = oneshot::channel();
        runtime.spawn(run(config, sender.clone(), stopped));
        Listener {
            sender,
            _stop: stop,
        }
    }
}

async fn run(
    config: tokio_postgres::Config,
    sender: broadcast::Sender<String>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let reason = tokio::select! {
            _ = &mut stopped => return,
            reason = listen(&config, &sender, &mut backoff) => reason,
        };
        tracing::warn!(error = %reason, retry_in = ?backoff, "postgres work listener lost its connection");
        tokio::select! {
            _ = &mut stopped => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: connect, `LISTEN`, announce queued types, then forward
/// notifications until the connection fails. Returns why it ended.
async fn listen(
    config: &tokio_postgres::Config,
    sender: &broadcast::Sender<String>,
    backoff: &mut Duration,
) -> String {
    let (client, mut connection) = match config.connect(NoTls).await {
        Ok(pair) => pair,
        Err(e) => return describe(&e),
    };
    // The connection must be polled for the client's queries to make progress, and
    // it is also where notifications arrive.
    let forward = async {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == WORK_CHANNEL => {
                    // No receiver right now is fine: nobody is waiting for work.
                    let _ = sender.send(n.payload().to_string());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return describe(&e),
                None => return "the connection closed".to_string(),
            }
        }
    };
    let setup = async {
        client
            .batch_execute(&format!("LISTEN {WORK_CHANNEL}"))
            .await?;
        client.query(QUEUED_TYPES, &[]).await
    };
    tokio::pin!(forward);
    let queued = tokio::select! {
        reason = &mut forward => return reason,
        queued = setup => queued,
    };
    match queued {
        Ok(rows) => {
            for row in rows {
                match row.try_get::<_, String>(0) {
                    Ok(task_type) => {
                        let _ = sender.send(task_type);
                    }
                    Err(e) => return describe(&e),
                }
            }
        }
        Err(e) => return describe(&e),
    }
    tracing::debug!("postgres work listener is listening");
    *backoff = FIRST_BACKOFF;
    let reason = forward.await;
    drop(client);
    reason
}
