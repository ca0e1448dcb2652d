//! `llm`: one chat completion from an OpenAI-compatible server
//! (`POST {base_url}/chat/completions` with `stream: true`), read token by token from
//! its server-sent events. [`complete`] hands every token to a callback as it
//! arrives; the `llm` handler emits each one as a `token` event, so clients watching
//! the task (`GET /api/v1/tasks/{task_id}/events`) read the answer as it is written.
//!
//! Configuration comes from the environment through [`Config::from_env`]; without
//! it the `llm` type is not registered. Task input: a json part (or, field by field,
//! the metadata) with `messages` (`[{"role", "content"}]`) and/or `prompt`, and
//! optional `system`, `model`, `temperature`, `max_tokens`; each text part is one
//! more user message. Output: `{"text", "model", "finish_reason", "usage"}`
//! (`usage` as the server reports it, omitted when it does not).
//!
//! Failures: 429 is retried after the server's `Retry-After` (seconds), 408 and 5xx
//! and connection errors are retryable, any other refusal (400, 401, 404, …) is
//! permanent with the server's message.

use crate::request::{field, opt_f64, opt_str, opt_u64, retry_after_header};
use crate::sse::SseParser;
use baton_core::input::PartData;
use baton_sdk::{HandlerError, Task};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::LazyLock;
use std::time::Duration;

/// Where the model is served and which one to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Up to, not including, `/chat/completions` (`https://api.openai.com/v1`).
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    /// Bound on one completion, streaming included.
    pub timeout: Duration,
}

pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
pub const DEFAULT_MODEL: &str = "gpt-4o-mini";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

impl Config {
    /// `BATON_LLM_BASE_URL` (or `OPENAI_BASE_URL`), `BATON_LLM_API_KEY` (or
    /// `OPENAI_API_KEY`), `BATON_LLM_MODEL` (default [`DEFAULT_MODEL`]). `None` unless a
    /// base URL or a key is set; a key alone means [`DEFAULT_BASE_URL`].
    pub fn from_env() -> Option<Config> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`Config::from_env`] over any lookup, for tests.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Option<Config> {
        let var = |names: &[&str]| {
            names.iter().find_map(|n| {
                get(n)
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
            })
        };
        let base_url = var(&["BATON_LLM_BASE_URL", "OPENAI_BASE_URL"]);
        let api_key = var(&["BATON_LLM_API_KEY", "OPENAI_API_KEY"]);
        if base_url.is_none() && api_key.is_none() {
            return None;
        }
        Some(Config {
            base_url: base_url.unwrap_or_else(|| DEFAULT_BASE_URL.to_string()),
            model: var(&["BATON_LLM_MODEL"]).unwrap_or_else(|| DEFAULT_MODEL.to_string()),
            api_key,
            timeout: DEFAULT_TIMEOUT,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: "system".into(),
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user".into(),
            content: content.into(),
        }
    }
}

/// One completion request; `model` overrides the configured one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request {
    pub messages: Vec<Message>,
    pub model: Option<String>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub model: String,
    pub finish_reason: Option<String>,
    pub usage: Option<Value>,
}

/// The process's HTTP client (connection pool shared by every task).
pub fn client() -> reqwest::Client {
    static CLIENT: LazyLock<reqwest::Client> = LazyLock::new(|| {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default()
    });
    CLIENT.clone()
}

