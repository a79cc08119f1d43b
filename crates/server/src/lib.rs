//! Tollgate's server: the HTTP API (agents, tasks, decisions, admin,
//! AuthZEN), wired to the store, the policy pack and the token issuer.
//!
//! Architecture invariants:
//! - Every answer that grants or refuses something is preceded by a
//!   committed audit entry; if the commit fails the caller gets 503 and no
//!   grant (`decide.rs`, `StoreError::Backend` → `ApiError::Unavailable`).
//! - The Cedar request is built from verified facts only; agents never send
//!   principals, tiers or labels (`tollgate-policy` builds it).
//! - Task liveness is read from the store on every task-credential call, so
//!   close and revocation take effect on the next request.
//! - Errors become HTTP statuses in exactly one function
//!   (`ApiError::status_and_code`).

pub mod api;
pub mod audit;
pub mod bundles;
pub mod config;
mod console;
pub mod embedded;
mod health;
pub mod mcp;
pub mod metrics;
pub mod redact;
mod refusals;
pub mod service;
pub mod state;
pub mod telemetry;
pub mod upstream;
mod views;
mod webhooks;

pub use state::{AppState, Options, StartError};

use std::future::Future;
use std::sync::Arc;

/// Every route the server answers: the HTTP API with the MCP gateway at
/// `/mcp`, and the web console at `/console` unless it is turned off.
pub fn app(state: Arc<AppState>) -> axum::Router {
    let api = api::router(state.clone(), mcp::router(state.clone()));
    if state.config.console.enabled {
        api.merge(console::router(state))
    } else {
        api
    }
}

/// Serve until `shutdown` resolves. On Unix, SIGHUP reloads the policy pack.
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let s = state.clone();
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                tracing::warn!("cannot listen for SIGHUP; reload with POST /v1/policies/reload");
                return;
            };
            while hup.recv().await.is_some() {
                match service::gateway::reload_pack(&s, "sighup").await {
                    Ok(digest) => tracing::info!(%digest, "policy pack reloaded"),
                    Err(e) => tracing::warn!(error = %e, "policy reload refused"),
                }
            }
        });
    }
    // This replica is alive while its lease is: taken before the first
    // request (a call held before it would look abandoned) and renewed on
    // a task of its own, so slow background work never delays it.
    if let Err(e) = mcp::held::renew(&state).await {
        tracing::warn!(error = %e, "could not take this replica's lease; retrying");
    }
    let renewing = {
        let s = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(mcp::held::RENEW_EVERY);
            loop {
                tick.tick().await;
                if let Err(e) = mcp::held::renew(&s).await {
                    tracing::warn!(error = %e, "could not renew this replica's lease");
                }
            }
        })
    };
    spawn_background(state.clone());
    // Webhook messages queued by any process over the store, sent once.
    tokio::spawn(webhooks::run_worker(state.clone()));
    // Start (or reach) every upstream MCP server now, so the first agent
    // does not wait for it; a failure here is retried on first use.
    for upstream in state.upstreams.iter() {
        let (s, u) = (state.clone(), upstream.clone());
        tokio::spawn(async move {
            if let Err(e) = mcp::live_audited(&s, &u, None).await {
                tracing::warn!(error = %e, "upstream MCP server not reachable at startup");
            }
        });
    }
    if let Ok(addr) = listener.local_addr() {
        let _ = state.listen_url.set(format!("http://{addr}"));
    }
    // External trust domains' bundles: fetched before the first request,
    // then kept fresh.
    start_bundle_refreshers(&state).await;
    // The peer address is the source refusals are aggregated by.
    let served = axum::serve(
        listener,
        app(state.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown({
        let stopping = state.stopping.clone();
        async move {
            shutdown.await;
            // End the answers that would otherwise stream forever.
            stopping.cancel();
        }
    })
    .await;
    // Stopped: whatever this replica still held is abandoned at the next
    // sweep, not only once its lease runs out (stop renewing it first).
    renewing.abort();
    mcp::held::release(&state).await;
    // Spans still buffered go out before the process ends.
    let s = state.clone();
    let _ = tokio::task::spawn_blocking(move || s.telemetry.flush()).await;
    served
}

/// Fetch every bundle endpoint once, then keep each fresh on a task of
/// its own until the server stops.
async fn start_bundle_refreshers(state: &Arc<AppState>) {
    let mut delays = Vec::new();
    for e in state.bundle_endpoints.iter() {
        delays.push(refresh_bundle(state, e).await);
    }
    for (e, delay) in state.bundle_endpoints.iter().cloned().zip(delays) {
        let s = state.clone();
        tokio::spawn(async move {
            let mut delay = delay;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = s.stopping.cancelled() => return,
                }
                delay = refresh_bundle(&s, &e).await;
            }
        });
    }
}

/// Refresh one trust domain's bundle, recording a change of its keys;
/// returns when to refresh again.
async fn refresh_bundle(state: &AppState, e: &bundles::BundleEndpoint) -> std::time::Duration {
    let refreshed = bundles::refresh(e, &state.tokens, state.now()).await;
    if let Some(change) = refreshed.changed {
        let event = change.event(state.now(), &state.replica);
        if let Err(err) = state
            .store
            .commit(tollgate_store::Batch::audit_only(event))
            .await
        {
            tracing::warn!(error = %err, "could not record the trust bundle update");
        }
    }
    refreshed.next
}

/// Once a second: expire and escalate approvals nobody answers, end the held
/// MCP calls of replicas that stopped, and sign an audit checkpoint when
/// enough entries or time have passed; once a minute, delete idle MCP
/// sessions and ended console sessions. With several replicas over one
/// store, only the one holding the `background` lease does this, so nothing
/// runs three times; if it dies, another takes the lease over within a few
/// seconds. Every replica writes its own aggregated refusals.
fn spawn_background(s: Arc<AppState>) {
    tokio::spawn(async move {
        let holder = s.replica.clone();
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut ticks: u64 = 0;
        loop {
            tick.tick().await;
            ticks = ticks.wrapping_add(1);
            match service::gateway::lead_background(&s, &holder).await {
                Ok(true) => lead(&s, ticks % 60 == 1).await,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "could not take the background lease"),
            }
            let counted = s.refusals.flush(s.now());
            if !counted.is_empty() {
                let batch = tollgate_store::Batch {
                    changes: vec![],
                    audit: counted,
                };
                if let Err(e) = s.store.commit(batch).await {
                    tracing::warn!(error = %e, "could not record aggregated refusals");
                }
            }
        }
    });
}

/// One round of the lease holder's work; `minute`: the once-a-minute part too.
async fn lead(s: &Arc<AppState>, minute: bool) {
    if let Err(e) = service::approvals::sweep(s).await {
        tracing::warn!(error = %e, "approval sweep failed");
    }
    if let Err(e) = mcp::held::sweep(s).await {
        tracing::warn!(error = %e, "sweep of abandoned MCP calls failed");
    }
    if let Err(e) = service::checkpoints::maybe_checkpoint(s).await {
        tracing::warn!(error = %e, "audit checkpoint failed");
    }
    if minute {
        if let Err(e) = mcp::sessions::sweep(s).await {
            tracing::warn!(error = %e, "sweep of idle MCP sessions failed");
        }
        if let Err(e) = service::console::purge_expired(s).await {
            tracing::warn!(error = %e, "could not purge ended console sessions");
        }
    }
}

#[cfg(test)]
mod tidy;
