//! Upstream MCP servers: how Tollgate starts or reaches them, the
//! credentials it injects, and the one place their answers are scrubbed of
//! those credentials.
//!
//! Invariants:
//! - Secret values are read once, at startup, and live only here. `Debug`
//!   prints names, never values; every string an upstream sends back (tool
//!   results, error messages, tool descriptions) passes through
//!   [`Upstream::redact`] before an agent, the audit log or a log line sees it.
//! - A stdio child gets an empty environment plus `PATH`, `HOME`, `LANG` and
//!   what its config names: Tollgate's own environment never leaks into it.
//!   It runs in its own directory (`DATA/upstreams/NAME`, 0700), not in the
//!   data directory beside the admin token and keys; and its stderr is
//!   scrubbed like its answers before it is logged. Answers are also
//!   scrubbed of the admin token, should a server find and read it.
//! - A connection that died is replaced before the next call is forwarded;
//!   a call that was already forwarded is never retried (it may have acted).

use crate::config::{McpConfig, UpstreamConfig, ValueSource};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ProgressNotificationParam, ProgressToken, Tool,
};
use rmcp::service::RunningService;
use rmcp::{Peer, RoleClient, RoleServer, ServiceError, ServiceExt};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Why an upstream could not answer. Messages are already scrubbed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {server} could not be reached: {message}")]
    Connect { server: String, message: String },
    #[error(
        "upstream {server} did not answer within {seconds} s; the call may still take effect there"
    )]
    Timeout { server: String, seconds: u64 },
    #[error("upstream {server} closed the connection during the call (did it crash?); the call may or may not have taken effect and is not retried")]
    Closed { server: String },
    #[error("upstream {server} answered with an error: {message}")]
    Protocol { server: String, message: String },
    #[error("upstream {server} sent a malformed answer (not a tool result); the call may or may not have taken effect and is not retried")]
    Malformed { server: String },
}

impl UpstreamError {
    /// Whether the call may have reached the tool and acted.
    pub fn may_have_acted(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. } | Self::Closed { .. } | Self::Malformed { .. }
        )
    }
}

/// A credential or setting as configured, resolved at startup.
struct Injected {
    name: String,
    value: String,
}

enum Transport {
    Stdio {
        program: PathBuf,
        args: Vec<String>,
        env: Vec<Injected>,
        cwd: PathBuf,
    },
    Http {
        url: String,
        headers: Vec<Injected>,
        /// Built at startup, with the TLS roots the config names.
        client: reqwest::Client,
    },
}

/// Install ring as the process's TLS crypto provider, if none is yet.
/// reqwest (under rmcp's HTTP client) is built without a provider of its own
/// and panics when asked for a client before one is installed, so every
/// process that may make an MCP HTTP client calls this first.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another installer is fine: one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The HTTP client for one upstream: the system's roots, or only the
/// `ca_file`'s; no redirects at all, so an injected header never follows
/// one to another host.
fn http_client(
    upstream: &str,
    ca_file: Option<&str>,
    config_dir: Option<&Path>,
) -> Result<reqwest::Client, String> {
    let path = ca_file.map(|file| match config_dir {
        Some(dir) => dir.join(file),
        None => PathBuf::from(file),
    });
    mcp_http_client(path.as_deref()).map_err(|e| format!("mcp upstream {upstream:?}: {e}"))
}

/// An HTTP client for MCP servers as the gateway makes them: TLS verified
/// against the system's roots or, given a PEM file, only its CAs; no
/// redirects. Also what `tollgate policy schema --from-mcp` uses.
pub fn mcp_http_client(ca_file: Option<&Path>) -> Result<reqwest::Client, String> {
    install_crypto_provider();
    let mut b = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "ca_file {} holds no PEM certificate",
                path.display()
            ));
        }
        b = b.tls_certs_only(certs);
    }
    b.build()
        .map_err(|e| format!("building the HTTP client: {e}"))
}

struct Connection {
    /// Kept so the connection (and a stdio child) lives; dropping it ends both.
    service: RunningService<RoleClient, ProgressRelay>,
    /// Replaced when the server says its list changed.
    tools: Arc<ToolList>,
    /// This connection's calls whose progress goes to an agent. Per
    /// connection: rmcp numbers progress tokens per peer, from 0 again after
    /// a restart, so a stale route must not catch a new call's progress.
    routes: Routes,
}

pub struct Upstream {
    pub name: String,
    transport: Transport,
    /// Every secret value, longest first, to cut out of answers.
    secrets: Vec<String>,
    conn: tokio::sync::Mutex<Option<Connection>>,
    /// Connected before: connecting again is a restart, and audited.
    connected_once: AtomicBool,
    /// After a failed connect: no new attempt before this instant, so a
    /// server that crashes on start is not respawned for every call.
    down: std::sync::Mutex<Option<Down>>,
    /// Shared by every upstream (see [`Upstreams::agents`]).
    agents: AgentSessions,
}

