//! The web console in a real headless Chromium, over WebDriver
//! (chromedriver), against the real binary: the approver's path from
//! sign-in to a vote the agent's retry spends, refusals shown as messages,
//! hostile agent input shown as text, CSRF refused, and the admin's brake.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs
//! them); without them each test says it was skipped. Screenshots go to
//! `$CARGO_TARGET_DIR/console-screenshots/` (on failure too); with
//! `TOLLGATE_UPDATE_SCREENSHOTS=1` the approval page's is also written to
//! `docs/images/console-approval.png`, the README's picture.

use crate::harness::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    url: String,
    /// Chromium's profile, fresh for each test.
    profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn driver() -> Option<Driver> {
    if !std::path::Path::new(CHROMIUM).exists() || !std::path::Path::new(CHROMEDRIVER).exists() {
        eprintln!(
            "skipped: no {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
        );
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "chromedriver did not start"
        );
        std::thread::sleep(Duration::from_millis(50)); // polling
    }
    Some(Driver {
        child,
        url,
        profile: tempfile::tempdir().unwrap(),
    })
}

async fn browser(d: &Driver, width: u32, height: u32) -> Client {
    let profile = d.profile.path();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--disable-quic",
                format!("--window-size={width},{height}"),
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&d.url)
        .await
        .expect("a WebDriver session with Chromium")
}

fn shots_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) -> PathBuf {
    let png = c.screenshot().await.unwrap();
    let path = shots_dir().join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    path
}

/// Run `body` in a browser; on failure, screenshot the page before the
/// panic goes on.
fn with_browser<F>(width: u32, height: u32, name: &str, body: F)
where
    F: for<'c> FnOnce(&'c Client) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'c>>,
{
    let Some(d) = driver() else { return };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = browser(&d, width, height).await;
        let outcome = {
            use futures_like::CatchUnwind;
            CatchUnwind(body(&c)).await
        };
        if let Err(panic) = outcome {
            let path = shot(&c, &format!("{name}-failure")).await;
            eprintln!("screenshot of the failure: {}", path.display());
            let _ = c.close().await;
            std::panic::resume_unwind(panic);
        }
        let _ = c.close().await;
    });
}

/// A tiny `catch_unwind` for a future (no futures crate in the tests).
mod futures_like {
    use std::future::Future;
    use std::panic::AssertUnwindSafe;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub struct CatchUnwind<F>(pub F);

    impl<F: Future + Unpin> Future for CatchUnwind<F> {
        type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let inner = &mut self.0;
            match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
                Ok(Poll::Pending) => Poll::Pending,
                Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
                Err(e) => Poll::Ready(Err(e)),
            }
        }
    }
}

