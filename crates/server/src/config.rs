//! Server configuration (`tollgate.yaml` in the config directory).

use serde::Deserialize;
use std::path::PathBuf;

/// An external SPIFFE trust domain whose JWT-SVIDs are accepted: its keys
/// from a file, or from its SPIFFE bundle endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustBundleConfig {
    pub trust_domain: String,
    /// Path of a SPIFFE bundle (JWK Set), relative to the config directory.
    #[serde(default)]
    pub jwks_file: Option<String>,
    /// Or: where to fetch it, and again as it asks (`spiffe_refresh_hint`).
    #[serde(default)]
    pub bundle_endpoint: Option<BundleEndpointConfig>,
    /// The `iss` this domain's SVIDs must carry. Optional because the
    /// JWT-SVID spec does not fix `iss`; set it whenever the issuer is known.
    #[serde(default)]
    pub issuer: Option<String>,
}

/// `telemetry:` in tollgate.yaml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Where to send OTLP/HTTP (JSON) traces, e.g.
    /// `http://otel-collector:4318/v1/traces`; unset = no traces.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "tollgate".into(),
        }
    }
}

/// A SPIFFE bundle endpoint (the `https_web` profile: the server is
/// authenticated by its TLS certificate, against the system's roots or a
/// CA file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleEndpointConfig {
    /// `https://…`; the answer is a SPIFFE bundle or a plain JWK Set.
    pub url: String,
    /// Trust only the CAs in this PEM file (relative to the config
    /// directory) for the endpoint's certificate.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Fetch again every this many seconds, whatever the bundle's
    /// `spiffe_refresh_hint` says (default: the hint, else 300).
    #[serde(default)]
    pub refresh_seconds: Option<u64>,
}

/// Defaults of the approval workflow; policies override TTL and deny
/// threshold per permit with `@approval_ttl` and `@deny_threshold`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalsConfig {
    /// How long a pending approval waits for people before it expires (deny).
    pub default_ttl_seconds: i64,
    /// When a still-pending approval fires the `approval.escalated` webhook; 0 = never.
    pub escalate_after_seconds: i64,
    /// Distinct denials that end a request (Teleport's `deny` threshold).
    pub deny_threshold: u32,
    /// Longest long-poll a caller may ask for with `?wait=`.
    pub max_wait_seconds: u64,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self {
            default_ttl_seconds: 900,
            escalate_after_seconds: 300,
            deny_threshold: 1,
            max_wait_seconds: 60,
        }
    }
}

/// When signed checkpoints of the audit log are written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Write a checkpoint once this many entries were added since the last one ...
    pub checkpoint_every_entries: u64,
    /// ... or this many seconds passed and the log grew.
    pub checkpoint_every_seconds: i64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            checkpoint_every_entries: 1000,
            checkpoint_every_seconds: 10,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RateScope {
    /// Count the agent's allowed actions across all its tasks.
    Agent,
    /// Count the allowed actions of the task's whole delegation tree.
    TaskTree,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RateResponse {
    Deny,
    /// Deny, end the task and quarantine the agent until an admin releases it.
    Quarantine,
}

/// `rate_limits:` in tollgate.yaml: at most `max` allowed actions (of a
/// tier, or of one operation) per `per_seconds`, per agent or per task tree.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub name: String,
    pub scope: RateScope,
    #[serde(default)]
    pub tier: Option<String>,
    #[serde(default)]
    pub action: Option<String>,
    pub max: usize,
    pub per_seconds: i64,
    #[serde(default = "d_rate_response")]
    pub on_exceed: RateResponse,
}

fn d_rate_response() -> RateResponse {
    RateResponse::Deny
}

/// Approvers may sign in with ID tokens of one OIDC issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    pub issuer: String,
    pub audience: String,
    /// The issuer's JWK Set, relative to the config directory.
    pub jwks_file: String,
    #[serde(default = "d_name_claim")]
    pub name_claim: String,
    #[serde(default = "d_role_claim")]
    pub role_claim: String,
    /// Console sign-in through the issuer's own login page (the
    /// authorization code flow with PKCE). Without it, OIDC approvers
    /// paste an ID token into the console or the CLI.
    #[serde(default)]
    pub login: Option<OidcLogin>,
}

