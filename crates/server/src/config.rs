//! Server configuration (`tollgate.yaml` in the config directory).

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustBundleConfig {
    pub trust_domain: String,
    /// Path of a SPIFFE bundle (JWK Set), relative to the config directory.
    pub jwks_file: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "d_trust_domain")]
    pub trust_domain: String,
    #[serde(default = "d_issuer")]
    pub issuer: String,
    #[serde(default = "d_audience")]
    pub audience: String,
    #[serde(default = "d_svid_ttl")]
    pub svid_ttl_seconds: i64,
    #[serde(default = "d_join_ttl")]
    pub join_token_ttl_seconds: i64,
    #[serde(default = "d_task_ttl")]
    pub task_ttl_seconds: i64,
    #[serde(default = "d_task_max_ttl")]
    pub task_max_ttl_seconds: i64,
    #[serde(default)]
    pub trust_bundles: Vec<TrustBundleConfig>,
}

fn d_trust_domain() -> String {
    "acme.test".into()
}
fn d_issuer() -> String {
    "tollgate".into()
}
fn d_audience() -> String {
    "tollgate".into()
}
fn d_svid_ttl() -> i64 {
    300
}
fn d_join_ttl() -> i64 {
    3600
}
fn d_task_ttl() -> i64 {
    300
}
fn d_task_max_ttl() -> i64 {
    3600
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            trust_domain: d_trust_domain(),
            issuer: d_issuer(),
            audience: d_audience(),
            svid_ttl_seconds: d_svid_ttl(),
            join_token_ttl_seconds: d_join_ttl(),
            task_ttl_seconds: d_task_ttl(),
            task_max_ttl_seconds: d_task_max_ttl(),
            trust_bundles: vec![],
        }
    }
}

impl ServerConfig {
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let c: ServerConfig =
            serde_yaml_ng::from_str(text).map_err(|e| format!("tollgate.yaml: {e}"))?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("svid_ttl_seconds", self.svid_ttl_seconds),
            ("join_token_ttl_seconds", self.join_token_ttl_seconds),
            ("task_ttl_seconds", self.task_ttl_seconds),
            ("task_max_ttl_seconds", self.task_max_ttl_seconds),
        ];
        for (name, v) in positive {
            if v <= 0 {
                return Err(format!("tollgate.yaml: {name} must be positive"));
            }
        }
        if self.task_ttl_seconds > self.task_max_ttl_seconds {
            return Err("tollgate.yaml: task_ttl_seconds exceeds task_max_ttl_seconds".into());
        }
        tollgate_core::SpiffeId::parse(&format!("spiffe://{}/x", self.trust_domain))
            .map_err(|e| format!("tollgate.yaml: trust_domain: {e}"))?;
        Ok(())
    }
}
