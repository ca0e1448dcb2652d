//! Throwaway schemas for tests: `PgStore::connect_temp` makes one with a unique
//! name, and it is dropped with the store. Schemas left behind by a process that
//! was killed are swept by the next `connect_temp`, once they are an hour old.

use crate::codec::describe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_postgres::NoTls;

/// Prefix of every temporary schema: `baton_test_<unix seconds>_<pid>_<n>`.
pub const TEMP_SCHEMA_PREFIX: &str = "baton_test_";
/// Temporary schemas older than this are taken as abandoned.
const STALE_AFTER: Duration = Duration::from_secs(3600);
/// How long dropping a schema may hold up the drop of its store.
const DROP_TIMEOUT: Duration = Duration::from_secs(15);

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A schema name no other test, process or run uses.
pub(crate) fn unique_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{TEMP_SCHEMA_PREFIX}{}_{}_{}_{nanos}",
        unix_seconds(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// When the schema was made, from its name; `None` if it is not one of ours.
fn created_at(name: &str) -> Option<u64> {
    name.strip_prefix(TEMP_SCHEMA_PREFIX)?
        .split('_')
        .next()?
        .parse()
        .ok()
}

/// Drops temporary schemas older than an hour (left by killed test processes).
pub(crate) async fn sweep(client: &tokio_postgres::Client) {
    let rows = match client
        .query(
            "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1)",
            &[&TEMP_SCHEMA_PREFIX],
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %describe(&e), "cannot list temporary schemas");
            return;
        }
    };
    let now = unix_seconds();
    for row in rows {
        let Ok(name) = row.try_get::<_, String>(0) else {
            continue;
        };
        let stale =
            created_at(&name).is_some_and(|at| now.saturating_sub(at) > STALE_AFTER.as_secs());
        if stale && crate::valid_schema_name(&name) {
            match client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                .await
            {
                Ok(()) => tracing::info!(schema = %name, "dropped an abandoned temporary schema"),
                Err(e) => {
                    tracing::warn!(schema = %name, error = %describe(&e), "cannot drop an abandoned temporary schema")
                }
            }
        }
    }
}

/// Owns a temporary schema: dropping it drops the schema and everything in it.
#[derive(Debug)]
pub(crate) struct TempSchema {
    pub(crate) name: String,
    pub(crate) config: tokio_postgres::Config,
}

impl Drop for TempSchema {
    fn drop(&mut self) {
        // Drop runs outside of any async context we could await in (and maybe during
        // a panic): a thread of its own with its own runtime does the work, and we
        // wait for it, within bounds.
        let (config, name) = (self.config.clone(), self.name.clone());
        let (done, result) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("baton-pg-temp-drop".into())
            .spawn(move || {
                let outcome = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(drop_schema(config, &name)),
                    Err(e) => Err(format!("cannot start a runtime: {e}")),
                };
                let _ = done.send(outcome);
            });
        let outcome = match spawned {
            Ok(_) => result
                .recv_timeout(DROP_TIMEOUT)
                .unwrap_or_else(|_| Err("timed out".into())),
            Err(e) => Err(format!("cannot start a thread: {e}")),
        };
        if let Err(e) = outcome {
            tracing::warn!(schema = %self.name, error = %e, "cannot drop a temporary schema; a later connect_temp sweeps it");
        }
    }
}

async fn drop_schema(config: tokio_postgres::Config, name: &str) -> Result<(), String> {
    let (client, connection) = config.connect(NoTls).await.map_err(|e| describe(&e))?;
    let driver = tokio::spawn(connection);
    // The store's own connections are closing, but their tasks may not get to run
    // while we hold up the drop: one left inside a transaction would hold locks in
    // the schema. They carry its name.
    let result = client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
            WHERE application_name IN ($1, $1 || ' listener') AND pid <> pg_backend_pid()",
            &[&name],
        )
        .await
        .map(drop);
    let result = match result {
        Ok(()) => {
            client
                .batch_execute(&format!(
                    "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
                ))
                .await
        }
        Err(e) => Err(e),
    }
    .map_err(|e| describe(&e));
    drop(client);
    let _ = driver.await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_valid_and_dated() {
        let a = unique_name();
        let b = unique_name();
        assert_ne!(a, b);
        assert!(crate::valid_schema_name(&a), "{a}");
        let at = created_at(&a).expect("dated");
        assert!(unix_seconds() - at < 5);
        assert_eq!(created_at("public"), None);
        assert_eq!(created_at("baton_test_x"), None);
    }
}
