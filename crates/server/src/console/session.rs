//! Signing in and out, the session cookie, and the checks every state
//! change passes (same origin, the session's CSRF token).

use super::{html, pages, redirect};
use crate::api::auth::{Shared, Source};
use crate::service::console::{self, Session};
use axum::body::Bytes;
use axum::extract::{FromRequestParts, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// The session cookie. Scoped to the console's paths.
const COOKIE: &str = "tollgate_console";

/// Largest form body the console reads (a vote's reason is at most 2 KiB,
/// an ID token at most 16 KiB).
const MAX_FORM: usize = 32 * 1024;

/// A signed-in caller: the session and the secret its cookie holds.
pub struct Console {
    pub session: Session,
    pub secret: String,
}

fn cookie_named(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

impl FromRequestParts<Shared> for Console {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Response> {
        let Some(secret) = cookie_named(&parts.headers, COOKIE) else {
            return Err(signed_out(parts, state));
        };
        match console::session(state, &secret).await {
            Ok(Some(session)) => Ok(Console { session, secret }),
            Ok(None) => Err(signed_out(parts, state)),
            Err(e) => Err(super::error_page(None, e)),
        }
    }
}

/// No session: a page load goes to the sign-in page; anything else (a
/// form post, the live-update fetches) is told so with a 401.
fn signed_out(parts: &Parts, state: &Shared) -> Response {
    if parts.method == axum::http::Method::GET && !parts.uri.path().ends_with("/queue") {
        redirect("/console/signin")
    } else {
        html(
            StatusCode::UNAUTHORIZED,
            pages::signin(
                Some("Your session has ended. Sign in again."),
                with_idp(state),
            ),
        )
    }
}

/// Whether the issuer's login page is configured.
fn with_idp(state: &Shared) -> bool {
    state
        .config
        .approver_oidc
        .as_ref()
        .is_some_and(|o| o.login.is_some())
}

/// A form body, bounded and parsed; a malformed one is a 400 page.
pub fn form<T: DeserializeOwned>(body: &Bytes) -> Result<T, Response> {
    if body.len() > MAX_FORM {
        return Err(html(
            StatusCode::PAYLOAD_TOO_LARGE,
            pages::message(
                "Too large",
                "That form was larger than the console accepts.",
            ),
        ));
    }
    serde_urlencoded::from_bytes(body).map_err(|_| {
        html(
            StatusCode::BAD_REQUEST,
            pages::message(
                "Bad form",
                "That form was not filled in as the console sent it.",
            ),
        )
    })
}

/// A state change's form: parsed, and checked by [`check_change`] with
/// the CSRF token `csrf` reads from it.
pub fn change_form<T: DeserializeOwned>(
    headers: &HeaderMap,
    c: &Console,
    body: &Bytes,
    csrf: impl Fn(&T) -> &str,
) -> Result<T, Response> {
    let f: T = form(body)?;
    check_change(headers, c, csrf(&f))?;
    Ok(f)
}

/// A state change must come from a console page: this origin (when the
/// browser says where it comes from) and the session's CSRF token.
pub fn check_change(headers: &HeaderMap, c: &Console, token: &str) -> Result<(), Response> {
    if !same_origin(headers) || !console::csrf_ok(&c.secret, token) {
        return Err(html(
            StatusCode::FORBIDDEN,
            pages::error(
                Some(&c.session),
                StatusCode::FORBIDDEN,
                "This change did not come from a console page (missing or wrong CSRF token). Nothing was changed.",
            ),
        ));
    }
    Ok(())
}

/// `Sec-Fetch-Site` and `Origin`, when a browser sends them, name this
/// server. (Clients that send neither still need the CSRF token.)
fn same_origin(headers: &HeaderMap) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return false;
        }
    }
    match (get("origin"), get("host")) {
        (None, _) => true,
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(scheme, rest)| (scheme == "http" || scheme == "https") && rest == host),
        (Some(_), None) => false,
    }
}

/// The cookie that holds `secret`: `Secure` when the browser reached us
/// over TLS (a TLS-terminating proxy says so in `X-Forwarded-Proto`).
fn set_cookie(headers: &HeaderMap, value: &str, max_age: i64) -> Option<HeaderValue> {
    cookie(headers, COOKIE, value, "/console", "Strict", max_age)
}

fn cookie(
    headers: &HeaderMap,
    name: &str,
    value: &str,
    path: &str,
    same_site: &str,
    max_age: i64,
) -> Option<HeaderValue> {
    let tls = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let secure = if tls { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={path}; HttpOnly; SameSite={same_site}; Max-Age={max_age}{secure}"
    ))
    .ok()
}

pub async fn signin_page(State(state): State<Shared>) -> Response {
    html(StatusCode::OK, pages::signin(None, with_idp(&state)))
}

#[derive(Deserialize)]
struct SignIn {
    credential: String,
}

