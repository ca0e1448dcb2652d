//! A [`Store`] that times the calls that write (`baton_store_commit_seconds{op}`)
//! and passes everything through unchanged. The server wraps whichever backend it
//! opened, so every write path is measured without touching the backends.

use crate::metrics::Metrics;
use async_trait::async_trait;
use baton_core::lifecycle::Failure;
use baton_core::{Millis, TaskId, TaskSpec};
use baton_store::{
    AtCommit, ClaimRequest, Claimed, Counts, Fence, FlowOutcome, FlowRecord, Leadership,
    ListFilter, Page, Result, RunFilter, RunPage, RunRecord, RunWrite, RunWriteOutcome, Selected,
    SelectedOutcome, StartAt, Store, SubmitOutcome, SyncMode, TaskRecord, Update, UpdateOutcome,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    pub fn wrap(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Arc<dyn Store> {
        Arc::new(MeteredStore { inner, metrics })
    }

    async fn timed<T>(&self, op: &'static str, call: impl std::future::Future<Output = T>) -> T {
        let start = Instant::now();
        let out = call.await;
        self.metrics.store_commit(op, start.elapsed());
        out
    }
}

#[async_trait]
impl Store for MeteredStore {
    async fn submit_starting(
        &self,
        tasks: Vec<TaskSpec>,
        starts: Vec<Option<StartAt>>,
        now: Millis,
    ) -> Result<Vec<SubmitOutcome>> {
        self.timed("submit", self.inner.submit_starting(tasks, starts, now))
            .await
    }

    async fn submit_starting_then(
        &self,
        tasks: Vec<TaskSpec>,
        starts: Vec<Option<StartAt>>,
        now: Millis,
        at_commit: AtCommit<SubmitOutcome>,
        sync: SyncMode,
    ) -> Result<Vec<SubmitOutcome>> {
        self.timed(
            "submit",
            self.inner
                .submit_starting_then(tasks, starts, now, at_commit, sync),
        )
        .await
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Claimed>> {
        self.timed("claim", self.inner.claim(request)).await
    }

    async fn claim_selected(
        &self,
        selected: Vec<Selected>,
        lease_deadline_ms: Millis,
        now: Millis,
    ) -> Result<Vec<SelectedOutcome>> {
        self.timed(
            "claim_selected",
            self.inner.claim_selected(selected, lease_deadline_ms, now),
        )
        .await
    }

    async fn update(&self, updates: Vec<Update>, now: Millis) -> Result<Vec<UpdateOutcome>> {
        self.timed("update", self.inner.update(updates, now)).await
    }

    async fn extend_leases(
        &self,
        lease_owners: &[String],
        lease_deadline_ms: Millis,
    ) -> Result<u64> {
        self.timed(
            "extend_leases",
            self.inner.extend_leases(lease_owners, lease_deadline_ms),
        )
        .await
    }

    async fn expire_leases(&self, now: Millis, fence: &Fence) -> Result<Vec<TaskId>> {
        self.timed("expire_leases", self.inner.expire_leases(now, fence))
            .await
    }

    async fn acquire_leadership(
        &self,
        candidate: &str,
        now: Millis,
        ttl_ms: u64,
    ) -> Result<Leadership> {
        self.timed(
            "acquire_leadership",
            self.inner.acquire_leadership(candidate, now, ttl_ms),
        )
        .await
    }

    async fn resign_leadership(&self, fence: &Fence) -> Result<()> {
        self.inner.resign_leadership(fence).await
    }

    async fn release_owner(
        &self,
        lease_owner: &str,
        failure: Failure,
        now: Millis,
    ) -> Result<Vec<TaskId>> {
        self.timed(
            "release_owner",
            self.inner.release_owner(lease_owner, failure, now),
        )
        .await
    }

    async fn promote_due(&self, now: Millis, fence: &Fence) -> Result<Vec<String>> {
        self.timed("promote_due", self.inner.promote_due(now, fence))
            .await
    }

    async fn next_wake(&self) -> Result<Option<Millis>> {
        self.inner.next_wake().await
    }

    async fn get(&self, task_id: &TaskId) -> Result<Option<TaskRecord>> {
        self.inner.get(task_id).await
    }

    async fn list(&self, filter: ListFilter) -> Result<Page> {
        self.inner.list(filter).await
    }

    async fn counts(&self) -> Result<Counts> {
        self.inner.counts().await
    }

    async fn queued_types(&self) -> Result<Vec<String>> {
        self.inner.queued_types().await
    }

    async fn peek_queued(
        &self,
        task_type: &str,
        limit: usize,
        skip: Vec<TaskId>,
    ) -> Result<Vec<TaskSpec>> {
        self.timed(
            "peek_queued",
            self.inner.peek_queued(task_type, limit, skip),
        )
        .await
    }

    async fn queued_by_priority(&self) -> Result<BTreeMap<String, u64>> {
        self.inner.queued_by_priority().await
    }

    fn exclusive(&self) -> bool {
        self.inner.exclusive()
    }

    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }

    fn work_notifications(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        self.inner.work_notifications()
    }

    async fn put_flow(
        &self,
        name: &str,
        version: Option<u32>,
        definition: serde_json::Value,
        now: Millis,
    ) -> Result<FlowOutcome> {
        self.timed(
            "put_flow",
            self.inner.put_flow(name, version, definition, now),
        )
        .await
    }

    async fn get_flow(&self, name: &str, version: Option<u32>) -> Result<Option<FlowRecord>> {
        self.inner.get_flow(name, version).await
    }

    async fn list_flows(&self) -> Result<Vec<FlowRecord>> {
        self.inner.list_flows().await
    }

    async fn write_runs(&self, writes: Vec<RunWrite>, now: Millis) -> Result<Vec<RunWriteOutcome>> {
        self.timed("write_runs", self.inner.write_runs(writes, now))
            .await
    }

    async fn write_runs_then(
        &self,
        writes: Vec<RunWrite>,
        now: Millis,
        at_commit: AtCommit<RunWriteOutcome>,
    ) -> Result<Vec<RunWriteOutcome>> {
        self.timed(
            "write_runs",
            self.inner.write_runs_then(writes, now, at_commit),
        )
        .await
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        self.inner.get_run(run_id).await
    }

    async fn list_runs(&self, filter: RunFilter) -> Result<RunPage> {
        self.inner.list_runs(filter).await
    }

    async fn active_runs(&self) -> Result<Vec<RunRecord>> {
        self.inner.active_runs().await
    }
}
