//! The web console at `/console`: server-rendered pages for the people on
//! call (approvers deciding approvals) and operators (the admin: incidents
//! and task trees, revocation, the brake, audit and upstream health).
//!
//! An adapter like `api/` and `mcp/`: it parses forms, calls the same
//! service operations (so every change has the same audit entries, with the
//! signed-in person as the actor) and renders HTML. It decides nothing.
//!
//! Safe by construction:
//! - every page is a `maud` template, which escapes every interpolated value
//!   for the HTML text or attribute it lands in; nothing is marked
//!   pre-escaped but the compiled-in assets' URLs;
//! - a strict Content-Security-Policy (no inline script or style, nothing
//!   from elsewhere), `frame-ancestors 'none'` and `X-Frame-Options: DENY`
//!   on every answer, and `Cache-Control: no-store`;
//! - every state change is a POST carrying the session's CSRF token, from
//!   this origin (`Origin` / `Sec-Fetch-Site` checked as well);
//! - the session cookie is `HttpOnly`, `SameSite=Strict`, scoped to
//!   `/console`, `Secure` behind TLS, and ends server-side at sign-out.

// A refusal here is the page that says so (a `Response`), returned once per
// request; boxing it would buy nothing.
#![allow(clippy::result_large_err)]

mod approvals;
mod ops;
mod pages;
mod session;

use crate::api::auth::Shared;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::Markup;

/// The console's own stylesheet and script, compiled into the binary.
const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// Every console route; mounted by `lib.rs` when `console.enabled`.
pub fn router(state: Shared) -> axum::Router {
    axum::Router::new()
        .route("/console", get(|| async { redirect("/console/approvals") }))
        .route(
            "/console/",
            get(|| async { redirect("/console/approvals") }),
        )
        .route(
            "/console/signin",
            get(session::signin_page).post(session::signin),
        )
        .route("/console/signout", post(session::signout))
        .route("/console/oidc/start", get(session::oidc_start))
        .route("/console/oidc/callback", get(session::oidc_callback))
        .route("/console/approvals", get(approvals::queue_page))
        .route("/console/approvals/queue", get(approvals::queue_fragment))
        .route("/console/events", get(approvals::events))
        .route(
            "/console/approvals/{id}",
            get(approvals::detail_page).post(approvals::vote),
        )
        .route("/console/ops", get(ops::page))
        .route("/console/ops/freeze", post(ops::freeze))
        .route("/console/ops/tasks/{id}/revoke", post(ops::revoke_task))
        .route("/console/ops/agents/revoke", post(ops::revoke_agent))
        .route("/console/ops/agents/release", post(ops::release_agent))
        .route("/console/ops/incidents/{id}", get(ops::timeline))
        .route(
            "/console/ops/incidents/{id}/resolve",
            post(ops::resolve_incident),
        )
        .route("/console/assets/console.css", get(css))
        .route("/console/assets/console.js", get(js))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// A 303 to `to` (after a POST, the browser GETs the page).
fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn html(status: StatusCode, page: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page.into_string(),
    )
        .into_response()
}

/// No inline script or style, nothing from another origin, no framing,
/// forms only to this origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Not `no-referrer`: with it, Chromium sends `Origin: null` on form
        // posts, and the same-origin check could not tell ours from others.
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    h.insert(
        header::HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    r
}

/// A service error as a page: the status the API would answer (one
/// mapping, `ApiError::status_and_code`) and the message, escaped.
fn error_page(
    session: Option<&crate::service::console::Session>,
    e: crate::service::Error,
) -> Response {
    let e = crate::api::error::ApiError::from(e);
    let (status, _) = e.status_and_code();
    html(status, pages::error(session, status, &e.to_string()))
}
