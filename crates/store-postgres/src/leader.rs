//! Leadership of the singleton duties. One row (`leadership`, name `duties`) holds
//! the holder, its epoch and when its lease ends; the rule deciding who gets it is
//! `baton_store::next_leadership`, applied under the row's lock. A fenced duty
//! takes the same row with `FOR SHARE` in its own transaction, so a takeover (which
//! updates the row) waits for the duty to commit, and a duty that starts after a
//! takeover sees the new epoch and is refused.

use crate::codec::{millis, Fault, Res};
use crate::tasks::Tx;
use baton_core::Millis;
use baton_store::{next_leadership, Fence, Leadership};

const LOCK: &str =
    "SELECT holder, epoch, expires_at FROM leadership WHERE name = 'duties' FOR UPDATE";
const SHARE: &str =
    "SELECT holder, epoch, expires_at FROM leadership WHERE name = 'duties' FOR SHARE";
const WRITE: &str =
    "UPDATE leadership SET holder = $1, epoch = $2, expires_at = $3 WHERE name = 'duties'";
const RESIGN: &str = "UPDATE leadership SET expires_at = 0
    WHERE name = 'duties' AND holder = $1 AND epoch = $2";

async fn read(tx: &Tx<'_>, sql: &str) -> Res<Option<Leadership>> {
    let stmt = tx.prepare_cached(sql).await?;
    let row = tx.query_one(&stmt, &[]).await?;
    let holder: String = row.try_get(0)?;
    let epoch: i64 = row.try_get(1)?;
    let expires_at: i64 = row.try_get(2)?;
    // Epoch 0 is the row the migration seeds: nobody has held the role yet.
    Ok((epoch > 0).then(|| Leadership {
        holder,
        epoch: epoch as u64,
        expires_at_ms: expires_at.max(0) as u64,
    }))
}

pub(crate) async fn acquire(
    tx: &Tx<'_>,
    candidate: &str,
    now: Millis,
    ttl_ms: u64,
) -> Res<Leadership> {
    let current = read(tx, LOCK).await?;
    let next = next_leadership(current.as_ref(), candidate, now, ttl_ms);
    if current.as_ref() != Some(&next) {
        let stmt = tx.prepare_cached(WRITE).await?;
        tx.execute(
            &stmt,
            &[
                &next.holder,
                &(next.epoch as i64),
                &millis(next.expires_at_ms),
            ],
        )
        .await?;
    }
    Ok(next)
}

pub(crate) async fn resign(tx: &Tx<'_>, fence: &Fence) -> Res<()> {
    let stmt = tx.prepare_cached(RESIGN).await?;
    tx.execute(&stmt, &[&fence.holder, &(fence.epoch as i64)])
        .await?;
    Ok(())
}

/// Refuses the transaction's duty unless `fence` holds at `now`.
pub(crate) async fn check(tx: &Tx<'_>, fence: &Fence, now: Millis) -> Res<()> {
    let current = read(tx, SHARE).await?;
    if fence.admits(current.as_ref(), now) {
        Ok(())
    } else {
        Err(Fault::Store(fence.refusal(current.as_ref())))
    }
}
