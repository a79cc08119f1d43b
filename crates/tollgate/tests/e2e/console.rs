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
    c.find(Locator::Css("form.card button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(c, "header .who", 10).await;
}

async fn sign_out(c: &Client) {
    c.find(Locator::Css("form[action='/console/signout'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(c, "#credential", 10).await;
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

            c.find(Locator::Css("#queue .item a"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
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

            // Approve with a reason; the agent's retry is allowed.
            c.find(Locator::Id("reason"))
                .await
                .unwrap()
                .send_keys("jdoe's session launched the beacon; confirmed with the SOC")
                .await
                .unwrap();
            c.find(Locator::Css("button.approve"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
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
            c.goto(&s.url(&format!("/console/approvals/{id2}")))
                .await
                .unwrap();
            c.find(Locator::Id("reason"))
                .await
                .unwrap()
                .send_keys("looks fine to me")
                .await
                .unwrap();
            c.find(Locator::Css("button.approve"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
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
            c.goto(&s.url("/console/ops")).await.unwrap();
            wait_for(c, "#brake", 10).await;
            assert!(text_of(c, "main").await.contains("Not frozen"));
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

            c.find(Locator::Css("button.danger"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            // A confirmation step first: nothing is frozen yet.
            wait_for(c, "input[name=confirm]", 10).await;
            assert_eq!(
                s.authorize(&cred, "edr.read_alerts", host("web-1")).1["decision"],
                "allow"
            );
            c.find(Locator::Css("form.card button.danger"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
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
            c.find(Locator::Css("button.danger"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            wait_for(c, "input[name=confirm]", 10).await;
            c.find(Locator::Css("form.card button.danger"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
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
    assert_eq!(r.status().as_u16(), 303);
    let cookie = r
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
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
