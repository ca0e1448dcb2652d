//! `api_caller`: calls the HTTP API a task describes, with a few quick retries
//! inside the attempt and a circuit breaker per destination shared by every task of
//! the process ([`crate::breaker`]).
//!
//! The request is read from the first json input part, each field falling back to
//! the metadata: `url` (required, http or https), `method` (default `GET`),
//! `headers` (object of strings), `body` (a string is sent as is, anything else as
//! JSON), `timeout_ms` (per try, default 10 000), `max_retries` (tries after the
//! first within this attempt, default 2, at most 10), `response_headers` (extra
//! header names to return).
//!
//! Output: `{"status": 200, "headers": {...}, "body": <JSON if it parses, else text,
//! null when empty>, "duration_ms": 12, "tries": 1}`; `headers` holds
//! `content-type`, `content-length`, `etag`, `last-modified`, `location`,
//! `retry-after` and the requested ones, when present.
//!
//! Failures: 4xx other than 408 and 429 is permanent (the request is wrong); 429
//! returns at once, retried after its `Retry-After`; 408, 5xx, timeouts and
//! connection errors are retried here with exponential backoff, then reported
//! retryable. While the destination's breaker is open the task is retried after the
//! rest of the cooldown.

use crate::breaker::{self, Breakers};
use crate::request::{field, opt_str, opt_u64, retry_after_header};
use baton_sdk::{HandlerError, Task};
use reqwest::{Method, Url};
use serde_json::{json, Map, Value};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_RETRIES: u64 = 2;
pub const MAX_RETRIES_LIMIT: u64 = 10;
const DEFAULT_RESPONSE_HEADERS: [&str; 6] = [
    "content-type",
    "content-length",
    "etag",
    "last-modified",
    "location",
    "retry-after",
];

/// What a task asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequest {
    pub method: Method,
    pub url: Url,
    pub headers: Vec<(String, String)>,
    pub body: Option<Value>,
    pub timeout: Duration,
    pub max_retries: u64,
    pub response_headers: Vec<String>,
}

impl ApiRequest {
    /// `host:port`, the key of the destination's breaker.
    pub fn destination(&self) -> String {
        format!(
            "{}:{}",
            self.url.host_str().unwrap_or_default(),
            self.url.port_or_known_default().unwrap_or(0)
        )
    }

    /// Reads the request of a task (module docs); every error is the submitter's.
    pub fn from_task(task: &Task) -> Result<ApiRequest, String> {
        let spec = crate::request::json_object(task);
        let get = |key: &str| field(&spec, &task.metadata, key);
        let raw_url = opt_str(get("url"), "url")?
            .ok_or("url is required (in the json input or the metadata)")?;
        let url = Url::parse(&raw_url).map_err(|e| format!("url {raw_url:?} is not valid: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!("url {raw_url:?} must be an http or https address"));
        }
        let method_name = opt_str(get("method"), "method")?.unwrap_or_else(|| "GET".into());
        let method = Method::from_bytes(method_name.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("method {method_name:?} is not an HTTP method"))?;
        let headers = match get("headers") {
            None => Vec::new(),
            Some(Value::Object(h)) => h
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    other => Err(format!("headers.{k} must be a string, got {other}")),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => return Err(format!("headers must be an object, got {other}")),
        };
        let max_retries =
            opt_u64(get("max_retries"), "max_retries")?.unwrap_or(DEFAULT_MAX_RETRIES);
        if max_retries > MAX_RETRIES_LIMIT {
            return Err(format!(
                "max_retries must be at most {MAX_RETRIES_LIMIT}, got {max_retries}"
            ));
        }
        let timeout = match opt_u64(get("timeout_ms"), "timeout_ms")? {
            None => DEFAULT_TIMEOUT,
            Some(0) => return Err("timeout_ms must be at least 1".into()),
            Some(ms) => Duration::from_millis(ms),
        };
        let mut response_headers: Vec<String> = DEFAULT_RESPONSE_HEADERS
            .iter()
            .map(|s| s.to_string())
            .collect();
        match get("response_headers") {
            None => {}
            Some(Value::Array(names)) => {
                for n in names {
                    let n = n
                        .as_str()
                        .ok_or_else(|| format!("response_headers must hold strings, got {n}"))?;
                    response_headers.push(n.to_ascii_lowercase());
                }
            }
            Some(other) => return Err(format!("response_headers must be an array, got {other}")),
        }
        Ok(ApiRequest {
            method,
            url,
            headers,
            body: get("body").cloned(),
            timeout,
            max_retries,
            response_headers,
        })
    }
}

/// Backoff between tries inside one attempt: `base * 2^try`, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
        }
    }
}