/// Streams one completion, calling `on_token` with every piece of text as it arrives.
pub async fn complete(
    client: &reqwest::Client,
    config: &Config,
    request: &Request,
    mut on_token: impl FnMut(&str),
) -> Result<Completion, HandlerError> {
    let model = request
        .model
        .clone()
        .unwrap_or_else(|| config.model.clone());
    let mut body = json!({
        "model": model,
        "messages": request.messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let Some(t) = request.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(n) = request.max_tokens {
        body["max_tokens"] = json!(n);
    }
    let url = format!("{}/chat/completions", config.base_url.trim_end_matches('/'));
    let mut builder = client
        .post(&url)
        .timeout(config.timeout)
        .header("accept", "text/event-stream")
        .json(&body);
    if let Some(key) = &config.api_key {
        builder = builder.bearer_auth(key);
    }
    let mut response = builder
        .send()
        .await
        .map_err(|e| HandlerError::retryable(format!("cannot reach the llm at {url}: {e}")))?;
    let status = response.status();
    if !status.is_success() {
        let retry_after = retry_after_header(response.headers());
        let text = response.text().await.unwrap_or_default();
        let message = format!("llm answered {}: {}", status.as_u16(), error_message(&text));
        return Err(match status.as_u16() {
            429 => match retry_after {
                Some(d) => HandlerError::retry_after(d, message),
                None => HandlerError::retryable(message),
            },
            408 | 500..=599 => HandlerError::retryable(message),
            _ => HandlerError::permanent(message),
        });
    }
    let mut parser = SseParser::default();
    let mut state = StreamState {
        text: String::new(),
        model,
        finish_reason: None,
        usage: None,
        done: false,
    };
    loop {
        let chunk = response
            .chunk()
            .await
            .map_err(|e| HandlerError::retryable(format!("llm stream broke: {e}")))?;
        let events = match &chunk {
            Some(bytes) => parser.push(bytes),
            None => parser.finish(),
        };
        for event in events {
            state.apply(&event.data, &mut on_token)?;
            if state.done {
                return Ok(state.into_completion());
            }
        }
        if chunk.is_none() {
            break;
        }
    }
    if state.finish_reason.is_some() {
        Ok(state.into_completion())
    } else {
        Err(HandlerError::retryable(
            "llm stream ended before the answer was complete",
        ))
    }
}

struct StreamState {
    text: String,
    model: String,
    finish_reason: Option<String>,
    usage: Option<Value>,
    done: bool,
}

impl StreamState {
    fn apply(&mut self, data: &str, on_token: &mut impl FnMut(&str)) -> Result<(), HandlerError> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let chunk: Value = serde_json::from_str(data).map_err(|e| {
            HandlerError::retryable(format!("llm sent an event that is not JSON: {e}"))
        })?;
        if let Some(err) = chunk.get("error") {
            return Err(HandlerError::retryable(format!(
                "llm reported an error mid-stream: {}",
                error_message(&err.to_string())
            )));
        }
        if let Some(m) = chunk.get("model").and_then(Value::as_str) {
            self.model = m.to_string();
        }
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(u.clone());
        }
        if let Some(choice) = chunk.get("choices").and_then(|c| c.get(0)) {
            if let Some(token) = choice
                .get("delta")
                .and_then(|d| d.get("content"))
                .and_then(Value::as_str)
            {
                if !token.is_empty() {
                    self.text.push_str(token);
                    on_token(token);
                }
            }
            if let Some(r) = choice.get("finish_reason").and_then(Value::as_str) {
                self.finish_reason = Some(r.to_string());
            }
        }
        Ok(())
    }

    fn into_completion(self) -> Completion {
        Completion {
            text: self.text,
            model: self.model,
            finish_reason: self.finish_reason,
            usage: self.usage,
        }
    }
}

/// The `error.message` of an OpenAI-style error body, else the body itself, shortened.
fn error_message(body: &str) -> String {
    let from_json = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        let e = v.get("error").unwrap_or(&v);
        e.get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| e.as_str().map(str::to_string))
    });
    let text = from_json.unwrap_or_else(|| body.trim().to_string());
    if text.is_empty() {
        return "(empty body)".into();
    }
    text.chars().take(300).collect()
}

/// The request a task describes (module docs).
pub fn request_from_task(task: &Task) -> Result<Request, String> {
    let spec = crate::request::json_object(task);
    let get = |key: &str| field(&spec, &task.metadata, key);
    let mut messages = Vec::new();
    if let Some(system) = opt_str(get("system"), "system")? {
        messages.push(Message::system(system));
    }
    if let Some(raw) = get("messages") {
        let parsed: Vec<Message> = serde_json::from_value(raw.clone()).map_err(|e| {
            format!("messages must be an array of {{\"role\", \"content\"}} objects: {e}")
        })?;
        messages.extend(parsed);
    }
    if let Some(prompt) = opt_str(get("prompt"), "prompt")? {
        messages.push(Message::user(prompt));
    }
    for part in &task.inputs {
        if let PartData::Text(t) = &part.data {
            messages.push(Message::user(t.clone()));
        }
    }
    if !messages.iter().any(|m| m.role != "system") {
        return Err("no prompt: send a text part, or a json part with prompt or messages".into());
    }
    Ok(Request {
        messages,
        model: opt_str(get("model"), "model")?,
        temperature: opt_f64(get("temperature"), "temperature")?,
        max_tokens: opt_u64(get("max_tokens"), "max_tokens")?,
    })
}

