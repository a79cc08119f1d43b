//! A small blocking client for the admin API.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

pub struct Client {
    agent: ureq::Agent,
    addr: String,
    token: String,
}

/// Percent-encode a query or path value.
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    pub fn new(conn: &crate::Conn) -> Result<Self> {
        let token = match &conn.token {
            Some(t) => t.clone(),
            None => {
                let dir = conn
                    .data
                    .clone()
                    .unwrap_or_else(|| std::path::PathBuf::from("tollgate-data"));
                let p = dir.join("admin.token");
                std::fs::read_to_string(&p)
                    .with_context(|| format!("no TOLLGATE_TOKEN and cannot read {}", p.display()))?
                    .trim()
                    .to_string()
            }
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Self {
            agent,
            addr: conn.addr.trim_end_matches('/').to_string(),
            token,
        })
    }

    fn finish(
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        what: &str,
    ) -> Result<Value> {
        let mut resp = resp.map_err(|e| anyhow!("{what}: {e}"))?;
        let status = resp.status();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let body: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            let msg = body["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| body.to_string());
            if let Some(diags) = body["error"]["diagnostics"].as_array() {
                for d in diags {
                    eprintln!(
                        "{}:{}:{}: {}",
                        d["file"].as_str().unwrap_or(""),
                        d["line"],
                        d["column"],
                        d["message"].as_str().unwrap_or("")
                    );
                }
            }
            bail!("{what}: {status}: {msg}");
        }
        Ok(body)
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        let url = format!("{}{path}", self.addr);
        Self::finish(
            self.agent
                .get(&url)
                .header("Authorization", &format!("Bearer {}", self.token))
                .call(),
            &format!("GET {path}"),
        )
    }

    /// POST without a bearer token (join-token attestation).
    pub fn post_anonymous(&self, path: &str, body: &Value) -> Result<Value> {
        let url = format!("{}{path}", self.addr);
        Self::finish(
            self.agent.post(&url).send_json(body),
            &format!("POST {path}"),
        )
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let url = format!("{}{path}", self.addr);
        Self::finish(
            self.agent
                .post(&url)
                .header("Authorization", &format!("Bearer {}", self.token))
                .send_json(body),
            &format!("POST {path}"),
        )
    }

    pub fn delete(&self, path: &str) -> Result<Value> {
        let url = format!("{}{path}", self.addr);
        Self::finish(
            self.agent
                .delete(&url)
                .header("Authorization", &format!("Bearer {}", self.token))
                .call(),
            &format!("DELETE {path}"),
        )
    }
}
