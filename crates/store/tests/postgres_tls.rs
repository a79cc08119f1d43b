#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! TLS to PostgreSQL against a real server.
//!
//! Needs `TOLLGATE_TEST_PG` (e.g. `postgres://postgres@127.0.0.1:5432/test`,
//! a loopback server with `ssl = on`) and the server's certificate at
//! `/etc/ssl/certs/ssl-cert-snakeoil.pem` (Debian's self-signed default);
//! without either, each test says it was skipped and passes. Whether a
//! connection is encrypted is what the server says (`pg_stat_ssl`), read
//! over a connection of its own, about the store's connections (found by
//! their `application_name`).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::path::{Path, PathBuf};
use tollgate_store::{CaFile, PostgresStore, StoreError, TlsMode, TlsOptions};

const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

fn url() -> Option<String> {
    match std::env::var("TOLLGATE_TEST_PG") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!("skipped: TOLLGATE_TEST_PG is not set");
            None
        }
    }
}

/// The server's self-signed certificate, the CA that verify-ca trusts.
fn snakeoil() -> Option<PathBuf> {
    if Path::new(SNAKEOIL).is_file() {
        Some(PathBuf::from(SNAKEOIL))
    } else {
        eprintln!("skipped: {SNAKEOIL} is missing (the server's certificate is unknown)");
        None
    }
}

/// Whether the certificate in `pem_file` names `host` (what verify-full checks).
fn names(pem_file: &Path, host: &str) -> bool {
    let der = CertificateDer::from_pem_file(pem_file).unwrap();
    let cert = rustls::server::ParsedCertificate::try_from(&der).unwrap();
    let name = ServerName::try_from(host.to_string()).unwrap();
    rustls::client::verify_server_name(&cert, &name).is_ok()
}

/// A fresh schema and application name per test, so runs may overlap and
/// the store's connections can be told apart in `pg_stat_activity`.
struct Fixture {
    admin_url: String,
    name: String,
}

impl Fixture {
    fn new(url: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self {
            admin_url: url.to_string(),
            name: format!("tg_tls_{nanos:x}_{}_{n}", std::process::id()),
        }
    }

    /// `base` (a URL) with this fixture's application name and `params`.
    fn url(&self, base: &str, params: &str) -> String {
        let sep = if base.contains('?') { '&' } else { '?' };
        let mut u = format!("{base}{sep}application_name={}", self.name);
        if !params.is_empty() {
            u.push('&');
            u.push_str(params);
        }
        u
    }

    async fn admin(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.admin_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }

    /// What the server says of the store's open connections: encrypted or not.
    async fn ssl_of_connections(&self) -> Vec<bool> {
        self.admin()
            .await
            .query(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                 WHERE a.application_name = $1",
                &[&self.name],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    async fn connect(&self, url: &str, tls: &TlsOptions) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect_with(url, Some(&self.name), None, tls).await
    }

    async fn drop_schema(self) {
        self.admin()
            .await
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name))
            .await
            .unwrap();
    }
}

/// Connects, and the server says every connection of the store is (or is
/// not) encrypted.
async fn assert_connects(f: &Fixture, url: &str, tls: &TlsOptions, encrypted: bool) {
    let store = f
        .connect(url, tls)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let ssl = f.ssl_of_connections().await;
    assert!(!ssl.is_empty(), "{url}: the store has no open connection");
    assert!(
        ssl.iter().all(|&s| s == encrypted),
        "{url}: the server reports ssl = {ssl:?}, expected {encrypted}"
    );
    drop(store);
}

/// Refused, with an error that says `says` (case-sensitive).
async fn assert_refused(f: &Fixture, url: &str, tls: &TlsOptions, says: &[&str]) {
    let e = match f.connect(url, tls).await {
        Ok(_) => panic!("{url}: connected, expected a refusal"),
        Err(e) => e.to_string(),
    };
    eprintln!("{url}: refused: {e}");
    for s in says {
        assert!(e.contains(s), "{url}: the error does not say {s:?}: {e}");
    }
    assert!(
        f.ssl_of_connections().await.is_empty(),
        "{url}: a connection was left open"
    );
}

#[tokio::test]
async fn verify_ca_with_the_servers_certificate_connects_encrypted() {
    let (Some(base), Some(ca)) = (url(), snakeoil()) else {
        return;
    };
    let f = Fixture::new(&base);
    // In the URL, as libpq users write it.
    let u = f.url(
        &base,
        &format!("sslmode=verify-ca&sslrootcert={}", ca.display()),
    );
    assert_connects(&f, &u, &TlsOptions::default(), true).await;
    // From the configuration instead (tollgate.yaml's store.tls).
    let tls = TlsOptions {
        mode: Some(TlsMode::VerifyCa),
        ca_file: Some(CaFile {
            path: ca.clone(),
            setting: "store.tls.ca_file".into(),
        }),
    };
    assert_connects(&f, &f.url(&base, ""), &tls, true).await;
    f.drop_schema().await;
}