async fn text_of(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Wait (polling the page, never reloading it) until `css` matches.
async fn wait_for(c: &Client, css: &str, secs: u64) {
    let started = Instant::now();
    loop {
        if c.find(Locator::Css(css)).await.is_ok() {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "{css} did not appear within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await; // polling
    }
}

async fn sign_in(c: &Client, s: &Server, credential: &str) {
    c.goto(&s.url("/console")).await.unwrap();
    // Not signed in: the console sends us to the sign-in page.
    assert!(c
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/console/signin"));
    c.find(Locator::Id("credential"))
        .await
        .unwrap()
        .send_keys(credential)
        .await
        .unwrap();
    click(c, "form.card button[type=submit]").await;
    wait_for(c, "header .who", 10).await;
}

async fn sign_out(c: &Client) {
    click(c, "form[action='/console/signout'] button").await;
    wait_for(c, "#credential", 10).await;
}

/// Click the element `css` matches.
async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Open an approval's page, give a reason and press Approve.
async fn approve_in_page(c: &Client, url: &str, reason: &str) {
    c.goto(url).await.unwrap();
    let field = c.find(Locator::Id("reason")).await.unwrap();
    field.send_keys(reason).await.unwrap();
    click(c, "button.approve").await;
}

/// No `alert()` ever ran: Chromium would hold it open.
async fn no_dialog(c: &Client) {
    assert!(
        c.get_alert_text().await.is_err(),
        "a dialog is open: agent input ran as script"
    );
}

/// The hostile request: script in the intent and in the resource id.
const EVIL_INTENT: &str = "<img src=x onerror=alert(1)>";
const EVIL_ID: &str = "\"><script>alert(2)</script>";

fn ask(s: &Server, cred: &str, intent: &str, account: &str) -> Value {
    let (status, d) = s.post(
        "/v1/authorize",
        Some(cred),
        &json!({
            "action": "iam.disable_account", "resource": {"type": "Account", "id": account},
            "intent": intent, "parameters": {"reason": "beacon"},
        }),
    );
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["decision"], "approval_required", "{d}");
    d
}

#[test]
fn console_an_approver_sees_an_approval_arrive_and_approves_it() {
    let s = Server::start();
    let ivan = s.approver("ivan@acme.test", "identity");
    let nora = s.approver("nora@acme.test", "network");
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    with_browser(1280, 1900, "approver", |c| {
        Box::pin(async move {
            sign_in(c, &s, &ivan).await;
            assert!(text_of(c, "header .who").await.contains("ivan@acme.test"));
            assert!(text_of(c, "#queue").await.contains("Nothing is waiting"));
            // A marker only this page load has: if it survives, the page
            // was updated in place, not reloaded.
            c.execute("window.__loaded = 'once';", vec![])
                .await
                .unwrap();

            let asked = ask(&s, &cred, EVIL_INTENT, EVIL_ID);
            let id = asked["approval_id"].as_str().unwrap().to_string();
            wait_for(c, "#queue .item", 15).await;
            let marker = c.execute("return window.__loaded;", vec![]).await.unwrap();
            assert_eq!(marker, json!("once"), "the queue page was reloaded");
            let item = text_of(c, "#queue .item").await;
            assert!(item.contains(EVIL_INTENT), "{item}");
            assert!(item.contains(EVIL_ID), "{item}");
            // Shown as text: no element was made of it, no script ran.
            assert!(c.find(Locator::Css("#queue img")).await.is_err());
            assert!(c.find(Locator::Css("#queue script")).await.is_err());
            no_dialog(c).await;

            click(c, "#queue .item a").await;
            wait_for(c, "form.vote", 10).await;
            let page = text_of(c, "main").await;
            for expect in [
                EVIL_INTENT,
                EVIL_ID,
                "change",
                "modifies-identity",
                IR,
                "Reversible",
                "Votes: 0 of 1",
            ] {
                assert!(
                    page.contains(expect),
                    "the approval page lacks {expect:?}:\n{page}"
                );
            }
            no_dialog(c).await;
            shot(c, "approval-page").await;
            if std::env::var("TOLLGATE_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
                let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/images");
                std::fs::create_dir_all(&docs).unwrap();
                std::fs::copy(
                    shots_dir().join("approval-page.png"),
                    docs.join("console-approval.png"),
                )
                .unwrap();
            }

            // A state change without the CSRF token: refused, nothing changed.
            let status = c
                .execute_async(
                    "const done = arguments[arguments.length - 1];
                     fetch(location.pathname, {method: 'POST', credentials: 'same-origin',
                       headers: {'content-type': 'application/x-www-form-urlencoded'},
                       body: 'csrf=forged&reason=sneaky&decision=approve'}).then(r => done(r.status));",
                    vec![],
                )
                .await
                .unwrap();
            assert_eq!(status, json!(403));
            let (_, still) = s.get(&format!("/v1/approvals/{id}"), Some(&s.admin.clone()));
            assert_eq!(still["status"], "pending", "{still}");

            // Approve with a reason, with the keyboard alone: Tab from the
            // top of the page to the reason, type, Tab to Approve, Enter.
            c.goto(&s.url(&format!("/console/approvals/{id}")))
                .await
                .unwrap();
            let mut tabs = 0;
            loop {
                c.active_element()
                    .await
                    .unwrap()
                    .send_keys("\u{e004}")
                    .await
                    .unwrap(); // Tab
                tabs += 1;
                let focused = c.active_element().await.unwrap();
                if focused.attr("id").await.unwrap().as_deref() == Some("reason") {
                    break;
                }
                assert!(tabs < 40, "Tab never reached the reason field");
            }
            c.active_element()
                .await
                .unwrap()
                .send_keys("jdoe's session launched the beacon; confirmed with the SOC")
                .await
                .unwrap();
            c.active_element()
                .await
                .unwrap()
                .send_keys("\u{e004}")
                .await
                .unwrap(); // Tab
            let focused = c.active_element().await.unwrap();
            assert_eq!(
                focused.attr("class").await.unwrap().as_deref(),
                Some("approve")
            );
            focused.send_keys("\u{e007}").await.unwrap(); // Enter
            wait_for(c, "p.notice", 10).await;
            assert!(text_of(c, "p.notice").await.contains("approved"));
            let mut retry = json!({
                "action": "iam.disable_account", "resource": {"type": "Account", "id": EVIL_ID},
                "intent": EVIL_INTENT, "parameters": {"reason": "beacon"}, "approval_id": id,
            });
            let (_, d) = s.post("/v1/authorize", Some(&cred), &retry);
            assert_eq!(d["decision"], "allow", "{d}");
            // The vote is on the record under ivan's name, through the console.
            let votes: Vec<Value> = s
                .audit("")
                .into_iter()
                .filter(|e| e["event"]["kind"] == "approval.vote")
                .collect();
            assert_eq!(votes.len(), 1);
            assert_eq!(votes[0]["event"]["actor"], "ivan@acme.test");
            assert_eq!(votes[0]["event"]["detail"]["via"], "console/key");

            // An approver of the wrong role is refused, and told so.
            sign_out(c).await;
            retry["parameters"]["reason"] = json!("second");
            let second = ask(&s, &cred, "disable jdoe again", "jdoe");
            let id2 = second["approval_id"].as_str().unwrap().to_string();
            sign_in(c, &s, &nora).await;
            approve_in_page(
                c,
                &s.url(&format!("/console/approvals/{id2}")),
                "looks fine to me",
            )
            .await;
            wait_for(c, "p.alert", 10).await;
            let refused = text_of(c, "p.alert").await;
            assert!(refused.starts_with("Refused:"), "{refused}");
            shot(c, "wrong-role-refused").await;
            let (_, still) = s.get(&format!("/v1/approvals/{id2}"), Some(&s.admin.clone()));
            assert_eq!(still["status"], "pending", "{still}");

            // Signed out means signed out on the server: the old cookie is dead.
            let cookie = c.get_named_cookie("tollgate_console").await.unwrap();
            sign_out(c).await;
            let (status, _) = get_with_cookie(&s, "/console/approvals/queue", cookie.value());
            assert_eq!(status, 401);
        })
    });
}

fn get_with_cookie(s: &Server, path: &str, secret: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let mut r = agent
        .get(&s.url(path))
        .header("cookie", &format!("tollgate_console={secret}"))
        .call()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().unwrap_or_default())
}

#[test]
fn console_the_admin_freezes_the_gateway_after_confirming() {
    let s = Server::start();
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    let admin = s.admin.clone();
    // Phone-sized: the operations page must work there too.
    with_browser(390, 844, "admin", |c| {
        Box::pin(async move {
            sign_in(c, &s, &admin).await;
            // A checkpoint over the whole log (audit verify signs one).
            let (ok, out, err) = s.cli(&["audit", "verify"]);
            assert!(ok, "{out}{err}");
            c.goto(&s.url("/console/ops")).await.unwrap();
            wait_for(c, "#brake", 10).await;
            let main = text_of(c, "main").await;
            assert!(main.contains("Not frozen"), "{main}");
            assert!(main.contains("Signature: valid"), "{main}");
            // The task tree shows the agent's task.
            assert!(text_of(c, "main").await.contains("INC-4711"));
            let overflow = c
                .execute(
                    "return document.documentElement.scrollWidth - window.innerWidth;",
                    vec![],
                )
                .await
                .unwrap();
            assert!(
                overflow.as_i64().unwrap() <= 0,
                "the page scrolls sideways on a phone: {overflow}"
            );
            shot(c, "ops-phone").await;

            click(c, "button.danger").await;
            // A confirmation step first: nothing is frozen yet.
            wait_for(c, "input[name=confirm]", 10).await;
            assert_eq!(
                s.authorize(&cred, "edr.read_alerts", host("web-1")).1["decision"],
                "allow"
            );
            click(c, "form.card button.danger").await;
            wait_for(c, "p.notice", 10).await;
            assert!(text_of(c, "p.notice").await.contains("Frozen"));
            let (_, d) = s.authorize(&cred, "edr.read_alerts", host("web-1"));
            assert_eq!(d["decision"], "deny", "{d}");
            assert!(d["reasons"].to_string().contains("frozen"), "{d}");
            // The freeze is on the record as the admin's, through the console.
            let frozen: Vec<Value> = s
                .audit("")
                .into_iter()
                .filter(|e| e["event"]["kind"] == "freeze")
                .collect();
            assert_eq!(frozen.len(), 1);
            assert_eq!(frozen[0]["event"]["actor"], "admin (console)");
            // And off again.
            click(c, "button.danger").await;
            wait_for(c, "input[name=confirm]", 10).await;
            click(c, "form.card button.danger").await;
            wait_for(c, "p.notice", 10).await;
            assert_eq!(
                s.authorize(&cred, "edr.read_alerts", host("web-1")).1["decision"],
                "allow"
            );
        })
    });
}

/// An open live-update stream does not keep the server from stopping.
#[test]
fn console_an_open_event_stream_ends_when_the_server_stops() {
    use std::io::{BufRead, BufReader, Write};
    let mut s = Server::start();
    let ivan = s.approver("ivan@acme.test", "identity");
    // Sign in over plain HTTP and keep the cookie.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let r = agent
        .post(&s.url("/console/signin"))
        .header("content-type", "application/x-www-form-urlencoded")
        .send(format!("credential={ivan}"))
        .unwrap();
    let cookie = redirect_setting_cookie(&r);
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let secret = cookie.split(';').next().unwrap().to_string();
    // Open the event stream and read its first event.
    let addr = s.addr.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "GET /console/events HTTP/1.1\r\nhost: {addr}\r\ncookie: {secret}\r\naccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    let mut seen = String::new();
    while !seen.contains("event: approvals") {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "stream ended early: {seen}"
        );
        seen.push_str(&line);
    }
    // SIGTERM with the stream open: the server still stops, promptly.
    let status = s
        .terminate(10)
        .expect("the server exits after SIGTERM with a stream open");
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

/// A minimal OIDC provider for the console's login: `/authorize` sends the
/// browser straight back with a code, `/token` checks the PKCE verifier
/// against the challenge and returns an ID token carrying the nonce.
struct Idp {
    base: String,
    /// Token requests refused for a wrong verifier.
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

fn b64sha(s: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(s.as_bytes()))
}

impl Idp {
    fn start(key_der: Vec<u8>, kid: String) -> Self {
        use std::collections::HashMap;
        use std::io::{BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (r, issuer) = (refused.clone(), base.clone());
        std::thread::spawn(move || {
            // code -> (challenge, nonce, redirect_uri)
            let mut codes: HashMap<String, (String, String, String)> = HashMap::new();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let Some((first, body)) = read_request(&mut reader) else {
                    continue;
                };
                let target = first.split(' ').nth(1).unwrap().to_string();
                let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                let form: HashMap<String, String> = if first.starts_with("POST") {
                    serde_urlencoded::from_bytes(&body).unwrap()
                } else {
                    serde_urlencoded::from_str(query).unwrap()
                };
                let answer = match path {
                    "/authorize" => {
                        assert_eq!(form["response_type"], "code");
                        assert_eq!(form["code_challenge_method"], "S256");
                        assert_eq!(form["client_id"], "tollgate");
                        let code = format!("code-{}", codes.len());
                        codes.insert(
                            code.clone(),
                            (
                                form["code_challenge"].clone(),
                                form["nonce"].clone(),
                                form["redirect_uri"].clone(),
                            ),
                        );
                        let to = format!(
                            "{}?code={code}&state={}",
                            form["redirect_uri"], form["state"]
                        );
                        format!("HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    }
                    "/token" => match codes.get(&form["code"]) {
                        Some((challenge, nonce, redirect))
                            if b64sha(&form["code_verifier"]) == *challenge
                                && form["redirect_uri"] == *redirect =>
                        {
                            let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
                            h.kid = Some(kid.clone());
                            let t = jsonwebtoken::encode(&h, &json!({
                                "iss": issuer, "aud": "tollgate", "sub": "00u1", "email": "Ivan@acme.test",
                                "tollgate_role": "identity", "nonce": nonce, "exp": now() + 300,
                            }), &jsonwebtoken::EncodingKey::from_ed_der(&key_der)).unwrap();
                            let b = json!({"id_token": t, "access_token": "at", "token_type": "Bearer"}).to_string();
                            format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}", b.len())
                        }
                        _ => {
                            r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let b = r#"{"error":"invalid_grant"}"#;
                            format!("HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}", b.len())
                        }
                    },
                    _ => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .to_string(),
                };
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        Self { base, refused }
    }
}

/// A server whose approvers may sign in through `idp`'s login page.
fn with_idp() -> (Server, Idp, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let (key, der) = tollgate_identity::SigningKeyPair::generate().unwrap();
    let idp = Idp::start(der, key.kid().to_string());
    // The server's port is not known before it starts: take a free one.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = config_dir(
        tmp.path(),
        &format!(
            "approver_oidc:\n  issuer: {b}\n  audience: tollgate\n  jwks_file: oidc.json\n  login:\n    authorization_endpoint: {b}/authorize\n    token_endpoint: {b}/token\n    client_id: tollgate\n    redirect_uri: http://127.0.0.1:{port}/console/oidc/callback\n",
            b = idp.base
        ),
    );
    std::fs::write(
        config.join("oidc.json"),
        json!({"keys": [key.public_jwk()]}).to_string(),
    )
    .unwrap();
    let s = Server::start_on(
        &config,
        &tmp.path().join("data"),
        &format!("127.0.0.1:{port}"),
    );
    (s, idp, tmp)
}

#[test]
fn console_an_approver_signs_in_through_the_identity_provider() {
    let (s, idp, _tmp) = with_idp();
    let svid = s.enrol(IR);
    let (_, cred) = s.open_task(&svid);
    let asked = ask(&s, &cred, "jdoe's session launched the beacon", "jdoe");
    let id = asked["approval_id"].as_str().unwrap().to_string();
    let base = s.addr.clone();
    with_browser(1280, 900, "oidc", |c| {
        Box::pin(async move {
            c.goto(&format!("{base}/console/signin")).await.unwrap();
            c.find(Locator::LinkText("Sign in with your identity provider"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            // Through the provider and back, onto the queue, signed in.
            wait_for(c, "#queue .item", 15).await;
            assert!(text_of(c, "header .who")
                .await
                .contains("ivan@acme.test (identity)"));
            approve_in_page(c, &format!("{base}/console/approvals/{id}"), "confirmed").await;
            wait_for(c, "p.notice", 10).await;
        })
    });
    let votes: Vec<Value> = s
        .audit("")
        .into_iter()
        .filter(|e| e["event"]["kind"] == "approval.vote")
        .collect();
    assert_eq!(votes.len(), 1, "{votes:?}");
    assert_eq!(votes[0]["event"]["actor"], "ivan@acme.test");
    assert_eq!(votes[0]["event"]["detail"]["via"], "console/oidc");
    assert_eq!(idp.refused.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[test]
fn console_a_login_through_the_identity_provider_cannot_be_spliced() {
    let (s, idp, _tmp) = with_idp();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    // Two logins started; the provider hands out a code for the first.
    let start = || {
        let r = agent.get(&s.url("/console/oidc/start")).call().unwrap();
        let cookie = redirect_setting_cookie(&r);
        assert!(
            cookie.contains("HttpOnly")
                && cookie.contains("SameSite=Lax")
                && cookie.contains("Path=/console/oidc"),
            "{cookie}"
        );
        let location = r
            .headers()
            .get("location")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        (cookie.split(';').next().unwrap().to_string(), location)
    };
    let (_cookie1, location1) = start();
    let (cookie2, _) = start();
    let r = agent.get(&location1).call().unwrap();
    let back = r
        .headers()
        .get("location")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let callback = |cookie: &str| {
        let mut r = agent.get(&back).header("cookie", cookie).call().unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    // The first login's answer in the second login's browser: state differs.
    let (status, page) = callback(&cookie2);
    assert_eq!(status, 401, "{page}");
    assert!(page.contains("not started from this browser"), "{page}");
    // No login cookie at all.
    let (status, page) = callback("");
    assert_eq!(status, 400, "{page}");
    // The right state but another verifier: the provider refuses the code.
    let url = url::Url::parse(&location1).unwrap();
    let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    let forged = format!(
        "tollgate_oidc={}.{}.{}",
        q["state"],
        q["nonce"],
        "A".repeat(43)
    );
    let (status, page) = callback(&forged);
    assert_eq!(status, 401, "{page}");
    assert!(page.contains("token endpoint answered 400"), "{page}");
    assert_eq!(idp.refused.load(std::sync::atomic::Ordering::SeqCst), 1);
    // None of it made a session, and every refusal is on the record.
    let kinds: Vec<Value> = s
        .audit("")
        .into_iter()
        .map(|e| e["event"]["kind"].clone())
        .collect();
    assert!(!kinds.contains(&json!("console.signed_in")), "{kinds:?}");
    assert!(kinds.contains(&json!("auth.refused")), "{kinds:?}");
}

/// The `Set-Cookie` of an answer that must be a redirect (303).
fn redirect_setting_cookie(r: &ureq::http::Response<ureq::Body>) -> String {
    assert_eq!(r.status().as_u16(), 303);
    r.headers()
        .get("set-cookie")
        .expect("no cookie set")
        .to_str()
        .unwrap()
        .to_string()
}