/// `approver_oidc.login`: this server as an OIDC client of the issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcLogin {
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub client_id: String,
    /// Where the issuer sends the browser back: this server's
    /// `/console/oidc/callback`, as browsers reach it (registered with the
    /// issuer as the client's redirect URI).
    pub redirect_uri: String,
    /// A confidential client's secret, in a file relative to the config
    /// directory; absent for a public client (PKCE alone).
    #[serde(default)]
    pub client_secret_file: Option<String>,
    #[serde(default = "d_scopes")]
    pub scopes: String,
}

fn d_scopes() -> String {
    "openid email".into()
}

impl OidcLogin {
    /// Endpoints over https (plain http only to a loopback host, for a
    /// local issuer), and a redirect URI that ends at our callback.
    pub fn validate(&self) -> Result<(), String> {
        for (name, url) in [
            ("authorization_endpoint", &self.authorization_endpoint),
            ("token_endpoint", &self.token_endpoint),
            ("redirect_uri", &self.redirect_uri),
        ] {
            let u = url::Url::parse(url)
                .map_err(|e| format!("tollgate.yaml: approver_oidc.login.{name}: {e}"))?;
            let loopback = matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
            if u.scheme() != "https" && !(u.scheme() == "http" && loopback) {
                return Err(format!(
                    "tollgate.yaml: approver_oidc.login.{name}: must be https:// (http:// only to a loopback host)"
                ));
            }
        }
        if !self.redirect_uri.ends_with("/console/oidc/callback") {
            return Err(
                "tollgate.yaml: approver_oidc.login.redirect_uri: must be this server's /console/oidc/callback"
                    .into(),
            );
        }
        if self.client_id.is_empty() || !self.scopes.split(' ').any(|s| s == "openid") {
            return Err(
                "tollgate.yaml: approver_oidc.login: client_id is required and scopes must include openid".into(),
            );
        }
        Ok(())
    }
}

fn d_name_claim() -> String {
    "email".into()
}
fn d_role_claim() -> String {
    "tollgate_role".into()
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// `{event, approval}`
    Json,
    /// A Slack incoming-webhook message: `{text}`.
    Slack,
}

/// Where approval notifications go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub name: String,
    pub url: String,
    #[serde(default = "d_format")]
    pub format: WebhookFormat,
    /// Events to send; empty = all of `approval.created`, `approval.escalated`,
    /// `approval.decided`, `approval.expired`, and the alerts `task.revoked`
    /// (a chain rule or playbook revoked a task) and `agent.quarantined`.
    #[serde(default)]
    pub events: Vec<String>,
}

fn d_format() -> WebhookFormat {
    WebhookFormat::Json
}

pub const WEBHOOK_EVENTS: [&str; 6] = [
    "approval.created",
    "approval.escalated",
    "approval.decided",
    "approval.expired",
    "task.revoked",
    "agent.quarantined",
];

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
    #[serde(default)]
    pub approvals: ApprovalsConfig,
    #[serde(default)]
    pub approver_oidc: Option<OidcConfig>,
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    #[serde(default)]
    pub audit: AuditConfig,
    /// How many hops a delegation chain may have.
    #[serde(default = "d_max_depth")]
    pub max_delegation_depth: u32,
    #[serde(default)]
    pub rate_limits: Vec<RateLimit>,
    /// The MCP gateway: upstream tool servers and how calls are held and forwarded.
    #[serde(default)]
    pub mcp: McpConfig,
    /// The web console for approvers and operators (`/console`).
    #[serde(default)]
    pub console: ConsoleConfig,
    /// Where state and the audit log live: the embedded SQLite file in the
    /// data directory (default), or PostgreSQL for several replicas.
    #[serde(default)]
    pub store: StoreConfig,
    /// OpenTelemetry traces (off unless `otlp_endpoint` is set).
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The URL clients reach this server at (`https://tollgate.example`),
    /// for the absolute URLs of metadata documents; default: the address it
    /// listens on. Never taken from a request's `Host` header.
    #[serde(default)]
    pub public_url: Option<String>,
    /// A second policy pack (a directory, relative to this one) evaluated
    /// beside the enforced pack on every decision and never enforced:
    /// where it would decide otherwise, a `decision.shadow_diff` entry.
    #[serde(default)]
    pub shadow_pack: Option<PathBuf>,
    /// The longest window a temporal rule (`rules/*.tgr`) may have, in
    /// days: how far back a decision may make the store look. A pack with a
    /// longer window does not load.
    #[serde(default = "d_max_rule_window_days")]
    pub max_rule_window_days: u32,
}