pub async fn signin(
    State(state): State<Shared>,
    Source(source): Source,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !same_origin(&headers) {
        return html(
            StatusCode::FORBIDDEN,
            pages::signin(
                Some("Sign in from this console's own page."),
                with_idp(&state),
            ),
        );
    }
    let f: SignIn = match form(&body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    match console::sign_in(&state, &f.credential, &source).await {
        Ok((secret, session)) => {
            let mut r = redirect("/console/approvals");
            let age = session.expires_at.saturating_sub(state.now());
            if let Some(c) = set_cookie(&headers, &secret, age) {
                r.headers_mut().insert(header::SET_COOKIE, c);
            }
            r
        }
        Err(crate::service::Error::Unauthenticated(why)) => html(
            StatusCode::UNAUTHORIZED,
            pages::signin(Some(&format!("Not signed in: {why}.")), with_idp(&state)),
        ),
        Err(e) => super::error_page(None, e),
    }
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    pub csrf: String,
}

pub async fn signout(
    c: Console,
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = change_form(&headers, &c, &body, |f: &CsrfOnly| &f.csrf) {
        return r;
    }
    if let Err(e) = console::sign_out(&state, &c.secret, c.session.principal.name()).await {
        return super::error_page(Some(&c.session), e);
    }
    let mut r = redirect("/console/signin");
    if let Some(cookie) = set_cookie(&headers, "", 0) {
        r.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    r.into_response()
}

/// The cookie holding a login through the issuer until it comes back.
/// `SameSite=Lax`: the issuer's redirect back is a cross-site navigation,
/// on which a `Strict` cookie would not be sent.
const LOGIN_COOKIE: &str = "tollgate_oidc";
const LOGIN_PATH: &str = "/console/oidc";
/// How long the issuer's login may take.
const LOGIN_SECONDS: i64 = 600;

/// Off to the issuer's login page, with state, nonce and a PKCE challenge.
pub async fn oidc_start(State(state): State<Shared>, headers: HeaderMap) -> Response {
    match console::oidc_login_start(&state) {
        Ok((url, pending)) => {
            let mut r = redirect(&url);
            if let Some(c) = cookie(
                &headers,
                LOGIN_COOKIE,
                &pending.to_cookie(),
                LOGIN_PATH,
                "Lax",
                LOGIN_SECONDS,
            ) {
                r.headers_mut().insert(header::SET_COOKIE, c);
            }
            r
        }
        Err(e) => super::error_page(None, e),
    }
}

#[derive(Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// The issuer sends the browser back here with a code (or an error).
pub async fn oidc_callback(
    State(state): State<Shared>,
    Source(source): Source,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let refused = |status: StatusCode, why: &str| {
        html(
            status,
            pages::signin(Some(&format!("Not signed in: {why}.")), with_idp(&state)),
        )
    };
    let q: Callback = match serde_urlencoded::from_str(query.as_deref().unwrap_or("")) {
        Ok(q) => q,
        Err(_) => {
            return refused(
                StatusCode::BAD_REQUEST,
                "the identity provider's answer was malformed",
            )
        }
    };
    if let Some(error) = q.error {
        let error: String = error.chars().take(200).collect();
        return refused(
            StatusCode::UNAUTHORIZED,
            &format!("the identity provider said {error:?}"),
        );
    }
    let Some(pending) =
        cookie_named(&headers, LOGIN_COOKIE).and_then(|c| console::PendingLogin::from_cookie(&c))
    else {
        return refused(
            StatusCode::BAD_REQUEST,
            "this sign-in expired or was not started from this browser",
        );
    };
    let (Some(code), Some(returned)) = (q.code, q.state) else {
        return refused(
            StatusCode::BAD_REQUEST,
            "the identity provider sent no code",
        );
    };
    match console::oidc_login_finish(&state, &pending, &returned, &code, &source).await {
        Ok((secret, session)) => {
            let mut r = html(StatusCode::OK, pages::signed_in());
            let age = session.expires_at.saturating_sub(state.now());
            for c in [
                set_cookie(&headers, &secret, age),
                cookie(&headers, LOGIN_COOKIE, "", LOGIN_PATH, "Lax", 0),
            ]
            .into_iter()
            .flatten()
            {
                r.headers_mut().append(header::SET_COOKIE, c);
            }
            r
        }
        Err(crate::service::Error::Unauthenticated(why)) => refused(StatusCode::UNAUTHORIZED, &why),
        Err(e) => super::error_page(None, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_this_origin_may_change_anything() {
        assert!(same_origin(&headers(&[("host", "gw:8181")])));
        assert!(same_origin(&headers(&[
            ("host", "gw:8181"),
            ("origin", "http://gw:8181")
        ])));
        assert!(same_origin(&headers(&[
            ("host", "gw:8181"),
            ("origin", "https://gw:8181")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "gw:8181"),
            ("origin", "http://evil.test")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "gw:8181"),
            ("origin", "null")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "gw:8181"),
            ("sec-fetch-site", "cross-site")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "gw:8181"),
            ("sec-fetch-site", "same-site")
        ])));
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_behind_tls() {
        let plain = set_cookie(&HeaderMap::new(), "s", 60).unwrap();
        let plain = plain.to_str().unwrap();
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(plain.contains("Path=/console") && !plain.contains("Secure"));
        let tls = set_cookie(&headers(&[("x-forwarded-proto", "https")]), "s", 60).unwrap();
        assert!(tls.to_str().unwrap().ends_with("; Secure"));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; tollgate_console=tgc_x; b=2")]);
        assert_eq!(cookie_named(&h, COOKIE).as_deref(), Some("tgc_x"));
        assert_eq!(cookie_named(&headers(&[("cookie", "a=1")]), COOKIE), None);
    }
}