type Routes = Arc<std::sync::Mutex<HashMap<ProgressToken, ProgressRoute>>>;

/// Where an upstream's progress on a forwarded call goes: the agent's
/// session, under the agent's own progress token, above `floor` (the
/// notifications Tollgate itself sent while the call was held), since
/// progress under one token must only increase.
#[derive(Clone)]
pub struct ProgressRoute {
    pub peer: Peer<RoleServer>,
    pub token: ProgressToken,
    pub floor: f64,
    /// The last value relayed; notes that would not increase it (rmcp
    /// handles notifications concurrently, so they can come reordered) are dropped.
    last: Arc<std::sync::Mutex<Option<f64>>>,
}

impl ProgressRoute {
    /// `held`: how many notifications Tollgate sent while the call was held
    /// (values 1 to `held`); the tool's own start above them.
    pub fn new(peer: Peer<RoleServer>, token: ProgressToken, held: u32) -> Self {
        let (floor, last) = match held {
            0 => (0.0, None),
            n => (f64::from(n) + 1.0, Some(f64::from(n))),
        };
        Self {
            peer,
            token,
            floor,
            last: Arc::new(std::sync::Mutex::new(last)),
        }
    }
}

/// Removes a route when the call ends, however it ends.
struct RouteGuard {
    routes: Routes,
    token: ProgressToken,
}

impl RouteGuard {
    fn add(routes: &Routes, token: ProgressToken, route: ProgressRoute) -> Self {
        if let Ok(mut map) = routes.lock() {
            map.insert(token.clone(), route);
        }
        Self {
            routes: routes.clone(),
            token,
        }
    }
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.routes.lock() {
            map.remove(&self.token);
        }
    }
}

/// The gateway's client side of an upstream connection: it relays the
/// upstream's progress notifications for a forwarded call to the agent that
/// made it, scrubbed of the upstream's secrets; and when the upstream says
/// its tools changed, reads them again and tells every agent session to
/// re-list. Every other notification is dropped.
#[derive(Clone)]
struct ProgressRelay {
    routes: Routes,
    secrets: Arc<Vec<String>>,
    tools: Arc<ToolList>,
    agents: AgentSessions,
    server: String,
}

/// How long re-listing an upstream's tools may take after it says they changed.
const LIST_TIMEOUT: Duration = Duration::from_secs(15);

/// A connection's tools, replaced only by the newest listing.
#[derive(Default)]
pub(crate) struct ToolList {
    tools: arc_swap::ArcSwap<Vec<Tool>>,
    /// Bumped when a listing starts; a listing stores only if none began after it.
    generation: std::sync::atomic::AtomicU64,
    lock: std::sync::Mutex<()>,
}

impl ToolList {
    fn begin(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn store_if_newest(&self, generation: u64, tools: Vec<Tool>) -> bool {
        let Ok(_held) = self.lock.lock() else {
            return false;
        };
        if self.generation.load(Ordering::SeqCst) != generation {
            return false;
        }
        self.tools.store(Arc::new(tools));
        true
    }

    fn load_full(&self) -> Arc<Vec<Tool>> {
        self.tools.load_full()
    }
}

/// The agents' MCP sessions, to tell them when an upstream's tools changed,
/// each until its task's hard expiry at the latest. Closed and expired
/// sessions are dropped whenever one is added or told.
#[derive(Clone, Default)]
pub struct AgentSessions(Arc<std::sync::Mutex<Vec<AgentSession>>>);

/// An agent's session and its task's hard expiry (unix seconds).
type AgentSession = (Peer<RoleServer>, i64);

impl std::fmt::Debug for AgentSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map(|a| a.len()).unwrap_or(0);
        write!(f, "AgentSessions({n})")
    }
}

impl AgentSessions {
    /// `until`: the task's hard expiry (unix seconds); after it the
    /// session is never told again. (The system clock: this only prunes a
    /// list of whom to notify, it decides nothing.)
    pub fn add(&self, peer: Peer<RoleServer>, until: i64) {
        if let Ok(mut all) = self.0.lock() {
            let now = tollgate_core::Clock::now(&tollgate_core::SystemClock);
            all.retain(|(p, until)| *until > now && !p.is_transport_closed());
            all.push((peer, until));
        }
    }

    fn live(&self) -> Vec<Peer<RoleServer>> {
        match self.0.lock() {
            Ok(mut all) => {
                let now = tollgate_core::Clock::now(&tollgate_core::SystemClock);
                all.retain(|(p, until)| *until > now && !p.is_transport_closed());
                all.iter().map(|(p, _)| p.clone()).collect()
            }
            Err(_) => vec![],
        }
    }
}