/// 90 days: a quarter's incidents, well past the 30 days rules ask for.
fn d_max_rule_window_days() -> u32 {
    90
}

/// At most ten years: beyond that a window is a typo, not a rule.
const MAX_RULE_WINDOW_DAYS: u32 = 3_650;

/// `store:` in tollgate.yaml; every field can be overridden from the
/// environment (`TOLLGATE_STORE`, `TOLLGATE_STORE_SCHEMA`,
/// `TOLLGATE_STORE_PASSWORD_FILE`, `TOLLGATE_STORE_CA_FILE`), which is how a
/// container is usually told.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite` (the default: `tollgate.db` in the data directory) or a
    /// `postgres://user@host:port/db` URL. The URL carries no password.
    #[serde(default)]
    pub url: Option<String>,
    /// The PostgreSQL schema to work in (created if missing; default: the
    /// server's `search_path`).
    #[serde(default)]
    pub schema: Option<String>,
    /// A file holding the database password (relative to the config
    /// directory), or the name of an environment variable that holds it:
    /// never the command line or the URL.
    #[serde(default)]
    pub password_file: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    /// TLS to PostgreSQL; `sslmode`/`sslrootcert` in the URL say the same.
    #[serde(default)]
    pub tls: StoreTlsConfig,
}

/// `store.tls:` in tollgate.yaml. Neither here nor in the URL: plain TCP to
/// a loopback host or Unix socket, `verify-full` to any other host.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreTlsConfig {
    /// `disable`, `require` (not verified: unsafe), `verify-ca` or
    /// `verify-full` (libpq's `sslmode`); default `verify-full` when a CA
    /// file is named.
    #[serde(default)]
    pub mode: Option<String>,
    /// PEM file of the CA certificates to trust instead of the built-in
    /// (Mozilla) roots; relative to the config directory.
    #[serde(default)]
    pub ca_file: Option<String>,
}

impl StoreTlsConfig {
    /// The mode, checked.
    pub fn mode(&self) -> Result<Option<tollgate_store::TlsMode>, String> {
        self.mode
            .as_deref()
            .map(|m| m.parse().map_err(|e| format!("store.tls.mode: {e}")))
            .transpose()
    }
}

impl StoreConfig {
    /// The environment's overrides, read through `var` (tests pass their own).
    pub fn with_env(mut self, var: impl Fn(&str) -> Option<String>) -> Self {
        if let Some(url) = var("TOLLGATE_STORE").filter(|v| !v.is_empty()) {
            self.url = Some(url);
        }
        if let Some(schema) = var("TOLLGATE_STORE_SCHEMA").filter(|v| !v.is_empty()) {
            self.schema = Some(schema);
        }
        if let Some(file) = var("TOLLGATE_STORE_PASSWORD_FILE").filter(|v| !v.is_empty()) {
            self.password_file = Some(file);
        }
        if let Some(file) = var("TOLLGATE_STORE_CA_FILE").filter(|v| !v.is_empty()) {
            self.tls.ca_file = Some(file);
        }
        self
    }

