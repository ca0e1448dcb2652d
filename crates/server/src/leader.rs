//! This replica's part in the election for the singleton duties (sweeping expired
//! leases, promoting due retries). Every replica asks the store for the role every
//! third of its lease; the store decides (`baton_store::next_leadership`) and
//! refuses a duty written with a fence that no longer holds. A replica that stalls
//! past its lease loses the role to the next one that asks, and learns it either
//! from its next ask or from its first refused write.

use baton_core::Millis;
use baton_store::{Error, Fence, Leadership, Store};
use serde::Serialize;
use std::sync::{Arc, Mutex};

pub struct Leader {
    store: Arc<dyn Store>,
    replica_id: String,
    lease_ms: u64,
    current: Mutex<Option<Leadership>>,
}

/// What `/health` shows of the election.
#[derive(Debug, Clone, Serialize)]
pub struct LeaderStatus {
    pub replica_id: String,
    /// Whether this replica holds the singleton duties.
    pub leader: bool,
    /// Who holds them, as last seen, and in which epoch.
    pub holder: Option<String>,
    pub epoch: Option<u64>,
}

impl Leader {
    pub fn new(store: Arc<dyn Store>, replica_id: String, lease_ms: u64) -> Self {
        Self {
            store,
            replica_id,
            lease_ms,
            current: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Leadership>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// How often to ask: three asks fit in a lease, so one lost ask does not lose it.
    pub fn renew_every_ms(&self) -> u64 {
        (self.lease_ms / 3).max(1)
    }

    /// Asks for (or renews) the role at `now`.
    pub async fn ask(&self, now: Millis) {
        let answer = self
            .store
            .acquire_leadership(&self.replica_id, now, self.lease_ms)
            .await;
        let mut current = self.lock();
        let was = current.as_ref().and_then(|l| l.fence_for(&self.replica_id));
        match answer {
            Ok(leadership) => {
                let is = leadership.fence_for(&self.replica_id);
                match (&was, &is) {
                    (None, Some(f)) => {
                        tracing::info!(replica = %self.replica_id, epoch = f.epoch, "this replica leads the singleton duties")
                    }
                    (Some(w), Some(f)) if w.epoch != f.epoch => {
                        tracing::info!(replica = %self.replica_id, epoch = f.epoch, "this replica leads again, in a new epoch")
                    }
                    (Some(_), None) => {
                        tracing::warn!(replica = %self.replica_id, leader = %leadership.holder, epoch = leadership.epoch, "leadership passed to another replica")
                    }
                    _ => {}
                }
                *current = Some(leadership);
            }
            Err(e) => {
                // Unsure whether the lease was renewed: act as if not. The store
                // would refuse a write made with a lapsed fence anyway.
                if was.is_some() {
                    tracing::warn!(error = %e, "cannot renew leadership; singleton duties paused");
                }
                *current = None;
            }
        }
    }

    /// The fence to write the duties with, if this replica holds the role at `now`.
    pub fn fence(&self, now: Millis) -> Option<Fence> {
        let current = self.lock();
        let leadership = current.as_ref()?;
        if leadership.expires_at_ms <= now {
            return None;
        }
        leadership.fence_for(&self.replica_id)
    }

    /// A duty came back refused: the role is gone until the next ask says otherwise.
    pub fn refused(&self, error: &Error) {
        if matches!(error, Error::Fenced(_)) {
            tracing::warn!(error = %error, "singleton duty refused: leadership lost");
            *self.lock() = None;
        }
    }

    /// Gives the role up (clean shutdown), so another replica need not wait for the
    /// lease to lapse.
    pub async fn resign(&self) {
        let fence = self
            .lock()
            .take()
            .and_then(|l| l.fence_for(&self.replica_id));
        if let Some(fence) = fence {
            if let Err(e) = self.store.resign_leadership(&fence).await {
                tracing::debug!(error = %e, "could not resign leadership");
            }
        }
    }

    pub fn status(&self, now: Millis) -> LeaderStatus {
        let current = self.lock();
        LeaderStatus {
            replica_id: self.replica_id.clone(),
            leader: current
                .as_ref()
                .is_some_and(|l| l.holder == self.replica_id && l.expires_at_ms > now),
            holder: current.as_ref().map(|l| l.holder.clone()),
            epoch: current.as_ref().map(|l| l.epoch),
        }
    }
}
