//! The flow registry and workflow runs: versioned flow definitions, and run
//! documents written by compare-and-set on their revision, each together with the
//! tasks it starts.

use crate::codec::{
    decode_cursor, decode_flow, decode_run, encode_cursor, millis, revision, Fault, JsonParam, Res,
};
use crate::tasks::{self, Tx, Work, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};
use baton_core::Millis;
use baton_store::{
    Error, FlowOutcome, FlowRecord, RunFilter, RunPage, RunRecord, RunWrite, RunWriteOutcome,
};
use deadpool_postgres::GenericClient;

/// How often `put_flow` without a version looks again after a concurrent
/// registration took the version it wanted.
const MAX_VERSION_RACES: usize = 100;

/// `SELECT` of flows, decoded by `codec::decode_flow`.
macro_rules! select_flows {
    ($tail:literal) => {
        concat!(
            "SELECT name, version, definition, created_at FROM flows ",
            $tail
        )
    };
}

/// `SELECT` of runs, decoded by `codec::decode_run`.
macro_rules! select_runs {
    ($tail:literal) => {
        concat!(
            "SELECT seq, run_id, flow_name, status, active, revision, created_at, updated_at, body, definition FROM runs ",
            $tail
        )
    };
}

const INSERT_FLOW: &str = "INSERT INTO flows (name, version, definition, created_at)
    VALUES ($1, $2, $3, $4) ON CONFLICT (name, version) DO NOTHING";
const FLOW_VERSION: &str = select_flows!("WHERE name = $1 AND version = $2");
const FLOW_LATEST: &str = select_flows!("WHERE name = $1 ORDER BY version DESC LIMIT 1");
const FLOWS_ALL: &str = select_flows!("ORDER BY name, version");

const INSERT_RUN: &str = "INSERT INTO runs
        (run_id, flow_name, status, active, revision, created_at, updated_at, body, definition)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
    ON CONFLICT (run_id) DO NOTHING";
/// Compare-and-set: a concurrent writer of the same run waits for the row lock,
/// then finds the revision changed and updates nothing.
const UPDATE_RUN: &str = "UPDATE runs SET flow_name = $2, status = $3, active = $4,
        revision = $5, created_at = $6, updated_at = $7, body = $8,
        definition = coalesce($10, definition)
    WHERE run_id = $1 AND revision = $9";
const RUN_BY_ID: &str = select_runs!("WHERE run_id = $1");
const ACTIVE_RUNS: &str = select_runs!("WHERE active ORDER BY seq");

fn version_param(version: u32) -> i64 {
    i64::from(version)
}

async fn flow(
    client: &impl GenericClient,
    sql: &str,
    name: &str,
    version: Option<u32>,
) -> Res<Option<FlowRecord>> {
    let stmt = client.prepare_cached(sql).await?;
    let row = match version {
        Some(v) => client.query_opt(&stmt, &[&name, &version_param(v)]).await?,
        None => client.query_opt(&stmt, &[&name]).await?,
    };
    row.as_ref().map(decode_flow).transpose()
}

/// Inserts `name` at `version` unless that version exists; whether it did.
async fn insert_flow(
    tx: &Tx<'_>,
    name: &str,
    version: u32,
    definition: &JsonParam,
    now: Millis,
) -> Res<bool> {
    let stmt = tx.prepare_cached(INSERT_FLOW).await?;
    let inserted = tx
        .execute(
            &stmt,
            &[&name, &version_param(version), definition, &millis(now)],
        )
        .await?;
    Ok(inserted == 1)
}

pub(crate) async fn put_flow(
    tx: &Tx<'_>,
    name: &str,
    version: Option<u32>,
    definition: &serde_json::Value,
    now: Millis,
) -> Res<FlowOutcome> {
    let encoded = JsonParam::encode(definition)?;
    let created = |version| {
        FlowOutcome::Created(FlowRecord {
            name: name.to_string(),
            version,
            definition: definition.clone(),
            created_at_ms: now,
        })
    };
    if let Some(version) = version {
        if insert_flow(tx, name, version, &encoded, now).await? {
            return Ok(created(version));
        }
        let stored = flow(tx, FLOW_VERSION, name, Some(version))
            .await?
            .ok_or_else(|| {
                Error::Corrupt(format!(
                    "flow {name} version {version} conflicted on insert but cannot be read"
                ))
            })?;
        return Ok(if stored.definition == *definition {
            FlowOutcome::Existing(stored)
        } else {
            FlowOutcome::Conflict(stored)
        });
    }
    for _ in 0..MAX_VERSION_RACES {
        let latest = flow(tx, FLOW_LATEST, name, None).await?;
        let next = match &latest {
            Some(latest) if latest.definition == *definition => {
                return Ok(FlowOutcome::Existing(latest.clone()))
            }
            Some(latest) => latest.version.checked_add(1).ok_or_else(|| {
                Error::Other(format!(
                    "flow {name} has no version left after {}",
                    latest.version
                ))
            })?,
            None => 1,
        };
        if insert_flow(tx, name, next, &encoded, now).await? {
            return Ok(created(next));
        }
        // Another replica registered that version meanwhile: look again.
    }
    Err(Error::Unavailable(format!(
        "flow {name}: gave up after {MAX_VERSION_RACES} concurrent registrations"
    ))
    .into())
}

