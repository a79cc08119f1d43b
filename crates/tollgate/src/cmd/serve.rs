//! `tollgate serve`: run the gateway.

use anyhow::{Context, Result};
use std::path::PathBuf;
use std::sync::Arc;

/// Logs go to stderr: `TOLLGATE_LOG` filters them (default `info`: one line
/// per decision), `TOLLGATE_LOG_FORMAT=json` makes each a JSON object, and
/// colour is used only when stderr is a terminal.
fn init_logging() -> Result<()> {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .unwrap_or_else(|_| "info".into());
    // Every line is scrubbed of the secrets the server registers
    // (upstream credentials, the admin token), whoever logs it.
    let writer = || tollgate_server::redact::RedactingStderr;
    match std::env::var("TOLLGATE_LOG_FORMAT").as_deref() {
        Ok("json") => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(writer)
            .init(),
        Ok("text") | Err(_) => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(writer)
            .init(),
        Ok(other) => anyhow::bail!("TOLLGATE_LOG_FORMAT={other:?}: use text or json"),
    }
    Ok(())
}

pub fn run(config: Option<PathBuf>, data: PathBuf, listen: String) -> Result<()> {
    init_logging()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let opts = tollgate_server::Options {
            config_dir: config.clone(),
            data_dir: data.clone(),
        };
        let state =
            tollgate_server::AppState::open(&opts, Arc::new(tollgate_core::SystemClock)).await?;
        // Ctrl-C, or SIGTERM (what an orchestrator sends): stop accepting,
        // let requests in flight finish, then exit. The handlers are
        // registered now, before the listener exists: `serve` polls the
        // shutdown future only once it runs, and a signal that came before
        // that (an orchestrator stopping a replica that just started) would
        // otherwise kill the process with requests in flight.
        #[cfg(unix)]
        let (mut terminate, mut interrupt) = {
            use tokio::signal::unix::{signal, SignalKind};
            (
                signal(SignalKind::terminate()).context("listening for SIGTERM")?,
                signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            )
        };
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        let pack = state.pack.load();
        println!("tollgate listening on http://{addr}");
        println!(
            "policy pack: {} ({} policies, digest {})",
            config
                .as_ref()
                .map(|c| c.display().to_string())
                .unwrap_or_else(|| "built-in example".into()),
            pack.policy_count(),
            &pack.digest()[..12]
        );
        println!("data dir: {}", data.display());
        println!(
            "admin token: {}",
            data.join(tollgate_server::state::ADMIN_TOKEN_FILE)
                .display()
        );
        if state.is_frozen().await? {
            println!("FROZEN: every agent decision denies until `tollgate unfreeze`");
        }
        use std::io::Write;
        std::io::stdout().flush()?;
        let shutdown = async move {
            #[cfg(unix)]
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            #[cfg(not(unix))]
            {
                let _ = tokio::signal::ctrl_c().await;
            }
        };
        tollgate_server::serve(state, listener, shutdown).await?;
        println!("tollgate stopped: requests in flight finished, nothing left unaudited");
        Ok(())
    })
}
