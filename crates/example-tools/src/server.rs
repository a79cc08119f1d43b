//! The MCP face of the example tools: one handler served on stdio or on
//! streamable HTTP. It knows one API token, as a real tool server would, and
//! refuses every call that does not carry it.

use crate::state::{StateFile, ToolError, TOOLS};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities,
    ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The environment variable a stdio client (the gateway) puts the token in.
pub const TOKEN_ENV: &str = "IR_TOOLS_TOKEN";

/// How the server is run.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The API token callers must present; `None` accepts anyone.
    pub token: Option<String>,
    /// Tools that sleep this long before answering (to try call timeouts).
    pub slow: Vec<(String, Duration)>,
    /// Put the credential the caller presented into every answer. A careless
    /// server does this by accident; the gateway must cut it out.
    pub echo_credential: bool,
    /// Tools whose call makes the process exit before answering, as a crash would.
    pub crash_on: Vec<String>,
    /// Tools answered with a malformed JSON-RPC message on stdout (stdio only):
    /// a broken server, for the gateway's tests.
    pub malformed: Vec<String>,
    /// Tools left out of tools/list until the first call, which then
    /// announces `notifications/tools/list_changed` (a server whose tools change).
    pub late_tools: Vec<String>,
    /// Tools answered with a JSON-RPC "invalid params" error that quotes the
    /// arguments, as validators do: the gateway must not store secrets from it.
    pub invalid_params: Vec<String>,
}

#[derive(Clone)]
pub struct ExampleTools {
    state: Arc<Mutex<StateFile>>,
    settings: Arc<Settings>,
    /// The late tools are listed (after the first call).
    revealed: Arc<std::sync::atomic::AtomicBool>,
    /// The credential the caller presented (stdio: from the environment).
    presented: Option<String>,
}

impl ExampleTools {
    pub fn new(state: StateFile, settings: Settings, presented: Option<String>) -> Self {
        Self {
            state: Arc::new(Mutex::new(state)),
            settings: Arc::new(settings),
            revealed: Arc::default(),
            presented,
        }
    }

    fn presented<'a>(&'a self, ctx: &'a RequestContext<RoleServer>) -> Option<&'a str> {
        // Over HTTP the bearer token of the current request; on stdio the
        // environment this process was started with.
        ctx.extensions
            .get::<http::request::Parts>()
            .and_then(|p| p.headers.get(http::header::AUTHORIZATION))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or(self.presented.as_deref())
    }

    fn run(&self, name: &str, args: &serde_json::Map<String, serde_json::Value>) -> CallToolResult {
        let answer = match self.state.lock() {
            Ok(state) => state.call(name, args),
            Err(_) => Err(ToolError::State("state lock poisoned".into())),
        };
        match answer {
            Ok(v) => CallToolResult::success(vec![ContentBlock::text(v.to_string())]),
            Err(e) => CallToolResult::error(vec![ContentBlock::text(e.to_string())]),
        }
    }
}

pub fn tool_list() -> Vec<Tool> {
    TOOLS
        .iter()
        .map(|t| Tool::new(t.name, t.description, t.input_schema()))
        .collect()
}

impl ServerHandler for ExampleTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("ir-tools", env!("CARGO_PKG_VERSION")))
        .with_instructions("Example incident-response tools acting on a local state file.")
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let revealed = self.revealed.load(std::sync::atomic::Ordering::SeqCst);
        let tools = tool_list()
            .into_iter()
            .filter(|t| revealed || !self.settings.late_tools.iter().any(|l| *l == t.name))
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let presented = self.presented(&ctx).map(str::to_string);
        if let Some(expected) = &self.settings.token {
            if presented.as_deref() != Some(expected.as_str()) {
                return Ok(CallToolResult::error(vec![ContentBlock::text(
                    "unauthorized: this tool server needs its API token",
                )])
                .into());
            }
        }
        if !self.settings.late_tools.is_empty()
            && !self
                .revealed
                .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let _ = ctx.peer.notify_tool_list_changed().await;
        }
        if self
            .settings
            .invalid_params
            .iter()
            .any(|t| *t == request.name)
        {
            return Err(ErrorData::invalid_params(
                "arguments do not validate",
                Some(json!({"input_value": request.arguments})),
            ));
        }
        if self.settings.crash_on.iter().any(|t| *t == request.name) {
            std::process::exit(70);
        }
        if self.settings.malformed.iter().any(|t| *t == request.name) {
            // An answer with this call's id whose result is not a tool result,
            // written past the SDK; then silence, as a broken server would.
            use std::io::Write;
            let line = json!({"jsonrpc": "2.0", "id": ctx.id, "result": {"content": "not a list", "isError": "maybe"}});
            {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            std::future::pending::<()>().await;
        }
        if let Some((_, delay)) = self.settings.slow.iter().find(|(t, _)| *t == request.name) {
            // A long call reports progress every half second, if asked to.
            let token = ctx.meta.get_progress_token();
            let deadline = tokio::time::Instant::now() + *delay;
            let mut step = 0u32;
            while tokio::time::Instant::now() < deadline {
                if let Some(token) = &token {
                    step += 1;
                    let mut message = format!("{}: working, step {step}", request.name);
                    if self.settings.echo_credential {
                        message.push_str(&format!(" (credential {presented:?})"));
                    }
                    let note = ProgressNotificationParam::new(token.clone(), f64::from(step))
                        .with_message(message);
                    let _ = ctx.peer.notify_progress(note).await;
                }
                let left = deadline - tokio::time::Instant::now();
                tokio::time::sleep(left.min(Duration::from_millis(500))).await;
            }
        }
        let args = request.arguments.unwrap_or_default();
        let mut result = self.run(&request.name, &args);
        if self.settings.echo_credential {
            // On stderr too (which a stdio client logs): the gateway must scrub it there.
            eprintln!(
                "ir-tools: {} called with credential {presented:?}",
                request.name
            );
            result.content.push(ContentBlock::text(
                json!({"served_with_credential": presented}).to_string(),
            ));
        }
        Ok(result.into())
    }
}

/// Serve on stdin/stdout until the client goes away.
pub async fn serve_stdio(tools: ExampleTools) -> Result<(), String> {
    use rmcp::ServiceExt;
    let running = tools
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| format!("mcp handshake on stdio failed: {e}"))?;
    running
        .waiting()
        .await
        .map(|_| ())
        .map_err(|e| format!("mcp stdio server: {e}"))
}

/// Serve streamable HTTP at `/mcp` on `listener` until `shutdown` resolves.
pub async fn serve_http(
    tools: ExampleTools,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
    let token = tools.settings.token.clone();
    let service = StreamableHttpService::new(
        move || Ok(tools.clone()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let router =
        axum::Router::new()
            .nest_service("/mcp", service)
            .layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    let token = token.clone();
                    async move {
                        // A wrong or missing token gets a plain 401, as from any API.
                        let given = req
                            .headers()
                            .get(http::header::AUTHORIZATION)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.strip_prefix("Bearer "));
                        match token {
                            Some(t) if given != Some(t.as_str()) => {
                                axum::response::IntoResponse::into_response((
                                    http::StatusCode::UNAUTHORIZED,
                                    "unauthorized: this tool server needs its API token",
                                ))
                            }
                            _ => next.run(req).await,
                        }
                    }
                },
            ));
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
