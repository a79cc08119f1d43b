use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const IR: &str = "spiffe://acme.test/agent/ir-responder/i-1";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tollgate")
}

pub struct Server {
    child: Child,
    pub addr: String,
    pub data: PathBuf,
    pub config: Option<PathBuf>,
    pub admin: String,
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    /// The embedded defaults, in a fresh data dir.
    pub fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let mut s = Self::spawn(None, &data);
        s._tmp = Some(tmp);
        s
    }

    pub fn start_with_config(config: &Path, data: &Path) -> Self {
        Self::spawn(Some(config), data)
    }

    /// With everything logged (`TOLLGATE_LOG=trace`, so the MCP SDK logs whole
    /// messages) into `log`.
    pub fn start_logging_to(config: &Path, data: &Path, log: &Path) -> Self {
        Self::spawn_with(Some(config), data, Some(log))
    }

    /// Logging into `log` with extra environment variables (the log level
    /// and format are the caller's: `TOLLGATE_LOG`, `TOLLGATE_LOG_FORMAT`).
    pub fn start_logging_with_env(
        config: &Path,
        data: &Path,
        log: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        Self::spawn_env(Some(config), data, Some(log), env)
    }

    /// With extra environment variables (e.g. `TOLLGATE_STORE`), on `data`
    /// (replicas of one store share theirs, and with it their keys).
    pub fn start_with_env(data: &Path, env: &[(&str, &str)]) -> Self {
        Self::spawn_env(None, data, None, env)
    }

    /// On a given address (for a config that must name the server's URL).
    pub fn start_on(config: &Path, data: &Path, listen: &str) -> Self {
        Self::spawn_env(Some(config), data, None, &[("TOLLGATE_LISTEN", listen)])
    }

    /// [`Self::start_with_env`] with a config directory.
    pub fn start_with_config_env(config: &Path, data: &Path, env: &[(&str, &str)]) -> Self {
        Self::spawn_env(Some(config), data, None, env)
    }

    /// Kill -9: the process dies with whatever it held.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// [`restart`](Self::restart) in place.
    pub fn restart_in_place(&mut self) {
        self.kill();
        let mut fresh = Self::spawn(self.config.as_deref(), &self.data);
        fresh._tmp = self._tmp.take();
        // The old process is gone; dropping its handle kills nothing.
        std::mem::swap(self, &mut fresh);
    }

    fn spawn(config: Option<&Path>, data: &Path) -> Self {
        Self::spawn_with(config, data, None)
    }

    fn spawn_with(config: Option<&Path>, data: &Path, log: Option<&Path>) -> Self {
        Self::spawn_env(config, data, log, &[])
    }

    fn spawn_env(
        config: Option<&Path>,
        data: &Path,
        log: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Self {
        let mut cmd = Command::new(bin());
        cmd.envs(env.iter().copied());
        // `TOLLGATE_LISTEN` among `env` picks the address (default: any free port).
        let listen = env
            .iter()
            .find(|(k, _)| *k == "TOLLGATE_LISTEN")
            .map_or("127.0.0.1:0", |(_, v)| *v);
        cmd.arg("serve")
            .arg("--data")
            .arg(data)
            .arg("--listen")
            .arg(listen);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        match log {
            Some(path) => cmd
                .env("TOLLGATE_LOG", "trace")
                .stderr(std::fs::File::create(path).unwrap()),
            None => cmd.env("TOLLGATE_LOG", "warn").stderr(Stdio::inherit()),
        };
        // The caller's environment wins (e.g. its own `TOLLGATE_LOG`).
        cmd.envs(env.iter().copied());
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().expect("server printed nothing").unwrap();
        let addr = first
            .strip_prefix("tollgate listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_string();
        // Drain the rest so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let admin = std::fs::read_to_string(data.join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
        Self {
            child,
            addr,
            data: data.to_path_buf(),
            config: config.map(Path::to_path_buf),
            admin,
            _tmp: None,
        }
    }

    /// Kill -9 and start again on the same data (and config) dir.
    pub fn restart(mut self) -> Self {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let tmp = self._tmp.take();
        let mut s = Self::spawn(self.config.as_deref(), &self.data);
        s._tmp = tmp;
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.addr)
    }

    pub fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        self.post_raw(path, token, "application/json", &body.to_string())
    }

    pub fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: &str,
    ) -> (u16, Value) {
        let mut req = agent()
            .post(&self.url(path))
            .header("content-type", content_type);
        if let Some(t) = token {
            req = req.header("authorization", &format!("Bearer {t}"));
        }
        finish(req.send(body))
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = agent().get(&self.url(path));
        if let Some(t) = token {
            req = req.header("authorization", &format!("Bearer {t}"));
        }
        finish(req.call())
    }

    pub fn admin_post(&self, path: &str, body: &Value) -> Value {
        let (status, v) = self.post(path, Some(&self.admin.clone()), body);
        assert!((200..300).contains(&status), "POST {path}: {status} {v}");
        v
    }

    pub fn audit(&self, query: &str) -> Vec<Value> {
        let (status, v) = self.get(
            &format!("/v1/audit?limit=1000&{query}"),
            Some(&self.admin.clone()),
        );
        assert_eq!(status, 200, "{v}");
        v["entries"].as_array().unwrap().clone()
    }

    /// Register an agent, attest it, and return its SVID.
    pub fn enrol(&self, spiffe_id: &str) -> String {
        let reg = self.admin_post(
            "/v1/agents",
            &json!({"spiffe_id": spiffe_id, "owner": "alice@acme.test"}),
        );
        let (status, v) = self.post(
            "/v1/agents/attest",
            None,
            &json!({"join_token": reg["join_token"]}),
        );
        assert_eq!(status, 200, "{v}");
        v["svid"].as_str().unwrap().to_string()
    }

    /// Open a task on INC-4711 and return (task_id, credential).
    pub fn open_task(&self, svid: &str) -> (String, String) {
        let (status, v) = self.post("/v1/tasks", Some(svid), &incident_task());
        assert_eq!(status, 201, "{v}");
        (
            v["task_id"].as_str().unwrap().to_string(),
            v["credential"].as_str().unwrap().to_string(),
        )
    }

    pub fn authorize(&self, cred: &str, action: &str, resource: Value) -> (u16, Value) {
        self.post(
            "/v1/authorize",
            Some(cred),
            &json!({"action": action, "resource": resource, "intent": "e2e"}),
        )
    }

    /// Run the CLI against this server.
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(bin())
            .args(args)
            .env("TOLLGATE_ADDR", &self.addr)
            .env("TOLLGATE_DATA", &self.data)
            .env_remove("TOLLGATE_TOKEN")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Server {
    /// Send SIGTERM (what an orchestrator sends) and wait up to `secs` for
    /// the process to exit; its exit status, or `None` if it did not.
    #[cfg(unix)]
    pub fn terminate(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .ok()?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn incident_task() -> Value {
    json!({
        "incident": {"id": "INC-4711", "class": "malware", "severity": "high"},
        "environment": "prod",
        "playbook": "contain-malware",
        "intent": "contain the beacon on web-1",
    })
}

pub fn host(id: &str) -> Value {
    json!({"type": "Host", "id": id})
}

/// POST JSON to any URL (not only the server under test).
pub fn post_json(url: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = agent().post(url).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", &format!("Bearer {t}"));
    }
    finish(req.send(body.to_string()))
}

/// An HTTP client that returns every status as a response, not an error.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn finish(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut resp = r.unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Sign arbitrary claims with the server's own issuer key (read from its
/// data dir), to build tokens that are validly signed but wrong otherwise.
pub fn sign_with_server_key(s: &Server, typ: &str, claims: &Value) -> String {
    let der = std::fs::read(s.data.join("issuer-key.der")).unwrap();
    let (_, jwks) = s.get("/.well-known/jwks.json", None);
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_string();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(kid);
    header.typ = Some(typ.to_string());
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_ed_der(&der),
    )
    .unwrap()
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A one-thread HTTP server that records every JSON body POSTed to it.
pub struct Receiver {
    pub url: String,
    pub bodies: std::sync::mpsc::Receiver<Value>,
}

pub fn receiver() -> Receiver {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let Some((_, body)) = read_request(&mut reader) else {
                continue;
            };
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            if let Ok(v) = serde_json::from_slice(&body) {
                let _ = tx.send(v);
            }
        }
    });
    Receiver { url, bodies: rx }
}