    /// The PostgreSQL URL, if the store is PostgreSQL.
    pub fn postgres_url(&self) -> Option<&str> {
        self.url
            .as_deref()
            .filter(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"))
    }

    pub fn validate(&self) -> Result<(), String> {
        self.tls.mode()?;
        match self.url.as_deref() {
            // TLS settings are not refused here: the file may hold them
            // while the environment gives the URL (as for password_file).
            None | Some("sqlite") => Ok(()),
            Some(_) if self.postgres_url().is_some() => {
                if self.password_file.is_some() && self.password_env.is_some() {
                    return Err("store: give password_file or password_env, not both".into());
                }
                Ok(())
            }
            Some(other) => Err(format!(
                "store.url: {:?} is neither `sqlite` nor a postgres:// URL",
                other.chars().take(40).collect::<String>()
            )),
        }
    }
}

/// `console:` in tollgate.yaml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Serve `/console` (default true).
    pub enabled: bool,
    /// A console session ends this long after sign-in, used or not: an
    /// on-call shift signs in again rather than keeping a session for days.
    pub session_minutes: u64,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            session_minutes: 30,
        }
    }
}

impl ConsoleConfig {
    fn validate(&self) -> Result<(), String> {
        if !(1..=720).contains(&self.session_minutes) {
            return Err("tollgate.yaml: console: session_minutes must be 1 to 720".into());
        }
        Ok(())
    }
}

/// `mcp:` in tollgate.yaml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct McpConfig {
    pub upstreams: Vec<UpstreamConfig>,
    /// Longest a forwarded `tools/call` may take before the agent gets a tool error.
    pub call_timeout_seconds: u64,
    /// How often a call held for approval sends a progress notification.
    pub progress_every_seconds: u64,
    /// An agent's MCP session ends after this long without traffic. A call
    /// held for approval without a progress token sends nothing, so this
    /// must outlast the approvals' TTL (15 minutes by default).
    pub session_idle_seconds: u64,
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            upstreams: vec![],
            call_timeout_seconds: 60,
            progress_every_seconds: 5,
            session_idle_seconds: 3600,
        }
    }
}

/// One upstream MCP server: a child process speaking MCP on stdio, or a
/// streamable-HTTP server. Credentials go in `env` / `headers`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    #[serde(default)]
    pub stdio: Option<StdioUpstream>,
    #[serde(default)]
    pub http: Option<HttpUpstream>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdioUpstream {
    /// Program to run; a path containing `/` is relative to the config directory.
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// The child's whole environment besides `PATH`, `HOME` and `LANG`:
    /// Tollgate's own environment (which holds its admin token) is not passed on.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, ValueSource>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpUpstream {
    /// The server's streamable-HTTP endpoint, `https://…/mcp` (or `http://`).
    pub url: String,
    /// PEM file of the CA certificates an https server's certificate must
    /// chain to, *instead of* the system's roots (a private CA); relative to
    /// the config directory.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Headers sent with every request (`Authorization`, API keys).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, ValueSource>,
}

/// Where a value Tollgate injects comes from. `env` and `file` are secrets:
/// read at startup, never logged, audited or answered, and cut out of
/// anything an upstream sends back. `value` is for plain settings only.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueSource {
    /// An environment variable of the Tollgate process.
    pub env: Option<String>,
    /// A file relative to the config directory, readable by its owner only.
    pub file: Option<String>,
    /// A literal, not secret.
    pub value: Option<String>,
    /// Put before the value, e.g. `"Bearer "` for an `Authorization` header.
    #[serde(default)]
    pub prefix: String,
}