pub(crate) async fn get_flow(
    client: &impl GenericClient,
    name: &str,
    version: Option<u32>,
) -> Res<Option<FlowRecord>> {
    match version {
        Some(v) => flow(client, FLOW_VERSION, name, Some(v)).await,
        None => flow(client, FLOW_LATEST, name, None).await,
    }
}

pub(crate) async fn list_flows(client: &impl GenericClient) -> Res<Vec<FlowRecord>> {
    let stmt = client.prepare_cached(FLOWS_ALL).await?;
    let rows = client.query(&stmt, &[]).await?;
    rows.iter().map(decode_flow).collect()
}

async fn run(client: &impl GenericClient, run_id: &str) -> Res<Option<RunRecord>> {
    let stmt = client.prepare_cached(RUN_BY_ID).await?;
    let row = client.query_opt(&stmt, &[&run_id]).await?;
    Ok(row.as_ref().map(decode_run).transpose()?.map(|(_, r)| r))
}

/// Writes the run row of one write (compare-and-set on the revision, as the SQLite
/// store does); whether it was written.
async fn write_run(tx: &Tx<'_>, write: &RunWrite) -> Res<bool> {
    let r = &write.record;
    let body = JsonParam::document(&r.body);
    let definition = r.definition.as_ref().map(JsonParam::encode).transpose()?;
    let new_revision = revision(r.revision)?;
    let (created_at, updated_at) = (millis(r.created_at_ms), millis(r.updated_at_ms));
    let written = match write.expected_revision {
        None => {
            let stmt = tx.prepare_cached(INSERT_RUN).await?;
            tx.execute(
                &stmt,
                &[
                    &r.run_id,
                    &r.flow_name,
                    &r.status,
                    &r.active,
                    &new_revision,
                    &created_at,
                    &updated_at,
                    &body,
                    &definition,
                ],
            )
            .await?
        }
        Some(expected) => {
            let stmt = tx.prepare_cached(UPDATE_RUN).await?;
            tx.execute(
                &stmt,
                &[
                    &r.run_id,
                    &r.flow_name,
                    &r.status,
                    &r.active,
                    &new_revision,
                    &created_at,
                    &updated_at,
                    &body,
                    &revision(expected)?,
                    &definition,
                ],
            )
            .await?
        }
    };
    Ok(written == 1)
}

pub(crate) async fn write_runs(
    tx: &Tx<'_>,
    writes: &[RunWrite],
    now: Millis,
    work: &mut Work,
) -> Res<Vec<RunWriteOutcome>> {
    let mut out = Vec::with_capacity(writes.len());
    for write in writes {
        if !write_run(tx, write).await? {
            let stored = run(tx, &write.record.run_id).await?;
            out.push(RunWriteOutcome::Conflict(stored));
            continue;
        }
        let submitted = tasks::submit(tx, &write.tasks, &write.starts, now, work).await?;
        out.push(RunWriteOutcome::Written(submitted));
    }
    Ok(out)
}

pub(crate) async fn get_run(client: &impl GenericClient, run_id: &str) -> Res<Option<RunRecord>> {
    run(client, run_id).await
}

pub(crate) async fn list_runs(client: &impl GenericClient, filter: &RunFilter) -> Res<RunPage> {
    let before = decode_cursor(filter.cursor.as_deref())?;
    let limit = match filter.limit {
        0 => DEFAULT_LIST_LIMIT,
        n => n.min(MAX_LIST_LIMIT),
    };
    let fetch = limit as i64 + 1;
    let status = filter.status.as_deref();
    let flow_name = filter.flow_name.as_deref();
    // Planned for these parameters, as `tasks::list` does.
    let rows = match (status, flow_name) {
        (None, None) => {
            const SQL: &str = select_runs!("WHERE seq < $1 ORDER BY seq DESC LIMIT $2");
            client.query(SQL, &[&before, &fetch]).await?
        }
        (Some(status), None) => {
            const SQL: &str =
                select_runs!("WHERE status = $3 AND seq < $1 ORDER BY seq DESC LIMIT $2");
            client.query(SQL, &[&before, &fetch, &status]).await?
        }
        (None, Some(flow_name)) => {
            const SQL: &str =
                select_runs!("WHERE flow_name = $3 AND seq < $1 ORDER BY seq DESC LIMIT $2");
            client.query(SQL, &[&before, &fetch, &flow_name]).await?
        }
        (Some(status), Some(flow_name)) => {
            const SQL: &str = select_runs!(
                "WHERE status = $3 AND flow_name = $4 AND seq < $1 ORDER BY seq DESC LIMIT $2"
            );
            client
                .query(SQL, &[&before, &fetch, &status, &flow_name])
                .await?
        }
    };
    let more = rows.len() > limit;
    let mut runs = Vec::with_capacity(rows.len().min(limit));
    let mut last_seq = None;
    for row in rows.iter().take(limit) {
        let (seq, record) = decode_run(row)?;
        last_seq = Some(seq);
        runs.push(record);
    }
    let next_cursor = if more {
        last_seq.map(encode_cursor)
    } else {
        None
    };
    Ok(RunPage { runs, next_cursor })
}

pub(crate) async fn active_runs(client: &impl GenericClient) -> Res<Vec<RunRecord>> {
    let stmt = client.prepare_cached(ACTIVE_RUNS).await?;
    let rows = client.query(&stmt, &[]).await?;
    rows.iter()
        .map(|row| decode_run(row).map(|(_, r)| r))
        .collect::<Result<_, Fault>>()
}