/// `llm`, against the given server.
pub async fn handle(task: Task, config: Config) -> Result<Value, HandlerError> {
    let request = request_from_task(&task).map_err(HandlerError::permanent)?;
    // Every token goes to the clients watching the task as it arrives.
    let c = complete(&client(), &config, &request, |t| task.emit("token", t)).await?;
    let mut out = json!({"text": c.text, "model": c.model, "finish_reason": c.finish_reason});
    if let Some(u) = c.usage {
        out["usage"] = u;
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::post;
    use axum::Json;
    use baton_sdk::testing::{Harness, TaskBuilder};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    #[test]
    fn config_from_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(Config::from_lookup(env(&[])), None);
        assert_eq!(Config::from_lookup(env(&[("BATON_LLM_MODEL", "m")])), None);
        assert_eq!(
            Config::from_lookup(env(&[("OPENAI_API_KEY", "sk"), ("OPENAI_BASE_URL", " ")])),
            Some(Config {
                base_url: DEFAULT_BASE_URL.into(),
                model: DEFAULT_MODEL.into(),
                api_key: Some("sk".into()),
                timeout: DEFAULT_TIMEOUT,
            })
        );
        assert_eq!(
            Config::from_lookup(env(&[
                ("BATON_LLM_BASE_URL", "http://local:8080/v1"),
                ("OPENAI_BASE_URL", "http://other"),
                ("BATON_LLM_MODEL", "llama"),
            ])),
            Some(Config {
                base_url: "http://local:8080/v1".into(),
                model: "llama".into(),
                api_key: None,
                timeout: DEFAULT_TIMEOUT,
            })
        );
    }

    #[test]
    fn requests_from_tasks() {
        let t = TaskBuilder::new("llm")
            .json(json!({"prompt": "hi", "temperature": 0.5}))
            .text("more")
            .metadata(json!({"system": "be brief", "max_tokens": 20, "model": "m"}))
            .build();
        assert_eq!(
            request_from_task(&t).unwrap(),
            Request {
                messages: vec![
                    Message::system("be brief"),
                    Message::user("hi"),
                    Message::user("more")
                ],
                model: Some("m".into()),
                temperature: Some(0.5),
                max_tokens: Some(20),
            }
        );
        let empty = TaskBuilder::new("llm")
            .metadata(json!({"system": "s"}))
            .build();
        assert_eq!(
            request_from_task(&empty).unwrap_err(),
            "no prompt: send a text part, or a json part with prompt or messages"
        );
        let bad = TaskBuilder::new("llm")
            .json(json!({"messages": [1]}))
            .build();
        assert!(request_from_task(&bad)
            .unwrap_err()
            .starts_with("messages must be an array"));
    }

    /// A fake OpenAI-compatible server: answers with `script[i]` on the i-th call and
    /// records the request bodies.
    #[derive(Clone)]
    pub(crate) enum Answer {
        Stream(&'static str),
        /// Sends the first part of a stream, waits until the gate opens, then the rest.
        Gated(&'static str, &'static str, Arc<tokio::sync::Notify>),
        Status(u16, Option<&'static str>, &'static str),
    }

    pub(crate) async fn fake_llm(script: Vec<Answer>) -> (Config, Arc<Mutex<Vec<Value>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let calls = Arc::new(AtomicUsize::new(0));
        let seen_in = seen.clone();
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            post(move |headers: HeaderMap, Json(body): Json<Value>| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                seen_in.lock().unwrap().push(json!({
                    "body": body,
                    "auth": headers.get("authorization").and_then(|v| v.to_str().ok()),
                }));
                let answer = script[n.min(script.len() - 1)].clone();
                async move {
                    match answer {
                        Answer::Stream(s) => {
                            ([("content-type", "text/event-stream")], s).into_response()
                        }
                        Answer::Gated(first, rest, gate) => {
                            let parts = futures::stream::unfold(0, move |step| {
                                let gate = gate.clone();
                                async move {
                                    let part = match step {
                                        0 => first,
                                        1 => {
                                            gate.notified().await;
                                            rest
                                        }
                                        _ => return None,
                                    };
                                    Some((Ok::<_, std::io::Error>(part), step + 1))
                                }
                            });
                            (
                                [("content-type", "text/event-stream")],
                                axum::body::Body::from_stream(parts),
                            )
                                .into_response()
                        }
                        Answer::Status(code, retry_after, body) => {
                            let mut r = (StatusCode::from_u16(code).unwrap(), body).into_response();
                            if let Some(ra) = retry_after {
                                r.headers_mut().insert("retry-after", ra.parse().unwrap());
                            }
                            r
                        }
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let config = Config {
            base_url: format!("http://{addr}/v1/"),
            model: "fake-model".into(),
            api_key: Some("sk-test".into()),
            timeout: Duration::from_secs(10),
        };
        (config, seen)
    }

    pub(crate) const STREAM: &str = concat!(
        "data: {\"model\":\"fake-1\",\"choices\":[{\"delta\":{\"role\":\"assistant\"},\"finish_reason\":null}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"Sales \"},\"finish_reason\":null}]}\n\n",
        ": comment\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"rose 12%.\"},\"finish_reason\":null}]}\n\n",
        "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12}}\n\n",
        "data: [DONE]\n\n",
    );

    #[tokio::test]
    async fn tokens_are_streamed_and_assembled() {
        let (config, seen) = fake_llm(vec![Answer::Stream(STREAM)]).await;
        let mut tokens = Vec::new();
        let request = Request {
            messages: vec![Message::user("summarise")],
            ..Request::default()
        };
        let c = complete(&client(), &config, &request, |t| tokens.push(t.to_string()))
            .await
            .unwrap();
        assert_eq!(tokens, vec!["Sales ", "rose 12%."]);
        assert_eq!(
            c,
            Completion {
                text: "Sales rose 12%.".into(),
                model: "fake-1".into(),
                finish_reason: Some("stop".into()),
                usage: Some(
                    json!({"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12})
                ),
            }
        );
        let first_call = seen.lock().unwrap()[0].clone();
        let seen = [first_call];
        assert_eq!(seen[0]["auth"], "Bearer sk-test");
        assert_eq!(seen[0]["body"]["stream"], true);
        assert_eq!(seen[0]["body"]["model"], "fake-model");
        assert_eq!(
            seen[0]["body"]["messages"],
            json!([{"role": "user", "content": "summarise"}])
        );

        let (out, events) = Harness::new(move |task| handle(task, config.clone()))
            .run_with_events(TaskBuilder::new("llm").text("summarise").build())
            .await;
        let out = out.unwrap();
        assert_eq!(
            out,
            json!({"text": "Sales rose 12%.", "model": "fake-1", "finish_reason": "stop",
                   "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}})
        );
        // Each token was emitted as a `token` event; together they are the output.
        assert!(events.iter().all(|e| e.kind == "token"), "{events:?}");
        let streamed: String = events.iter().filter_map(|e| e.data.as_str()).collect();
        assert_eq!(streamed, out["text"]);
        assert_eq!(events.len(), 2);
    }

    #[tokio::test]
    async fn tokens_arrive_while_the_answer_is_still_being_written() {
        let split = STREAM.find(": comment").unwrap();
        let (first, rest) = STREAM.split_at(split);
        let gate = Arc::new(tokio::sync::Notify::new());
        let (config, _) = fake_llm(vec![Answer::Gated(first, rest, gate.clone())]).await;
        let request = Request {
            messages: vec![Message::user("summarise")],
            ..Request::default()
        };
        let mut tokens = Vec::new();
        // The server sends the rest only once the first token reached the caller:
        // a client that waited for the whole body would never finish.
        let c = tokio::time::timeout(
            Duration::from_secs(10),
            complete(&client(), &config, &request, |t| {
                tokens.push(t.to_string());
                gate.notify_one();
            }),
        )
        .await
        .expect("the first token arrives before the answer is complete")
        .unwrap();
        assert_eq!(tokens, ["Sales ", "rose 12%."]);
        assert_eq!(c.text, "Sales rose 12%.");
    }

    #[tokio::test]
    async fn server_failures_carry_retry_intent() {
        let (config, _) = fake_llm(vec![
            Answer::Status(500, None, "{\"error\":{\"message\":\"overloaded\"}}"),
            Answer::Status(429, Some("7"), "{\"error\":{\"message\":\"slow down\"}}"),
            Answer::Status(429, None, "busy"),
            Answer::Status(401, None, "{\"error\":{\"message\":\"bad key\"}}"),
            Answer::Status(400, None, ""),
            Answer::Stream("data: {\"choices\":[{\"delta\":{\"content\":\"cut\"}}]}\n\n"),
        ])
        .await;
        let request = Request {
            messages: vec![Message::user("x")],
            ..Request::default()
        };
        let mut results = Vec::new();
        for _ in 0..6 {
            results.push(
                complete(&client(), &config, &request, |_| {})
                    .await
                    .unwrap_err(),
            );
        }
        assert_eq!(
            results,
            vec![
                HandlerError::retryable("llm answered 500: overloaded"),
                HandlerError::retry_after(Duration::from_secs(7), "llm answered 429: slow down"),
                HandlerError::retryable("llm answered 429: busy"),
                HandlerError::permanent("llm answered 401: bad key"),
                HandlerError::permanent("llm answered 400: (empty body)"),
                HandlerError::retryable("llm stream ended before the answer was complete"),
            ]
        );
    }

    #[tokio::test]
    async fn unreachable_server_is_retryable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let config = Config {
            base_url: format!("http://{addr}/v1"),
            model: "m".into(),
            api_key: None,
            timeout: Duration::from_secs(5),
        };
        let err = handle(TaskBuilder::new("llm").text("x").build(), config)
            .await
            .unwrap_err();
        assert!(!err.is_permanent());
        assert!(
            err.message().starts_with(&format!(
                "cannot reach the llm at http://{addr}/v1/chat/completions"
            )),
            "{err}"
        );
    }
}