fn d_max_depth() -> u32 {
    2
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
            approvals: ApprovalsConfig::default(),
            approver_oidc: None,
            webhooks: vec![],
            audit: AuditConfig::default(),
            max_delegation_depth: d_max_depth(),
            rate_limits: vec![],
            mcp: McpConfig::default(),
            console: ConsoleConfig::default(),
            store: StoreConfig::default(),
            public_url: None,
            telemetry: TelemetryConfig::default(),
            shadow_pack: None,
            max_rule_window_days: d_max_rule_window_days(),
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

    /// The limits every pack this server loads is held to (the enforced
    /// pack, reloads and shadow packs alike).
    pub fn pack_options(&self) -> tollgate_policy::LoadOptions {
        tollgate_policy::LoadOptions {
            max_rule_window: i64::from(self.max_rule_window_days) * 86_400,
        }
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
        let a = &self.approvals;
        if a.default_ttl_seconds <= 0
            || a.escalate_after_seconds < 0
            || a.deny_threshold == 0
            || a.max_wait_seconds == 0
        {
            return Err("tollgate.yaml: approvals: ttl, deny_threshold and max_wait must be positive, escalate_after not negative".into());
        }
        self.validate_public_url()?;
        if let Some(u) = &self.telemetry.otlp_endpoint {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(format!(
                    "tollgate.yaml: telemetry.otlp_endpoint {u:?} must be an http(s) URL (OTLP/HTTP, e.g. http://collector:4318/v1/traces)"
                ));
            }
        }
        self.validate_trust_bundles()?;
        if !(1..=MAX_RULE_WINDOW_DAYS).contains(&self.max_rule_window_days) {
            return Err(format!(
                "tollgate.yaml: max_rule_window_days is 1 to {MAX_RULE_WINDOW_DAYS}, got {}",
                self.max_rule_window_days
            ));
        }
        if self.audit.checkpoint_every_entries == 0 || self.audit.checkpoint_every_seconds <= 0 {
            return Err("tollgate.yaml: audit: checkpoint intervals must be positive".into());
        }
        for r in &self.rate_limits {
            if r.max == 0 || r.per_seconds <= 0 {
                return Err(format!(
                    "tollgate.yaml: rate limit {}: max and per_seconds must be positive",
                    r.name
                ));
            }
            if let Some(t) = &r.tier {
                if !["read", "contain", "change", "destructive"].contains(&t.as_str()) {
                    return Err(format!(
                        "tollgate.yaml: rate limit {}: unknown tier {t:?}",
                        r.name
                    ));
                }
            }
        }
        for w in &self.webhooks {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                return Err(format!(
                    "tollgate.yaml: webhook {}: url must be http(s)",
                    w.name
                ));
            }
            for e in &w.events {
                if !WEBHOOK_EVENTS.contains(&e.as_str()) {
                    return Err(format!(
                        "tollgate.yaml: webhook {}: unknown event {e:?}; known: {}",
                        w.name,
                        WEBHOOK_EVENTS.join(", ")
                    ));
                }
            }
        }
        self.mcp.validate()?;
        self.console.validate()?;
        if let Some(login) = self.approver_oidc.as_ref().and_then(|o| o.login.as_ref()) {
            login.validate()?;
        }
        self.store
            .validate()
            .map_err(|e| format!("tollgate.yaml: {e}"))?;
        tollgate_core::SpiffeId::parse(&format!("spiffe://{}/x", self.trust_domain))
            .map_err(|e| format!("tollgate.yaml: trust_domain: {e}"))?;
        Ok(())
    }
}

impl McpConfig {
    fn validate(&self) -> Result<(), String> {
        if self.call_timeout_seconds == 0 || self.progress_every_seconds == 0 {
            return Err(
                "tollgate.yaml: mcp: call_timeout_seconds and progress_every_seconds must be positive"
                    .into(),
            );
        }
        if self.session_idle_seconds < 60 {
            return Err("tollgate.yaml: mcp: session_idle_seconds must be at least 60".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for u in &self.upstreams {
            let at = format!("tollgate.yaml: mcp upstream {:?}", u.name);
            if u.name.is_empty() || !names.insert(u.name.as_str()) {
                return Err(format!("{at}: names must be non-empty and unique"));
            }
            // The name is also the stdio child's working directory under
            // the data directory (`upstreams/NAME`).
            if u.name.len() > 64
                || u.name.starts_with('.')
                || !u
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(format!(
                    "{at}: names are 1 to 64 of A-Z a-z 0-9 - _ . and do not start with a dot"
                ));
            }
            let sources = match (&u.stdio, &u.http) {
                (Some(s), None) => {
                    if s.command.is_empty() {
                        return Err(format!("{at}: stdio.command is empty"));
                    }
                    &s.env
                }
                (None, Some(h)) => {
                    let https = h.url.starts_with("https://");
                    if !https && !h.url.starts_with("http://") {
                        return Err(format!(
                            "{at}: http.url must start with https:// (or http://)"
                        ));
                    }
                    if h.ca_file.is_some() && !https {
                        return Err(format!("{at}: http.ca_file needs an https:// url"));
                    }
                    &h.headers
                }
                _ => return Err(format!("{at}: give exactly one of stdio or http")),
            };
            for (key, v) in sources {
                let given = [&v.env, &v.file, &v.value]
                    .iter()
                    .filter(|s| s.is_some())
                    .count();
                if given != 1 {
                    return Err(format!(
                        "{at}: {key}: give exactly one of env, file or value"
                    ));
                }
            }
        }
        Ok(())
    }
}

impl ServerConfig {
    /// `public_url`: an absolute http(s) URL to put paths after.
    fn validate_public_url(&self) -> Result<(), String> {
        if let Some(u) = &self.public_url {
            let scheme_ok = u.starts_with("https://") || u.starts_with("http://");
            let rest = u.split_once("://").map_or("", |(_, r)| r);
            if !scheme_ok
                || rest.is_empty()
                || u.ends_with('/')
                || u.contains(['?', '#'])
                || u.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(format!(
                "tollgate.yaml: public_url {u:?} must be an http(s) URL without a trailing slash, query or fragment"
            ));
            }
        }
        Ok(())
    }

