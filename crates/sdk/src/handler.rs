//! The handler contract, and the one place that runs a handler for an attempt:
//! timeout, panic capture. The agent and the test harness both go through
//! [`execute`], so a handler behaves the same in a test as in production.

use crate::{HandlerError, Task};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::Value;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

/// What a handler produces for one attempt.
pub type Outcome = Result<Value, HandlerError>;

/// Runs one task attempt. Any `Fn(Task) -> impl Future<Output = Result<Value,
/// HandlerError>>` that is `Send + Sync + 'static` is a handler, so a closure or an
/// `async fn` can be passed directly.
pub trait Handler: Send + Sync + 'static {
    fn call(&self, task: Task) -> BoxFuture<'static, Outcome>;
}

impl<F, Fut> Handler for F
where
    F: Fn(Task) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    fn call(&self, task: Task) -> BoxFuture<'static, Outcome> {
        Box::pin(self(task))
    }
}

/// A type-erased, cheaply cloned handler, for choosing one at run time.
#[derive(Clone)]
pub struct BoxHandler(Arc<dyn Handler>);

impl BoxHandler {
    pub fn new(handler: impl Handler) -> Self {
        Self(Arc::new(handler))
    }
}

impl Handler for BoxHandler {
    fn call(&self, task: Task) -> BoxFuture<'static, Outcome> {
        self.0.call(task)
    }
}

impl std::fmt::Debug for BoxHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoxHandler")
    }
}

/// Runs `handler` on `task`: enforces the task's timeout (zero means none) and turns
/// a panic into a retryable failure, so one bad task cannot take the agent down.
pub(crate) async fn execute(handler: &dyn Handler, task: Task) -> Outcome {
    let timeout = task.timeout;
    // Calling the handler may itself panic before it returns a future.
    let run = AssertUnwindSafe(async move { handler.call(task).await }).catch_unwind();
    let caught = if timeout.is_zero() {
        run.await
    } else {
        match tokio::time::timeout(timeout, run).await {
            Ok(caught) => caught,
            Err(_) => {
                return Err(HandlerError::timeout(format!(
                    "handler exceeded its timeout of {} ms",
                    timeout.as_millis()
                )))
            }
        }
    };
    caught.unwrap_or_else(|panic| {
        Err(HandlerError::retryable(format!(
            "handler panicked: {}",
            panic_message(&*panic)
        )))
    })
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}