/// One HTTP/1.1 request from `reader`, for the test servers standing in for
/// webhooks, identity providers and collectors: its request line and its
/// body (by `content-length`, or chunked). `None` when the peer closed the
/// connection or sent something cut short.
pub fn read_request(reader: &mut impl BufRead) -> Option<(String, Vec<u8>)> {
    let mut first = String::new();
    if reader.read_line(&mut first).ok()? == 0 {
        return None;
    }
    let (mut len, mut chunked) = (0usize, false);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 || line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0u8; n + 2];
            reader.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        body.resize(len, 0);
        reader.read_exact(&mut body).ok()?;
    }
    Some((first, body))
}

impl Receiver {
    /// The next delivered body (webhooks are asynchronous by design).
    pub fn next(&self) -> Value {
        self.bodies
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("no webhook delivery within 10 s")
    }
}

/// `tollgate init` into a fresh directory, with `extra` appended to tollgate.yaml.
pub fn config_dir(tmp: &Path, extra: &str) -> PathBuf {
    let config = tmp.join("config");
    let out = Command::new(bin())
        .arg("init")
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let yaml = std::fs::read_to_string(config.join("tollgate.yaml")).unwrap();
    std::fs::write(config.join("tollgate.yaml"), format!("{yaml}{extra}")).unwrap();
    config
}