    /// Each external trust domain: a valid name, once, from one source.
    fn validate_trust_bundles(&self) -> Result<(), String> {
        let mut domains = std::collections::BTreeSet::new();
        for b in &self.trust_bundles {
            let at = format!("tollgate.yaml: trust bundle {:?}", b.trust_domain);
            if b.trust_domain == self.trust_domain {
                return Err(format!(
                    "{at}: this is the built-in issuer's own trust domain"
                ));
            }
            if !domains.insert(b.trust_domain.as_str()) {
                return Err(format!("{at}: named twice"));
            }
            // The SPIFFE ID grammar's trust domain (also a file name under
            // the data directory, for a fetched bundle's saved copy).
            if tollgate_core::SpiffeId::parse(&format!("spiffe://{}/x", b.trust_domain))
                .map(|id| id.trust_domain() != b.trust_domain)
                .unwrap_or(true)
                || b.trust_domain.starts_with('.')
            {
                return Err(format!("{at}: not a valid SPIFFE trust domain"));
            }
            match (&b.jwks_file, &b.bundle_endpoint) {
                (Some(_), None) => {}
                (None, Some(e)) => {
                    if !e.url.starts_with("https://") {
                        return Err(format!(
                        "{at}: bundle_endpoint.url must start with https:// (the SPIFFE https_web profile)"
                    ));
                    }
                    if e.refresh_seconds == Some(0) {
                        return Err(format!(
                            "{at}: bundle_endpoint.refresh_seconds must be positive"
                        ));
                    }
                }
                _ => {
                    return Err(format!(
                        "{at}: give exactly one of jwks_file or bundle_endpoint"
                    ))
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(yaml: &str) -> Result<StoreConfig, String> {
        ServerConfig::from_yaml(&format!("store:\n{yaml}")).and_then(|c| {
            c.store.validate()?;
            Ok(c.store)
        })
    }

    #[test]
    fn store_tls_is_read_and_checked() {
        let ok = store("  url: postgres://t@db/t\n  tls: {mode: verify-ca, ca_file: db-ca.pem}\n")
            .unwrap();
        assert_eq!(
            ok.tls.mode().unwrap(),
            Some(tollgate_store::TlsMode::VerifyCa)
        );
        assert_eq!(ok.tls.ca_file.as_deref(), Some("db-ca.pem"));
        // The URL may come from the environment later.
        assert!(store("  tls: {mode: verify-full, ca_file: x.pem}\n").is_ok());
        let none = store("  url: postgres://t@db/t\n").unwrap();
        assert_eq!(none.tls.mode().unwrap(), None);
        // The environment names the CA file as it names the password file.
        let env = none.with_env(|k| (k == "TOLLGATE_STORE_CA_FILE").then(|| "/run/ca.pem".into()));
        assert_eq!(env.tls.ca_file.as_deref(), Some("/run/ca.pem"));
        for (bad, says) in [
            (
                "  url: postgres://t@db/t\n  tls: {mode: prefer}\n",
                "store.tls.mode: \"prefer\" is not supported",
            ),
            (
                "  url: postgres://t@db/t\n  tls: {mode: verify_full}\n",
                "store.tls.mode: unknown mode",
            ),
            (
                "  url: postgres://t@db/t\n  tls: {cafile: x.pem}\n",
                "unknown field",
            ),
        ] {
            let err = store(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    fn mcp(yaml: &str) -> Result<ServerConfig, String> {
        ServerConfig::from_yaml(&format!("mcp:\n{yaml}"))
    }

    #[test]
    fn mcp_upstreams_are_checked() {
        let ok = mcp("  upstreams:\n    - name: a\n      stdio: {command: tollgate, env: {K: {file: k}}}\n    - name: b\n      http: {url: \"http://127.0.0.1:9/mcp\", headers: {Authorization: {env: T, prefix: \"Bearer \"}}}\n").unwrap();
        assert_eq!(ok.mcp.upstreams.len(), 2);
        assert_eq!(ok.mcp.call_timeout_seconds, 60);
        for (bad, says) in [
            ("  upstreams:\n    - name: a\n      stdio: {command: x}\n    - name: a\n      stdio: {command: y}\n", "unique"),
            ("  upstreams:\n    - name: a\n", "exactly one of stdio or http"),
            ("  upstreams:\n    - name: ../x\n      stdio: {command: x}\n", "do not start with a dot"),
            ("  upstreams:\n    - name: a\n      http: {url: \"ftp://x/mcp\"}\n", "must start with https://"),
            ("  upstreams:\n    - name: a\n      http: {url: \"http://x/mcp\", ca_file: ca.pem}\n", "needs an https:// url"),
            ("  upstreams:\n    - name: a\n      stdio: {command: x, env: {K: {file: k, env: E}}}\n", "exactly one of env, file or value"),
            ("  call_timeout_seconds: 0\n", "positive"),
            ("  upstream: []\n", "unknown field"),
        ] {
            let err = mcp(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn trust_bundles_and_the_public_url_are_checked() {
        let tb = |yaml: &str| ServerConfig::from_yaml(&format!("trust_bundles:\n{yaml}"));
        assert!(tb("  - {trust_domain: partner.test, jwks_file: p.json}\n").is_ok());
        let ok = tb("  - trust_domain: partner.test\n    bundle_endpoint: {url: \"https://b.partner.test/\", refresh_seconds: 60}\n").unwrap();
        assert_eq!(
            ok.trust_bundles[0]
                .bundle_endpoint
                .as_ref()
                .map(|e| e.refresh_seconds),
            Some(Some(60))
        );
        for (yaml, why) in [
            ("  - {trust_domain: partner.test}\n", "exactly one of"),
            ("  - {trust_domain: partner.test, jwks_file: p.json, bundle_endpoint: {url: \"https://b/\"}}\n", "exactly one of"),
            ("  - {trust_domain: partner.test, bundle_endpoint: {url: \"http://b/\"}}\n", "https://"),
            ("  - {trust_domain: partner.test, bundle_endpoint: {url: \"https://b/\", refresh_seconds: 0}}\n", "positive"),
            ("  - {trust_domain: ../etc, jwks_file: p.json}\n", "not a valid SPIFFE trust domain"),
            ("  - {trust_domain: acme.test, jwks_file: p.json}\n", "own trust domain"),
            ("  - {trust_domain: p.test, jwks_file: a.json}\n  - {trust_domain: p.test, jwks_file: b.json}\n", "named twice"),
        ] {
            let err = tb(yaml).err().unwrap_or_default();
            assert!(err.contains(why), "{yaml}: {err}");
        }
        for bad in [
            "tollgate.acme.test",
            "https://t.acme.test/",
            "https://t?x=1",
            "https://",
            "ftp://t",
        ] {
            let err = ServerConfig::from_yaml(&format!("public_url: \"{bad}\"\n")).err();
            assert!(err.is_some_and(|e| e.contains("public_url")), "{bad}");
        }
        assert!(ServerConfig::from_yaml("public_url: https://t.acme.test/base\n").is_ok());
    }
}