impl Backoff {
    pub fn delay(&self, try_index: u32) -> Duration {
        self.base
            .saturating_mul(2u32.saturating_pow(try_index))
            .min(self.max)
    }
}

type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Calls APIs for tasks; one per process ([`ApiCaller::shared`]), or one per test.
#[derive(Clone)]
pub struct ApiCaller {
    client: reqwest::Client,
    breakers: Arc<Breakers>,
    backoff: Backoff,
    clock: Clock,
}

impl ApiCaller {
    pub fn new(breaker: breaker::Options, backoff: Backoff) -> Self {
        Self {
            client: crate::llm::client(),
            breakers: Arc::new(Breakers::new(breaker)),
            backoff,
            clock: Arc::new(Instant::now),
        }
    }

    /// The process-wide caller, whose breakers every `api_caller` task shares.
    pub fn shared() -> &'static ApiCaller {
        static SHARED: LazyLock<ApiCaller> =
            LazyLock::new(|| ApiCaller::new(breaker::Options::default(), Backoff::default()));
        &SHARED
    }

    /// Breaker decisions read time from `clock` instead of the system.
    pub fn with_clock(mut self, clock: impl Fn() -> Instant + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    pub fn breakers(&self) -> &Breakers {
        &self.breakers
    }

    /// `api_caller`.
    pub async fn handle(&self, task: Task) -> Result<Value, HandlerError> {
        let request = ApiRequest::from_task(&task).map_err(HandlerError::permanent)?;
        self.call(&request).await
    }

    pub async fn call(&self, request: &ApiRequest) -> Result<Value, HandlerError> {
        let destination = request.destination();
        let started = Instant::now();
        let mut last_error = None;
        for try_index in 0..=request.max_retries {
            if try_index > 0 {
                tokio::time::sleep(self.backoff.delay(try_index as u32 - 1)).await;
            }
            if let Err(wait) = self.breakers.admit(&destination, (self.clock)()) {
                return Err(HandlerError::retry_after(
                    wait,
                    format!(
                        "circuit open for {destination} after {} consecutive failures{}; retry in {} ms",
                        self.breakers.options().failure_threshold,
                        last_error
                            .as_ref()
                            .map(|e: &HandlerError| format!(" (last: {})", e.message()))
                            .unwrap_or_default(),
                        wait.as_millis()
                    ),
                ));
            }
            let outcome = self.send(request).await;
            let what = format!("{} {}", request.method, request.url);
            match outcome {
                Ok(response) => {
                    let status = response.status().as_u16();
                    match status {
                        408 | 500..=599 => {
                            self.breakers.record_failure(&destination, (self.clock)());
                            let body = response.text().await.unwrap_or_default();
                            last_error = Some(HandlerError::retryable(format!(
                                "{what} answered {status}: {}",
                                snippet(&body)
                            )));
                        }
                        429 => {
                            self.breakers.record_success(&destination);
                            let wait = retry_after_header(response.headers());
                            let body = response.text().await.unwrap_or_default();
                            let message = format!("{what} answered 429: {}", snippet(&body));
                            return Err(match wait {
                                Some(d) => HandlerError::retry_after(d, message),
                                None => HandlerError::retryable(message),
                            });
                        }
                        400..=499 => {
                            self.breakers.record_success(&destination);
                            let body = response.text().await.unwrap_or_default();
                            return Err(HandlerError::permanent(format!(
                                "{what} answered {status}: {}",
                                snippet(&body)
                            )));
                        }
                        _ => {
                            self.breakers.record_success(&destination);
                            return output(request, response, started, try_index + 1).await;
                        }
                    }
                }
                Err(e) => {
                    self.breakers.record_failure(&destination, (self.clock)());
                    let why = if e.is_timeout() {
                        format!("no answer within {} ms", request.timeout.as_millis())
                    } else if e.is_connect() {
                        "connection failed".to_string()
                    } else {
                        "request failed".to_string()
                    };
                    last_error = Some(HandlerError::retryable(format!(
                        "{what}: cannot reach {destination}: {why}: {}",
                        error_chain(&e)
                    )));
                }
            }
        }
        Err(last_error.unwrap_or_else(|| HandlerError::retryable("no try was made")))
    }

    async fn send(&self, request: &ApiRequest) -> Result<reqwest::Response, reqwest::Error> {
        let mut builder = self
            .client
            .request(request.method.clone(), request.url.clone())
            .timeout(request.timeout);
        for (k, v) in &request.headers {
            builder = builder.header(k, v);
        }
        builder = match &request.body {
            None => builder,
            Some(Value::String(s)) => builder.body(s.clone()),
            Some(v) => builder.json(v),
        };
        builder.send().await
    }
}