impl rmcp::ClientHandler for ProgressRelay {
    async fn on_progress(
        &self,
        mut progress: ProgressNotificationParam,
        _ctx: rmcp::service::NotificationContext<RoleClient>,
    ) {
        let route = self
            .routes
            .lock()
            .ok()
            .and_then(|m| m.get(&progress.progress_token).cloned());
        let Some(route) = route else {
            return;
        };
        let value = route.floor + progress.progress;
        match route.last.lock() {
            Ok(mut last) if last.is_none_or(|l| value > l) => *last = Some(value),
            _ => return,
        }
        progress.progress = value;
        progress.total = progress.total.map(|t| route.floor + t);
        progress.progress_token = route.token;
        progress.message = progress
            .message
            .map(|m| crate::redact::cut(&m, &self.secrets));
        // An agent that went away is noticed by its own call's cancellation.
        let _ = route.peer.notify_progress(progress).await;
    }

    async fn on_tool_list_changed(&self, ctx: rmcp::service::NotificationContext<RoleClient>) {
        // Only the newest notification's list is kept: rmcp runs handlers
        // concurrently, so an older listing may finish last.
        let generation = self.tools.begin();
        let listed = tokio::time::timeout(LIST_TIMEOUT, ctx.peer.list_all_tools()).await;
        match listed {
            Err(_) => {
                tracing::warn!(server = %self.server, "upstream said its tools changed, but did not list them in time; keeping the old list");
            }
            Ok(Ok(listed)) => {
                let count = listed.len();
                if !self
                    .tools
                    .store_if_newest(generation, redact_tools_with(&self.secrets, listed))
                {
                    return;
                }
                tracing::info!(server = %self.server, tools = count, "upstream tool list changed; agents told to re-list");
                // Each on its own and bounded: one stalled agent stream must
                // not hold the others, nor a task forever.
                for agent in self.agents.live() {
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(5),
                            agent.notify_tool_list_changed(),
                        )
                        .await;
                    });
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(server = %self.server, error = %crate::redact::cut(&e.to_string(), &self.secrets), "upstream said its tools changed, but listing them failed; keeping the old list");
            }
        }
    }
}

struct Down {
    until: tokio::time::Instant,
    backoff: Duration,
    message: String,
}

/// First wait after a failed connect; doubled on each failure up to the max.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, names): (&str, Vec<&str>) = match &self.transport {
            Transport::Stdio { env, .. } => {
                ("stdio", env.iter().map(|i| i.name.as_str()).collect())
            }
            Transport::Http { headers, .. } => {
                ("http", headers.iter().map(|i| i.name.as_str()).collect())
            }
        };
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("transport", &kind)
            .field("injects", &names)
            .finish()
    }
}

/// The configured upstreams, by name.
#[derive(Debug, Default)]
pub struct Upstreams {
    list: Vec<Arc<Upstream>>,
    pub call_timeout: Duration,
    /// Every agent MCP session, told when an upstream's tools change.
    pub agents: AgentSessions,
}

/// A live peer to forward to, and whether getting it meant a restart.
pub struct Live {
    pub peer: Peer<RoleClient>,
    pub tools: Arc<Vec<Tool>>,
    pub restarted: bool,
    routes: Routes,
}

impl Upstreams {
    /// Resolve every configured credential now, so a missing secret stops
    /// startup instead of failing the first call.
    /// `also_secret`: Tollgate's own secrets (the admin token), cut out of
    /// every answer too. Every secret is registered for log scrubbing.
    pub fn from_config(
        config: &McpConfig,
        config_dir: Option<&Path>,
        data_dir: &Path,
        also_secret: &[String],
    ) -> Result<Self, String> {
        let mut list = Vec::new();
        let agents = AgentSessions::default();
        for u in &config.upstreams {
            let upstream = Upstream::from_config(u, config_dir, data_dir, also_secret, &agents)?;
            crate::redact::register(upstream.secrets.iter().cloned());
            list.push(Arc::new(upstream));
        }
        Ok(Self {
            list,
            call_timeout: Duration::from_secs(config.call_timeout_seconds),
            agents,
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.list.iter()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.list.iter().find(|u| u.name == name)
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

fn resolve(
    upstream: &str,
    key: &str,
    src: &ValueSource,
    config_dir: Option<&Path>,
) -> Result<(String, bool), String> {
    let at = format!("mcp upstream {upstream:?}: {key}");
    let (raw, secret) = match (&src.env, &src.file, &src.value) {
        (Some(var), None, None) => match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => (v.trim().to_string(), true),
            _ => {
                return Err(format!(
                    "{at}: environment variable {var} is unset or empty"
                ))
            }
        },
        (None, Some(file), None) => {
            let path = match config_dir {
                Some(dir) => dir.join(file),
                None => PathBuf::from(file),
            };
            check_private(&path).map_err(|e| format!("{at}: {e}"))?;
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("{at}: {}: {e}", path.display()))?;
            let text = text.trim().to_string();
            if text.is_empty() {
                return Err(format!("{at}: {} is empty", path.display()));
            }
            (text, true)
        }
        (None, None, Some(v)) => (v.clone(), false),
        _ => return Err(format!("{at}: give exactly one of env, file or value")),
    };
    Ok((format!("{}{raw}", src.prefix), secret))
}

/// A secret file must not be readable by group or others, as ssh insists
/// for keys: a world-readable credential is already leaked.
fn check_private(path: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "{} is readable by group or others; chmod 600 it",
                path.display()
            ));
        }
    }
    let _ = path;
    Ok(())
}

