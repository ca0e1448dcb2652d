//! Step outputs passed by reference (`baton_core::workflow::refs`): before the
//! dispatcher hands claimed tasks to agents, it reads the outputs their inputs
//! refer to (each distinct task once per batch, recently read ones from a small
//! cache: a completed task's output never changes) and puts the selected values
//! in place, so that an agent receives the input as if it had been copied.

use baton_core::input::PartData;
use baton_core::lifecycle::Status;
use baton_core::workflow::refs::{self, OutputRef, INPUT_REFS};
use baton_core::{TaskId, TaskSpec};
use baton_store::Store;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a read output is reused.
const CACHE_TTL: Duration = Duration::from_secs(3);
/// Most bytes (as JSON text) of outputs kept.
const CACHE_BYTES: usize = 64 << 20;

/// Why a task's input could not be filled.
#[derive(Debug)]
pub enum Unfilled {
    /// The reference cannot be satisfied (an absent field, a parent without
    /// output): the task fails, permanently.
    Bad(String),
    /// The store could not be read: the attempt is handed back.
    Unreadable(String),
}

/// Recently read outputs, shared by the dispatcher's paths.
#[derive(Default)]
pub struct Outputs {
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<String, (Arc<Value>, usize, Instant)>,
    bytes: usize,
}

impl Outputs {
    /// Fills every task of `specs` that carries references and removes the
    /// references from its metadata. Returns the tasks that could not be
    /// filled, by id, left as they were.
    pub async fn fill(
        &self,
        store: &dyn Store,
        specs: Vec<&mut TaskSpec>,
    ) -> Vec<(TaskId, Unfilled)> {
        let mut failed = Vec::new();
        let mut todo: Vec<(&mut TaskSpec, Vec<OutputRef>)> = Vec::new();
        for spec in specs {
            match refs::from_metadata(&spec.metadata) {
                None => {}
                Some(Ok(r)) => todo.push((spec, r)),
                Some(Err(e)) => failed.push((spec.task_id.clone(), Unfilled::Bad(e))),
            }
        }
        if todo.is_empty() {
            return failed;
        }
        let now = Instant::now();
        let mut outputs: HashMap<String, Option<Arc<Value>>> = HashMap::new();
        {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            for (_, rs) in &todo {
                for r in rs {
                    if let Some((v, _, at)) = cache.entries.get(&r.task_id) {
                        if now.duration_since(*at) < CACHE_TTL {
                            outputs.insert(r.task_id.clone(), Some(v.clone()));
                        }
                    }
                }
            }
            cache.evict(now);
        }
        let missing: Vec<String> = {
            let mut m: Vec<String> = todo
                .iter()
                .flat_map(|(_, rs)| rs.iter().map(|r| r.task_id.clone()))
                .filter(|id| !outputs.contains_key(id))
                .collect();
            m.sort();
            m.dedup();
            m
        };
        let reads = missing.iter().map(|id| async move {
            match TaskId::parse(id) {
                Ok(tid) => store.get(&tid).await.map_err(|e| e.to_string()),
                Err(_) => Ok(None),
            }
        });
        let mut unreadable = None;
        for (id, read) in missing.iter().zip(futures::future::join_all(reads).await) {
            match read {
                Ok(record) => {
                    let out = record
                        .filter(|r| r.state.status == Status::Completed)
                        .and_then(|r| r.state.output)
                        .map(Arc::new);
                    if let Some(v) = &out {
                        self.remember(id, v.clone(), now);
                    }
                    outputs.insert(id.clone(), out);
                }
                Err(e) => unreadable = Some(e),
            }
        }
        for (spec, rs) in todo {
            if rs.iter().any(|r| !outputs.contains_key(&r.task_id)) {
                let e = unreadable.clone().unwrap_or_default();
                failed.push((spec.task_id.clone(), Unfilled::Unreadable(e)));
                continue;
            }
            let get = |id: &str| outputs.get(id).and_then(|o| o.as_deref());
            let Some(input) = spec.inputs.iter_mut().find_map(|p| match &mut p.data {
                PartData::Json(v) if p.name.as_deref() == Some("input") => Some(v),
                _ => None,
            }) else {
                failed.push((
                    spec.task_id.clone(),
                    Unfilled::Bad("input: the task has references but no input part".into()),
                ));
                continue;
            };
            let mut filled = input.clone();
            match refs::fill(&mut filled, &rs, &get) {
                Ok(()) => {
                    *input = filled;
                    spec.metadata.remove(INPUT_REFS);
                }
                Err(e) => failed.push((spec.task_id.clone(), Unfilled::Bad(e))),
            }
        }
        failed
    }

    fn remember(&self, task_id: &str, v: Arc<Value>, now: Instant) {
        let size = json_len(&v);
        if size > CACHE_BYTES / 4 {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.evict(now);
        while cache.bytes + size > CACHE_BYTES {
            let Some(oldest) = cache
                .entries
                .iter()
                .min_by_key(|(_, e)| e.2)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            cache.remove(&oldest);
        }
        cache.bytes += size;
        if let Some(old) = cache.entries.insert(task_id.to_string(), (v, size, now)) {
            cache.bytes -= old.1;
        }
    }
}

impl Cache {
    fn evict(&mut self, now: Instant) {
        let old: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| now.duration_since(e.2) >= CACHE_TTL)
            .map(|(k, _)| k.clone())
            .collect();
        for k in old {
            self.remove(&k);
        }
    }
    fn remove(&mut self, k: &str) {
        if let Some(e) = self.entries.remove(k) {
            self.bytes -= e.1;
        }
    }
}

/// Length of `v` as JSON text, without building the text.
fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}
