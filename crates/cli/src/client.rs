//! A small REST client for the CLI. Takes several server URLs and moves to the next
//! one when a server cannot be reached.

use anyhow::{anyhow, Result};
use serde_json::Value;
use std::time::Duration;

pub struct Client {
    http: reqwest::Client,
    /// For event streams: no bound on the whole request, only on silence (the
    /// server sends a keep-alive comment every 15 s).
    streaming: reqwest::Client,
    servers: Vec<String>,
}

/// A request that reached a server and was refused: Baton's error shape.
#[derive(Debug)]
pub struct ApiFailure {
    pub code: String,
    pub message: String,
    pub details: Value,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        // The message already is the first problem: a list only for several.
        let problems = self.details.get("problems").and_then(|p| p.as_array());
        if let Some(problems) = problems.filter(|p| p.len() > 1) {
            for p in problems {
                write!(
                    f,
                    "\n  - {} {}",
                    p["field"].as_str().unwrap_or(""),
                    p["message"].as_str().unwrap_or("")
                )?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ApiFailure {}

impl ApiFailure {
    /// Baton's error shape, `{"error": {"code", "message", "details"}}`.
    fn from_body(status: u16, body: &Value) -> Self {
        let e = &body["error"];
        ApiFailure {
            code: e["code"].as_str().unwrap_or("http_error").to_string(),
            message: e["message"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| format!("http status {status}")),
            details: e["details"].clone(),
        }
    }
}

impl Client {
    pub fn new(servers: &str) -> Result<Self> {
        let servers: Vec<String> = servers
            .split(',')
            .map(|s| s.trim().trim_end_matches('/').to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if servers.is_empty() {
            return Err(anyhow!("no server given: use --server http://HOST:PORT"));
        }
        for s in &servers {
            if !(s.starts_with("http://") || s.starts_with("https://")) {
                return Err(anyhow!("server {s:?} must start with http:// or https://"));
            }
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .build()?;
        let streaming = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self {
            http,
            streaming,
            servers,
        })
    }

    /// Opens a server-sent event stream; a refusal is Baton's error, as for [`Client::request`].
    pub async fn stream(&self, path: &str) -> Result<reqwest::Response> {
        let mut last_err = None;
        for server in &self.servers {
            let req = self
                .streaming
                .get(format!("{server}{path}"))
                .header("accept", "text/event-stream");
            match req.send().await {
                Ok(resp) if resp.status().as_u16() >= 400 => {
                    let status = resp.status().as_u16();
                    let text = resp.text().await?;
                    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
                    return Err(ApiFailure::from_body(status, &value).into());
                }
                Ok(resp) => return Ok(resp),
                Err(e) if e.is_connect() || e.is_timeout() => {
                    last_err = Some(anyhow!("cannot reach {server}: {e}"));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("no server reachable")))
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let mut last_err = None;
        for server in &self.servers {
            let mut req = self.http.request(method.clone(), format!("{server}{path}"));
            if let Some(b) = body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.text().await?;
                    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
                    if status >= 400 {
                        return Err(ApiFailure::from_body(status, &value).into());
                    }
                    return Ok(value);
                }
                Err(e) if e.is_connect() || e.is_timeout() => {
                    last_err = Some(anyhow!("cannot reach {server}: {e}"));
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("no server reachable")))
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.request(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.request(reqwest::Method::POST, path, Some(body)).await
    }
}

/// Percent-encodes a path segment or query value.
pub fn enc(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::ApiFailure;
    use serde_json::json;

    #[test]
    fn problems_are_listed_only_when_there_are_several() {
        let one = ApiFailure {
            code: "invalid_argument".into(),
            message: "priority 99 is out of range".into(),
            details: json!({"problems": [{"field": "priority", "message": "99 is out of range"}]}),
        };
        assert_eq!(
            one.to_string(),
            "invalid_argument: priority 99 is out of range"
        );
        let two = ApiFailure {
            message: "task_type must not be empty (and 1 more problem)".into(),
            details: json!({"problems": [
                {"field": "task_type", "message": "must not be empty"},
                {"field": "timeout_ms", "message": "must be greater than zero"},
            ]}),
            ..one
        };
        assert_eq!(
            two.to_string(),
            "invalid_argument: task_type must not be empty (and 1 more problem)\n  \
             - task_type must not be empty\n  - timeout_ms must be greater than zero"
        );
    }
}