/// A URL as it may be shown (status, errors): without user, password,
/// query or fragment, where SaaS MCP servers often carry a key.
fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "[unparsable url]".into(),
    }
}

/// An error with its causes (`: `-joined), since HTTP and TLS errors keep
/// the useful part, such as "invalid peer certificate: UnknownIssuer", in
/// their sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
        source = cause.source();
    }
    text
}

/// A failed handshake, saying what failed underneath (rmcp's transport
/// error keeps its cause, such as a TLS failure, out of its message).
pub fn handshake_error(e: &rmcp::service::ClientInitializeError) -> String {
    match e {
        rmcp::service::ClientInitializeError::TransportError { error, context } => {
            use rmcp::transport::streamable_http_client::StreamableHttpError;
            let cause = match error
                .error
                .downcast_ref::<StreamableHttpError<reqwest::Error>>()
            {
                Some(StreamableHttpError::Client(http)) => error_chain(http),
                _ => error_chain(&*error.error),
            };
            format!("{cause}; {context}")
        }
        other => error_chain(other),
    }
}

/// A directory only its owner can enter, created if need be.
fn private_dir(path: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(path.to_path_buf())
}

/// Header names the MCP transport sets itself.
const RESERVED_HEADERS: &[&str] = &["accept", "mcp-session-id", "last-event-id", "content-type"];

impl Upstream {
    fn from_config(
        u: &UpstreamConfig,
        config_dir: Option<&Path>,
        data_dir: &Path,
        also_secret: &[String],
        agents: &AgentSessions,
    ) -> Result<Self, String> {
        let mut secrets = also_secret.to_vec();
        let mut injected = |sources: &std::collections::BTreeMap<String, ValueSource>| {
            let mut out = Vec::new();
            for (key, src) in sources {
                let (value, secret) = resolve(&u.name, key, src, config_dir)?;
                if secret {
                    // The bare secret as well as the prefixed value.
                    let bare = value[src.prefix.len()..].to_string();
                    if bare.len() >= 4 {
                        secrets.push(bare);
                    }
                    secrets.push(value.clone());
                }
                out.push(Injected {
                    name: key.clone(),
                    value,
                });
            }
            Ok::<_, String>(out)
        };
        let transport = match (&u.stdio, &u.http) {
            (Some(s), None) => {
                let program = if s.command == "tollgate" {
                    // This very binary: the example tools run without an install.
                    std::env::current_exe().map_err(|e| {
                        format!("mcp upstream {:?}: locating tollgate itself: {e}", u.name)
                    })?
                } else if s.command.contains('/') {
                    match config_dir {
                        Some(dir) => dir.join(&s.command),
                        None => PathBuf::from(&s.command),
                    }
                } else {
                    PathBuf::from(&s.command)
                };
                Transport::Stdio {
                    program,
                    args: s.args.clone(),
                    env: injected(&s.env)?,
                    cwd: private_dir(&data_dir.join("upstreams").join(&u.name))
                        .map_err(|e| format!("mcp upstream {:?}: {e}", u.name))?,
                }
            }
            (None, Some(h)) => {
                let headers = injected(&h.headers)?;
                // A URL that carries a user, password or query (where SaaS MCP
                // servers put keys) is itself a secret: cut from everything shown.
                if let Ok(u) = url::Url::parse(&h.url) {
                    if !u.username().is_empty() || u.password().is_some() || u.query().is_some() {
                        secrets.push(h.url.clone());
                        secrets.push(u.to_string());
                        for part in [u.password(), u.query()].into_iter().flatten() {
                            if part.len() >= 4 {
                                secrets.push(part.to_string());
                            }
                        }
                    }
                }
                for hd in &headers {
                    if RESERVED_HEADERS.contains(&hd.name.to_ascii_lowercase().as_str()) {
                        return Err(format!(
                            "mcp upstream {:?}: header {} is set by the MCP transport",
                            u.name, hd.name
                        ));
                    }
                    http::HeaderName::from_bytes(hd.name.as_bytes()).map_err(|e| {
                        format!("mcp upstream {:?}: header {}: {e}", u.name, hd.name)
                    })?;
                    http::HeaderValue::from_str(&hd.value).map_err(|_| {
                        format!(
                            "mcp upstream {:?}: header {} has a value HTTP cannot carry",
                            u.name, hd.name
                        )
                    })?;
                }
                Transport::Http {
                    url: h.url.clone(),
                    headers,
                    client: http_client(&u.name, h.ca_file.as_deref(), config_dir)?,
                }
            }
            _ => {
                return Err(format!(
                    "mcp upstream {:?}: give exactly one of stdio or http",
                    u.name
                ))
            }
        };
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Ok(Self {
            name: u.name.clone(),
            transport,
            secrets,
            conn: tokio::sync::Mutex::new(None),
            connected_once: AtomicBool::new(false),
            down: std::sync::Mutex::new(None),
            agents: agents.clone(),
        })
    }