#[tokio::test]
async fn verify_ca_with_another_ca_is_refused() {
    let (Some(base), Some(_)) = (url(), snakeoil()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other = dir.path().join("other-ca.pem");
    std::fs::write(&other, params.self_signed(&key).unwrap().pem()).unwrap();

    let f = Fixture::new(&base);
    let u = f.url(
        &base,
        &format!("sslmode=verify-ca&sslrootcert={}", other.display()),
    );
    assert_refused(
        &f,
        &u,
        &TlsOptions::default(),
        &[
            "TLS handshake",
            "UnknownIssuer",
            "sslmode=verify-ca",
            "not signed by a trusted CA",
        ],
    )
    .await;
    f.drop_schema().await;
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_that_does_not_name_the_host() {
    let (Some(base), Some(ca)) = (url(), snakeoil()) else {
        return;
    };
    let host = first_host(&base);
    if names(&ca, &host) {
        eprintln!("skipped: {SNAKEOIL} names {host}, so verify-full to it cannot fail");
        return;
    }
    let f = Fixture::new(&base);
    let u = f.url(
        &base,
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    );
    assert_refused(
        &f,
        &u,
        &TlsOptions::default(),
        &[
            "not valid for name",
            "sslmode=verify-full",
            "does not name the host",
        ],
    )
    .await;
    // A CA file alone asks for verify-full too.
    let tls = TlsOptions {
        mode: None,
        ca_file: Some(CaFile {
            path: ca.clone(),
            setting: "store.tls.ca_file".into(),
        }),
    };
    assert_refused(&f, &f.url(&base, ""), &tls, &["not valid for name"]).await;
    f.drop_schema().await;
}

#[tokio::test]
async fn verify_full_by_a_name_the_certificate_carries_connects_encrypted() {
    let (Some(base), Some(ca)) = (url(), snakeoil()) else {
        return;
    };
    // The host the URL names, swapped for one the certificate names.
    let Some(name) = ["localhost".to_string(), system_host_name()]
        .into_iter()
        .find(|n| !n.is_empty() && names(&ca, n))
    else {
        eprintln!("skipped: {SNAKEOIL} names neither localhost nor this machine's host name");
        return;
    };
    let host = first_host(&base);
    let by_name = base.replacen(&format!("@{host}"), &format!("@{name}"), 1);
    assert_ne!(by_name, base, "TOLLGATE_TEST_PG has no @host to replace");
    let f = Fixture::new(&base);
    let u = f.url(
        &by_name,
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    );
    assert_connects(&f, &u, &TlsOptions::default(), true).await;
    f.drop_schema().await;
}

#[tokio::test]
async fn require_without_a_ca_connects_encrypted() {
    let (Some(base), Some(_)) = (url(), snakeoil()) else {
        return;
    };
    let f = Fixture::new(&base);
    assert_connects(
        &f,
        &f.url(&base, "sslmode=require"),
        &TlsOptions::default(),
        true,
    )
    .await;
    f.drop_schema().await;
}

#[tokio::test]
async fn disable_and_the_loopback_default_are_plain() {
    let Some(base) = url() else { return };
    let f = Fixture::new(&base);
    assert_connects(
        &f,
        &f.url(&base, "sslmode=disable"),
        &TlsOptions::default(),
        false,
    )
    .await;
    // Nothing said, a loopback host: plain TCP (see pg_tls).
    assert_eq!(
        tollgate_store::tls_mode(&base, &TlsOptions::default()).unwrap(),
        TlsMode::Disable,
        "TOLLGATE_TEST_PG is expected to name a loopback host"
    );
    assert_connects(&f, &f.url(&base, ""), &TlsOptions::default(), false).await;
    f.drop_schema().await;
}

fn system_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The first host of a `postgres://` URL.
fn first_host(url: &str) -> String {
    let c: tokio_postgres::Config = url.parse().unwrap();
    match c.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        other => panic!("TOLLGATE_TEST_PG: expected a TCP host, got {other:?}"),
    }
}

/// A server that declines TLS (it answers PostgreSQL's SSLRequest with
/// `N`) is refused under any TLS mode, and the error says what to change.
/// Needs no PostgreSQL: the "server" is a socket in this test.
#[tokio::test]
async fn a_server_without_tls_is_refused_not_used_in_plain_text() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let mut requests = Vec::new();
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut req = [0u8; 8];
            if sock.read_exact(&mut req).await.is_err() {
                continue;
            }
            requests.push(req);
            let _ = sock.write_all(b"N").await;
            if requests.len() == 1 {
                return requests;
            }
        }
        requests
    });
    let url =
        format!("postgres://postgres@127.0.0.1:{port}/test?sslmode=require&connect_timeout=2");
    let e = match PostgresStore::connect(&url, None).await {
        Ok(_) => panic!("connected to a server without TLS"),
        Err(e) => e.to_string(),
    };
    for says in [
        "server does not support TLS",
        "sslmode=require",
        "has TLS off",
    ] {
        assert!(e.contains(says), "the error does not say {says:?}: {e}");
    }
    // What the client sent first was an SSLRequest (length 8, code 80877103).
    let requests = server.await.unwrap();
    assert_eq!(requests[0], [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
}