async fn output(
    request: &ApiRequest,
    response: reqwest::Response,
    started: Instant,
    tries: u64,
) -> Result<Value, HandlerError> {
    let status = response.status().as_u16();
    let mut headers = Map::new();
    for name in &request.response_headers {
        if let Some(v) = response
            .headers()
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
        {
            headers.insert(name.clone(), Value::String(v.to_string()));
        }
    }
    let bytes = response.bytes().await.map_err(|e| {
        HandlerError::retryable(format!("reading the answer of {}: {e}", request.url))
    })?;
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Ok(json!({
        "status": status,
        "headers": headers,
        "body": body,
        "duration_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "tries": tries,
    }))
}

fn snippet(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        return "(empty body)".into();
    }
    body.chars().take(200).collect()
}

/// The error and its sources, since reqwest's own message hides the cause.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::any;
    use baton_sdk::testing::TaskBuilder;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// Serves `statuses[i]` on the i-th request (the last one from then on), echoing
    /// the method, a header and the body.
    async fn server(statuses: Vec<u16>) -> (String, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let app = axum::Router::new().route(
            "/{*path}",
            any(
                move |method: axum::http::Method, headers: axum::http::HeaderMap, body: String| {
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    let status = statuses[n.min(statuses.len() - 1)];
                    async move {
                        let echo = json!({
                            "method": method.as_str(),
                            "x_test": headers.get("x-test").and_then(|v| v.to_str().ok()),
                            "body": body,
                        });
                        let mut r = (StatusCode::from_u16(status).unwrap(), axum::Json(echo))
                            .into_response();
                        r.headers_mut().insert("x-extra", "1".parse().unwrap());
                        if status == 429 {
                            r.headers_mut().insert("retry-after", "3".parse().unwrap());
                        }
                        r
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), calls)
    }

    fn caller(threshold: u32) -> ApiCaller {
        ApiCaller::new(
            breaker::Options {
                failure_threshold: threshold,
                cooldown: Duration::from_secs(30),
            },
            Backoff {
                base: Duration::from_millis(1),
                max: Duration::from_millis(1),
            },
        )
    }

    fn task(spec: Value) -> Task {
        TaskBuilder::new("api_caller").json(spec).build()
    }

    #[tokio::test]
    async fn calls_the_api_and_returns_status_headers_and_body() {
        let (base, calls) = server(vec![201]).await;
        let out = caller(5)
            .handle(
                TaskBuilder::new("api_caller")
                    .json(json!({"url": format!("{base}/items"), "method": "post",
                                 "body": {"n": 1}, "response_headers": ["X-Extra"]}))
                    .metadata(json!({"headers": {"x-test": "yes"}, "url": "http://ignored"}))
                    .build(),
            )
            .await
            .unwrap();
        assert_eq!(out["status"], 201);
        assert_eq!(out["tries"], 1);
        assert_eq!(out["headers"]["content-type"], "application/json");
        assert_eq!(out["headers"]["x-extra"], "1");
        assert_eq!(
            out["body"],
            json!({"method": "POST", "x_test": "yes", "body": "{\"n\":1}"})
        );
        assert!(out["duration_ms"].is_u64());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_server_error_is_retried_within_the_attempt() {
        let (base, calls) = server(vec![500, 503, 200]).await;
        let out = caller(5)
            .handle(task(json!({"url": format!("{base}/x")})))
            .await
            .unwrap();
        assert_eq!(
            (out["status"].as_u64(), out["tries"].as_u64()),
            (Some(200), Some(3))
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let (base, calls) = server(vec![500]).await;
        let err = caller(5)
            .handle(task(json!({"url": format!("{base}/x"), "max_retries": 1})))
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(!err.is_permanent());
        assert!(
            err.message()
                .starts_with(&format!("GET {base}/x answered 500: {{\"body\"")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn client_errors_are_permanent_and_429_waits() {
        let (base, _) = server(vec![404]).await;
        let err = caller(5)
            .handle(task(json!({"url": format!("{base}/x")})))
            .await
            .unwrap_err();
        assert!(err.is_permanent(), "{err}");
        assert!(
            err.message()
                .starts_with(&format!("GET {base}/x answered 404")),
            "{err}"
        );

        let (base, calls) = server(vec![429]).await;
        let err = caller(5)
            .handle(task(json!({"url": format!("{base}/x")})))
            .await
            .unwrap_err();
        assert_eq!(err.retry_after_delay(), Some(Duration::from_secs(3)));
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let (base, calls) = server(vec![408, 200]).await;
        let out = caller(5)
            .handle(task(json!({"url": format!("{base}/x")})))
            .await
            .unwrap();
        assert_eq!(
            (out["status"].as_u64(), calls.load(Ordering::SeqCst)),
            (Some(200), 2)
        );
    }

    #[tokio::test]
    async fn an_unreachable_url_is_a_clear_retryable_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = caller(10)
            .handle(task(
                json!({"url": format!("http://{addr}/x"), "max_retries": 1}),
            ))
            .await
            .unwrap_err();
        assert!(!err.is_permanent());
        assert_eq!(err.retry_after_delay(), None);
        assert!(
            err.message().starts_with(&format!(
                "GET http://{addr}/x: cannot reach {addr}: connection failed"
            )),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_breaker_opens_and_half_opens_per_destination() {
        let (base, calls) = server(vec![500, 500, 500, 200]).await;
        let now = Arc::new(Mutex::new(Instant::now()));
        let clock = now.clone();
        let caller = caller(3).with_clock(move || *clock.lock().unwrap());
        let spec = json!({"url": format!("{base}/x"), "max_retries": 5});
        // Three failed tries open the breaker in the middle of the attempt.
        let err = caller.handle(task(spec.clone())).await.unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(err.retry_after_delay(), Some(Duration::from_secs(30)));
        let destination = base.trim_start_matches("http://");
        assert!(
            err.message().starts_with(&format!(
                "circuit open for {destination} after 3 consecutive failures (last: GET {base}/x answered 500"
            )),
            "{err}"
        );
        // Other tasks for the same destination wait without calling it.
        *now.lock().unwrap() += Duration::from_secs(10);
        let err = caller.handle(task(spec.clone())).await.unwrap_err();
        assert_eq!(err.retry_after_delay(), Some(Duration::from_secs(20)));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // After the cooldown one probe goes through and closes it.
        *now.lock().unwrap() += Duration::from_secs(20);
        let out = caller.handle(task(spec)).await.unwrap();
        assert_eq!(out["status"], 200);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(
            caller.breakers().state(destination),
            breaker::State::Closed { failures: 0 }
        );
    }

    #[test]
    fn requests_are_validated() {
        let bad = |spec: Value| ApiRequest::from_task(&task(spec)).unwrap_err();
        assert_eq!(
            bad(json!({})),
            "url is required (in the json input or the metadata)"
        );
        assert_eq!(
            bad(json!({"url": "ftp://x/y"})),
            "url \"ftp://x/y\" must be an http or https address"
        );
        assert!(bad(json!({"url": "not a url"})).starts_with("url \"not a url\" is not valid"));
        assert_eq!(
            bad(json!({"url": "http://x", "method": "GE T"})),
            "method \"GE T\" is not an HTTP method"
        );
        assert_eq!(
            bad(json!({"url": "http://x", "headers": {"a": 1}})),
            "headers.a must be a string, got 1"
        );
        assert_eq!(
            bad(json!({"url": "http://x", "max_retries": 11})),
            "max_retries must be at most 10, got 11"
        );
        let ok =
            ApiRequest::from_task(&task(json!({"url": "https://api.example.com/v1"}))).unwrap();
        assert_eq!(ok.destination(), "api.example.com:443");
        assert_eq!(
            (ok.method, ok.timeout, ok.max_retries),
            (Method::GET, DEFAULT_TIMEOUT, 2)
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let b = Backoff::default();
        let ms = |n| b.delay(n).as_millis();
        assert_eq!(
            (ms(0), ms(1), ms(2), ms(4), ms(40)),
            (100, 200, 400, 1600, 2000)
        );
    }
}