    /// Cut every injected secret out of `text`, raw or JSON-escaped.
    pub fn redact(&self, text: &str) -> String {
        crate::redact::cut(text, &self.secrets)
    }

    /// Scrub every string in a JSON value.
    pub fn redact_json(&self, v: &mut serde_json::Value) {
        redact_json_with(&self.secrets, v)
    }
}

/// Tool descriptions scrubbed of `secrets` (a tool that cannot be
/// re-read after scrubbing is left out).
fn redact_tools_with(secrets: &[String], tools: Vec<Tool>) -> Vec<Tool> {
    if secrets.is_empty() {
        return tools;
    }
    tools
        .into_iter()
        .filter_map(|t| {
            let mut v = serde_json::to_value(&t).ok()?;
            redact_json_with(secrets, &mut v);
            serde_json::from_value(v).ok()
        })
        .collect()
}

/// Every string of a JSON value, keys too, scrubbed of `secrets`.
fn redact_json_with(secrets: &[String], v: &mut serde_json::Value) {
    use serde_json::Value;
    let redact = |t: &str| crate::redact::cut(t, secrets);
    match v {
        Value::String(s) => {
            let r = redact(s);
            if r != *s {
                *s = r;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| redact_json_with(secrets, x)),
        Value::Object(m) => {
            // Keys too: a server may echo a secret as a map key.
            if m.keys().any(|k| redact(k) != *k) {
                *m = std::mem::take(m)
                    .into_iter()
                    .map(|(k, v)| (redact(&k), v))
                    .collect();
            }
            m.values_mut().for_each(|x| redact_json_with(secrets, x))
        }
        _ => {}
    }
}

/// A stdio upstream's command: an empty environment plus `PATH`, `HOME`,
/// `LANG` and what its config names, run in its own directory.
fn child_command(
    program: &Path,
    args: &[String],
    env: &[Injected],
    cwd: &Path,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).current_dir(cwd).env_clear();
    for keep in ["PATH", "HOME", "LANG"] {
        if let Ok(v) = std::env::var(keep) {
            cmd.env(keep, v);
        }
    }
    for i in env {
        cmd.env(&i.name, &i.value);
    }
    cmd
}

/// Log a stdio upstream's stderr, each line scrubbed of `secrets`.
async fn log_stderr(server: String, secrets: Vec<String>, stderr: tokio::process::ChildStderr) {
    // Drained until EOF whatever it holds (a child whose stderr pipe closed
    // would die on its next write): lines of any bytes, cut at 8 KiB.
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut reader = tokio::io::BufReader::new(stderr);
    let mut buf = Vec::new();
    let mut errors = 0;
    // Inside a line longer than 8 KiB: its rest is skipped.
    let mut skipping = false;
    let longest = secrets.iter().map(String::len).max().unwrap_or(0);
    loop {
        buf.clear();
        match (&mut reader).take(8192).read_until(b'\n', &mut buf).await {
            Ok(0) => break,
            Err(_) if errors >= 100 => break,
            Ok(_) => {
                errors = 0;
                let whole = buf.ends_with(b"\n");
                if std::mem::replace(&mut skipping, !whole) {
                    continue;
                }
                if !whole {
                    // Cut: a secret may straddle the cut, so drop as much
                    // as the longest secret.
                    buf.truncate(buf.len().saturating_sub(longest));
                    buf.extend_from_slice(" […]".as_bytes());
                }
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']);
                tracing::info!(target: "tollgate::upstream", server, "{}", crate::redact::cut(line, &secrets));
            }
            // A read error other than EOF: keep draining.
            Err(_) => {
                errors += 1;
                tokio::time::sleep(Duration::from_millis(10)).await
            }
        }
    }
}

