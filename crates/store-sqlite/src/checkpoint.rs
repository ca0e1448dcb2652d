//! The checkpointer: a thread with a connection of its own that copies the WAL
//! into the database (PASSIVE checkpoints) every few milliseconds, so that the
//! writer does not. A checkpoint syncs the WAL and then the database file and
//! copies every page the WAL holds: done by the writer after a commit, as
//! SQLite does by default, it held up every transaction queued behind it for
//! as long, and those waits were the tail of a task's latency. The writer
//! still checkpoints once the WAL passes a far higher mark
//! ([`Options::wal_backstop_pages`](crate::Options)), so a checkpointer that cannot keep up with
//! a busy writer never lets the WAL grow without bound: the WAL restarts from
//! its start only after a checkpoint that copied all of it, at the start of
//! the writer's next transaction.

use crate::codec::sql_error;
use crate::Options;
use baton_store::Result;
use rusqlite::Connection;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

/// How often the checkpointer looks for frames to copy.
const INTERVAL: Duration = Duration::from_millis(10);

/// Stops (and joins) its thread when dropped.
pub(crate) struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    pub(crate) fn start(db_path: &Path, options: &Options) -> Result<Checkpointer> {
        let conn = Connection::open(db_path).map_err(sql_error)?;
        crate::schema::configure_checkpointer(&conn, options)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("baton-sqlite-checkpoint".into())
            .spawn(move || run(conn, stopped))
            .map_err(|e| {
                baton_store::Error::Unavailable(format!(
                    "cannot start the sqlite checkpoint thread: {e}"
                ))
            })?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("sqlite checkpoint thread panicked");
            }
        }
    }
}

fn run(conn: Connection, stopped: mpsc::Receiver<()>) {
    // Until the store drops the sender.
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
        let began = std::time::Instant::now();
        let checkpointed = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
        });
        crate::warn_if_slow("checkpoint", began, crate::SLOW_SYNC);
        if let Err(e) = checkpointed {
            tracing::debug!(error = %e, "sqlite checkpoint skipped");
        }
    }
    tracing::debug!("sqlite checkpointer stopped");
}
