//! The checkpointer: a thread with its own connection that copies the WAL back
//! into the database (`PRAGMA wal_checkpoint(PASSIVE)`), so that the writer never
//! does it inside a commit. A passive checkpoint never blocks the writer or the
//! readers; it does what it can and the next round does the rest.

use crate::codec::sql_error;
use crate::{schema, Options};
use baton_store::{Error, Result};
use rusqlite::Connection;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How often the WAL is checkpointed.
const INTERVAL: Duration = Duration::from_millis(250);

pub(crate) struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    pub(crate) fn start(db_path: &Path, options: &Options) -> Result<Checkpointer> {
        let conn = Connection::open(db_path).map_err(sql_error)?;
        schema::configure_reader(&conn, options)?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("baton-sqlite-ckpt".into())
            .spawn(move || run(conn, stop2))
            .map_err(|e| {
                Error::Unavailable(format!("cannot start the sqlite checkpointer: {e}"))
            })?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread after one last checkpoint.
    pub(crate) fn stop(mut self) {
        let (lock, cvar) = &*self.stop;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cvar.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn checkpoint(conn: &Connection) {
    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, i64>(2)?,
        ))
    }) {
        Ok((_, log_pages, done)) if log_pages > 0 => {
            tracing::trace!(log_pages, done, "wal checkpoint");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "wal checkpoint failed; will retry"),
    }
}

fn run(conn: Connection, stop: Arc<(Mutex<bool>, Condvar)>) {
    let (lock, cvar) = &*stop;
    loop {
        let stopped = {
            let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
            let (guard, _) = cvar
                .wait_timeout_while(guard, INTERVAL, |s| !*s)
                .unwrap_or_else(|p| p.into_inner());
            *guard
        };
        checkpoint(&conn);
        if stopped {
            return;
        }
    }
}