/// An HTTP upstream's configured headers; `Err` names one that is not valid HTTP.
fn header_map(
    headers: &[Injected],
) -> Result<HashMap<http::HeaderName, http::HeaderValue>, String> {
    let mut map = HashMap::new();
    for h in headers {
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(h.name.as_bytes()),
            http::HeaderValue::from_str(&h.value),
        ) else {
            return Err(format!("header {} is not valid HTTP", h.name));
        };
        map.insert(name, value);
    }
    Ok(map)
}

impl Upstream {
    fn redact_result(&self, result: CallToolResult) -> Result<CallToolResult, UpstreamError> {
        if self.secrets.is_empty() {
            return Ok(result);
        }
        let mut v = serde_json::to_value(&result).map_err(|e| self.protocol(e.to_string()))?;
        self.redact_json(&mut v);
        serde_json::from_value(v).map_err(|e| self.protocol(e.to_string()))
    }

    fn redact_tools(&self, tools: Vec<Tool>) -> Vec<Tool> {
        redact_tools_with(&self.secrets, tools)
    }

    fn protocol(&self, message: String) -> UpstreamError {
        UpstreamError::Protocol {
            server: self.name.clone(),
            message: self.redact(&message),
        }
    }

    fn relay(&self, routes: &Routes, tools: &Arc<ToolList>) -> ProgressRelay {
        ProgressRelay {
            routes: routes.clone(),
            secrets: Arc::new(self.secrets.clone()),
            tools: tools.clone(),
            agents: self.agents.clone(),
            server: self.name.clone(),
        }
    }

    /// What an operator needs to see: reached or not, why not, which tools.
    /// Never waits for a connect in progress, and names no secret (the
    /// program and URL only, not arguments or headers).
    pub fn status(&self, catalog: &tollgate_core::Catalog) -> serde_json::Value {
        use serde_json::json;
        let (transport, target) = match &self.transport {
            Transport::Stdio { program, .. } => ("stdio", program.display().to_string()),
            Transport::Http { url, .. } => ("http", shown_url(url)),
        };
        let (state, tools) = match self.conn.try_lock() {
            Err(_) => ("connecting", None),
            Ok(c) => match c.as_ref() {
                Some(c) if !c.service.peer().is_transport_closed() => {
                    ("connected", Some(c.tools.load_full()))
                }
                Some(_) => ("closed", None),
                None => ("not connected", None),
            },
        };
        let down = self.down.lock().ok().and_then(|d| {
            d.as_ref().map(|d| {
                let wait = d
                    .until
                    .saturating_duration_since(tokio::time::Instant::now());
                json!({"last_error": d.message, "retry_after_ms": wait.as_millis() as u64})
            })
        });
        let tools = tools.map(|tools| {
            tools
                .iter()
                .map(|t| {
                    let bound = catalog
                        .by_tool(&t.name)
                        .filter(|(_, _, b)| b.server == self.name)
                        .map(|(action, _, _)| action.to_string());
                    json!({"name": t.name, "operation": bound})
                })
                .collect::<Vec<_>>()
        });
        json!({
            "name": self.name, "transport": transport, "target": self.redact(&target),
            "state": state, "ever_connected": self.connected_once.load(Ordering::SeqCst),
            "failure": down, "tools": tools,
        })
    }