impl Server {
    /// Register an approver through the CLI and return their key.
    pub fn approver(&self, name: &str, role: &str) -> String {
        let (ok, out, err) = self.cli(&["approver", "add", name, "--role", role]);
        assert!(ok, "{err}");
        printed_key(&out)
    }

    /// Run the CLI as someone other than the admin.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(bin())
            .args(args)
            .env("TOLLGATE_ADDR", &self.addr)
            .env("TOLLGATE_TOKEN", token)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// `tollgate audit verify --data DIR` on a (stopped) server's data dir:
/// whether it passed, and what it printed.
pub fn verify_offline(data: &Path) -> (bool, String) {
    let out = Command::new(bin())
        .args(["audit", "verify", "--data"])
        .arg(data)
        .env_remove("TOLLGATE_DATA")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The key a `… add` command printed (its `key:` line, shown once).
pub fn printed_key(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("key:"))
        .unwrap_or_else(|| panic!("no key: line in {out:?}"))
        .trim()
        .to_string()
}

/// A TLS-terminating proxy on 127.0.0.1 in front of `upstream` (host:port),
/// with a certificate for `localhost` from a fresh private CA. Returns its
/// port and the CA's PEM.
pub fn tls_proxy(rt: &tokio::runtime::Runtime, upstream: String) -> (u16, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
            tokio::spawn(async move {
                // A handshake that fails (an untrusting client) just ends.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (port, ca.pem())
}

/// Start `tollgate serve` on a config with `extra` appended to the example
/// tollgate.yaml, expecting it to refuse: its stderr.
pub fn serve_refuses(extra: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_dir(tmp.path(), extra);
    let out = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data")
        .arg(tmp.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "the server started with {extra:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Copy a directory tree (a data directory, an example pack).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// `tollgate demo --dir DIR` into `tmp/demo`: the reference scenario's log
/// (`demo/data`) and pack (`demo/config`).
pub fn demo_dir(tmp: &Path) -> PathBuf {
    let demo = tmp.join("demo");
    let out = Command::new(bin())
        .args(["demo", "--dir"])
        .arg(&demo)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    demo
}