    /// The live connection, made (or remade, if the old one died) now.
    pub async fn live(&self, timeout: Duration) -> Result<Live, UpstreamError> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            if !c.service.peer().is_transport_closed() {
                return Ok(Live {
                    peer: c.service.peer().clone(),
                    tools: c.tools.load_full(),
                    restarted: false,
                    routes: c.routes.clone(),
                });
            }
        }
        // Drop the dead connection first, so a stdio child is reaped.
        *conn = None;
        if let Ok(down) = self.down.lock() {
            if let Some(d) = down.as_ref() {
                let now = tokio::time::Instant::now();
                if now < d.until {
                    return Err(UpstreamError::Connect {
                        server: self.name.clone(),
                        message: format!(
                            "{} (not tried again for {} ms)",
                            d.message,
                            (d.until - now).as_millis()
                        ),
                    });
                }
            }
        }
        // Starting a process and a handshake can take longer than a call
        // on a busy machine; a short call timeout must not prevent it.
        let timeout = timeout.max(Duration::from_secs(15));
        let attempt = tokio::time::timeout(timeout, self.connect())
            .await
            .unwrap_or_else(|_| {
                Err(UpstreamError::Connect {
                    server: self.name.clone(),
                    message: format!("no MCP handshake within {} s", timeout.as_secs()),
                })
            });
        let fresh = match attempt {
            Ok(c) => {
                if let Ok(mut down) = self.down.lock() {
                    *down = None;
                }
                c
            }
            Err(e) => {
                if let Ok(mut down) = self.down.lock() {
                    let backoff = down
                        .as_ref()
                        .map_or(FIRST_BACKOFF, |d| (d.backoff * 2).min(MAX_BACKOFF));
                    let message = match &e {
                        UpstreamError::Connect { message, .. } => message.clone(),
                        other => other.to_string(),
                    };
                    *down = Some(Down {
                        until: tokio::time::Instant::now() + backoff,
                        backoff,
                        message,
                    });
                }
                return Err(e);
            }
        };
        let live = Live {
            peer: fresh.service.peer().clone(),
            tools: fresh.tools.load_full(),
            restarted: self.connected_once.swap(true, Ordering::SeqCst),
            routes: fresh.routes.clone(),
        };
        *conn = Some(fresh);
        Ok(live)
    }

    async fn connect(&self) -> Result<Connection, UpstreamError> {
        let routes = Routes::default();
        let tools = Arc::new(ToolList::default());
        let failed = |message: String| UpstreamError::Connect {
            server: self.name.clone(),
            message: self.redact(&message),
        };
        let service = match &self.transport {
            Transport::Stdio {
                program,
                args,
                env,
                cwd,
            } => {
                let cmd = child_command(program, args, env, cwd);
                let (transport, stderr) = rmcp::transport::TokioChildProcess::builder(cmd)
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|e| failed(format!("starting {}: {e}", program.display())))?;
                if let Some(stderr) = stderr {
                    // A server may print its credential; its stderr is
                    // scrubbed line by line like its answers.
                    tokio::spawn(log_stderr(self.name.clone(), self.secrets.clone(), stderr));
                }
                self.relay(&routes, &tools)
                    .serve(transport)
                    .await
                    .map_err(|e| failed(format!("MCP handshake: {e}")))?
            }
            Transport::Http {
                url,
                headers,
                client,
            } => {
                use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
                let map = header_map(headers).map_err(failed)?;
                let config =
                    StreamableHttpClientTransportConfig::with_uri(url.as_str()).custom_headers(map);
                let transport = rmcp::transport::StreamableHttpClientTransport::with_client(
                    client.clone(),
                    config,
                );
                self.relay(&routes, &tools)
                    .serve(transport)
                    .await
                    .map_err(|e| {
                        failed(format!(
                            "MCP handshake with {}: {}",
                            shown_url(url),
                            handshake_error(&e)
                        ))
                    })?
            }
        };
        // Tool lists are read when connecting and when the server says they
        // changed: the gateway, not the SDK's cache, decides when they are fresh.
        service
            .peer()
            .set_response_cache_config(rmcp::ClientCacheConfig::disabled())
            .await;
        let generation = tools.begin();
        let listed = service
            .peer()
            .list_all_tools()
            .await
            .map_err(|e| failed(format!("tools/list: {e}")))?;
        // A change announced meanwhile has listed (or is listing) newer tools.
        tools.store_if_newest(generation, self.redact_tools(listed));
        Ok(Connection {
            service,
            tools,
            routes,
        })
    }

    /// Forward one call. Never retried: once sent, it may have acted.
    /// The upstream's progress notifications for it go to `progress`, the
    /// agent's call (scrubbed like answers). On timeout the upstream is told
    /// the call is cancelled.
    pub async fn call(
        &self,
        live: &Live,
        params: CallToolRequestParams,
        timeout: Duration,
        progress: Option<ProgressRoute>,
    ) -> Result<CallToolResult, UpstreamError> {
        use rmcp::model::{CallToolRequest, ClientRequest, ServerResult};
        let peer = &live.peer;
        let timed_out = || UpstreamError::Timeout {
            server: self.name.clone(),
            seconds: timeout.as_secs(),
        };
        // One deadline for sending and answering: a wedged child whose
        // stdin is full must not hold the call past it.
        let deadline = tokio::time::Instant::now() + timeout;
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
        let sent = tokio::time::timeout_at(
            deadline,
            peer.send_request_with_option(request, rmcp::service::PeerRequestOptions::no_options()),
        )
        .await;
        let handle = match sent {
            Err(_) => return Err(timed_out()),
            Ok(Ok(h)) => h,
            Ok(Err(ServiceError::TransportClosed)) => {
                return Err(UpstreamError::Closed {
                    server: self.name.clone(),
                })
            }
            Ok(Err(e)) => return Err(self.protocol(e.to_string())),
        };
        let (id, token) = (handle.id.clone(), handle.progress_token.clone());
        let routed = progress.map(|route| RouteGuard::add(&live.routes, token, route));
        let answer = tokio::time::timeout_at(deadline, handle.await_response()).await;
        drop(routed);
        let answer = answer.map(|r| {
            r.and_then(|result| match result {
                ServerResult::CallToolResult(r) => Ok(r),
                _ => Err(ServiceError::UnexpectedResponse),
            })
        });
        match answer {
            Err(_) => {
                let note = rmcp::model::CancelledNotificationParam::new(
                    Some(id),
                    Some(format!("Tollgate's call timeout ({} s)", timeout.as_secs())),
                );
                // Best effort, and bounded: the upstream may be what is stuck.
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), peer.notify_cancelled(note)).await;
                Err(timed_out())
            }
            Ok(Err(ServiceError::TransportClosed)) => Err(UpstreamError::Closed {
                server: self.name.clone(),
            }),
            Ok(Err(e)) if peer.is_transport_closed() => {
                tracing::debug!(server = %self.name, error = %self.redact(&e.to_string()), "upstream died during a call");
                Err(UpstreamError::Closed {
                    server: self.name.clone(),
                })
            }
            Ok(Err(ServiceError::UnexpectedResponse)) => Err(UpstreamError::Malformed {
                server: self.name.clone(),
            }),
            Ok(Err(e)) => Err(self.protocol(e.to_string())),
            Ok(Ok(result)) => self.redact_result(result),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StdioUpstream;

    fn upstream_with_secret(secret: &str) -> Upstream {
        let dir = tempfile::tempdir().unwrap();
        let mut env = std::collections::BTreeMap::new();
        env.insert(
            "API_KEY".to_string(),
            ValueSource {
                value: None,
                env: None,
                file: Some("key".into()),
                prefix: "Bearer ".into(),
            },
        );
        let path = dir.path().join("key");
        std::fs::write(&path, format!("{secret}\n")).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let cfg = UpstreamConfig {
            name: "tools".into(),
            stdio: Some(StdioUpstream {
                command: "true".into(),
                args: vec![],
                env,
            }),
            http: None,
        };
        Upstream::from_config(
            &cfg,
            Some(dir.path()),
            dir.path(),
            &[],
            &AgentSessions::default(),
        )
        .unwrap()
    }

    #[test]
    fn secrets_are_cut_out_of_every_string_and_never_debug_printed() {
        let u = upstream_with_secret("s3cr\"et-value");
        let mut v = serde_json::json!({"a": ["x s3cr\"et-value y"], "b": "Bearer s3cr\"et-value", "c": 1,
            "nested": {"s3cr\"et-value": {"k s3cr\"et-value": true}}});
        u.redact_json(&mut v);
        let text = v.to_string();
        assert!(!text.contains("s3cr"), "{text}");
        assert_eq!(v["c"], 1);
        // JSON-escaped inside a string that is itself JSON text.
        let inner = serde_json::json!({"echo": "s3cr\"et-value"}).to_string();
        assert!(!u.redact(&inner).contains("s3cr"));
        let debug = format!("{u:?}");
        assert!(
            debug.contains("API_KEY") && !debug.contains("s3cr"),
            "{debug}"
        );
    }

    #[test]
    fn a_url_carrying_credentials_is_never_shown() {
        let url = "https://bob:pw-secret-1@mcp.example.test/mcp?api_key=key-secret-2";
        let cfg = UpstreamConfig {
            name: "saas".into(),
            stdio: None,
            http: Some(crate::config::HttpUpstream {
                url: url.into(),
                ca_file: None,
                headers: Default::default(),
            }),
        };
        let u = Upstream::from_config(
            &cfg,
            None,
            std::path::Path::new("/nonexistent"),
            &[],
            &AgentSessions::default(),
        )
        .unwrap();
        let status = u.status(&tollgate_core::Catalog::default()).to_string();
        assert!(status.contains("https://mcp.example.test/mcp"), "{status}");
        for secret in ["pw-secret-1", "key-secret-2", "bob"] {
            assert!(!status.contains(secret), "{status}");
        }
        let echoed = format!("error sending request for url ({url})");
        let cut = u.redact(&echoed);
        assert!(
            !cut.contains("pw-secret-1") && !cut.contains("key-secret-2"),
            "{cut}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "k").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let src = ValueSource {
            file: Some("key".into()),
            ..Default::default()
        };
        let err = resolve("tools", "API_KEY", &src, Some(dir.path())).unwrap_err();
        assert!(err.contains("chmod 600"), "{err}");
        let src = ValueSource {
            env: Some("TOLLGATE_TEST_SURELY_UNSET_VAR".into()),
            ..Default::default()
        };
        assert!(resolve("tools", "X", &src, None)
            .unwrap_err()
            .contains("unset"));
    }
}
