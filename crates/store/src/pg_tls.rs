//! TLS to PostgreSQL, configured as libpq users expect: `sslmode` and
//! `sslrootcert` in the connection string, or [`TlsOptions`] given apart from
//! it (tollgate.yaml's `store.tls`).
//!
//! Modes (libpq's names; the effective one is [`tls_mode`]):
//! - `disable`: plain TCP.
//! - `require`: encrypted, the server's certificate not checked (anyone on
//!   the path can pose as the server). With a CA file it is `verify-ca`, as
//!   in libpq. The unchecked case lives in [`danger`].
//! - `verify-ca`: the certificate chains to a trusted CA; its names are not
//!   checked.
//! - `verify-full`: the certificate chains to a trusted CA and names the
//!   host connected to. The default whenever TLS is asked for.
//! - `prefer` and `allow` are refused: they fall back to plain text when the
//!   server, or anyone in between, declines TLS, so they promise nothing.
//!
//! Said nowhere: `disable` if every host is loopback (`localhost`,
//! `127.0.0.0/8`, `::1`) or a Unix socket, `verify-full` otherwise.
//!
//! Trusted CAs: the CA file's certificates (PEM) only, or, without one, the
//! Mozilla roots compiled in (`webpki-roots`; `sslrootcert=system` names them
//! explicitly). TLS is rustls with the ring provider; the stream adapter is
//! `tokio-postgres-rustls`, which gives SCRAM channel binding.

use crate::StoreError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How a connection to PostgreSQL uses TLS (libpq's `sslmode` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// Encrypted; the server's certificate is not checked.
    Require,
    /// Encrypted; the certificate chains to a trusted CA (names not checked).
    VerifyCa,
    /// Encrypted; the certificate chains to a trusted CA and names the host.
    VerifyFull,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

impl std::fmt::Display for TlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TlsMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "disable" => Ok(Self::Disable),
            "require" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" => Ok(Self::VerifyFull),
            "prefer" | "allow" => Err(format!(
                "{s:?} is not supported: it falls back to plain text whenever the server, \
                 or anyone in between, declines TLS, so it promises neither encryption nor \
                 the server's identity; use verify-full (or verify-ca, require), or disable \
                 on a network you trust"
            )),
            other => Err(format!(
                "unknown mode {:?}: use disable, require, verify-ca or verify-full",
                other.chars().take(40).collect::<String>()
            )),
        }
    }
}

/// TLS settings given apart from the connection string. Each may also be
/// in the string (`sslmode`, `sslrootcert`); saying one thing twice with
/// different values is an error.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    pub mode: Option<TlsMode>,
    pub ca_file: Option<CaFile>,
}

/// A PEM file of the CA certificates to trust (and no others).
#[derive(Debug, Clone)]
pub struct CaFile {
    pub path: PathBuf,
    /// The setting that named the file, for errors (e.g. `store.tls.ca_file`).
    pub setting: String,
}

/// Where the trusted CAs come from.
#[derive(Debug, Clone)]
enum Roots {
    Webpki,
    File(CaFile),
}

/// The connection string without `sslmode`/`sslrootcert` (which
/// tokio-postgres does not know, or knows only in part), and their values.
#[derive(Debug, Default, PartialEq, Eq)]
struct Split {
    rest: String,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

/// What a connection string and options resolve to, before any connection.
pub(crate) struct Resolved {
    /// tokio-postgres's configuration, its `ssl_mode` set (`Disable` or
    /// `Require`, never `Prefer`).
    pub config: tokio_postgres::Config,
    pub mode: TlsMode,
    /// Whether `mode` was chosen by default (nothing said about TLS).
    pub by_default: bool,
    /// `None` exactly when `mode` is `Disable`.
    pub connector: Option<MakeRustlsConnect>,
}

fn err(msg: String) -> StoreError {
    StoreError::Backend(format!("store TLS: {msg}"))
}

/// The connection string parsed as tokio-postgres does, without the TLS
/// parameters it does not know (for checks that need no TLS, such as
/// whether it carries a password).
pub(crate) fn parse_without_tls(
    url: &str,
) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
    split(url).rest.parse()
}

/// The effective TLS mode of `url` with `opts`, checked (the CA file read)
/// but not connected.
pub fn tls_mode(url: &str, opts: &TlsOptions) -> Result<TlsMode, StoreError> {
    resolve(url, opts).map(|r| r.mode)
}

pub(crate) fn resolve(url: &str, opts: &TlsOptions) -> Result<Resolved, StoreError> {
    let parts = split(url);
    let mut config: tokio_postgres::Config = parts.rest.parse().map_err(|e| {
        StoreError::Backend(format!(
            "postgres: connection string: {}",
            crate::postgres::with_sources(&e)
        ))
    })?;
    let url_mode = match parts.sslmode.as_deref() {
        Some(m) => Some(
            m.parse::<TlsMode>()
                .map_err(|e| err(format!("sslmode in the connection string: {e}")))?,
        ),
        None => None,
    };
    let mode = match (url_mode, opts.mode) {
        (Some(a), Some(b)) if a != b => {
            return Err(err(format!(
                "the connection string says sslmode={a} and the configured TLS mode is {b}: \
                 say it in one place"
            )))
        }
        (a, b) => a.or(b),
    };
    let roots = match (parts.sslrootcert, &opts.ca_file) {
        (Some(_), Some(f)) => {
            return Err(err(format!(
                "a CA file is named twice, by sslrootcert in the connection string and by {}: \
                 name it in one place",
                f.setting
            )))
        }
        (Some(p), None) if p.is_empty() => {
            return Err(err("sslrootcert in the connection string is empty".into()))
        }
        (Some(p), None) if p == "system" => Some(Roots::Webpki),
        (Some(p), None) => Some(Roots::File(CaFile {
            path: PathBuf::from(p),
            setting: "sslrootcert".into(),
        })),
        (None, Some(f)) => Some(Roots::File(f.clone())),
        (None, None) => None,
    };
    let by_default = mode.is_none() && roots.is_none();
    let mode = match (mode, &roots) {
        (Some(TlsMode::Disable), Some(Roots::File(f))) => {
            return Err(err(format!(
                "{} names a CA file but sslmode is disable: drop one of them",
                f.setting
            )))
        }
        (Some(m), Some(Roots::Webpki)) if m != TlsMode::VerifyFull => {
            return Err(err(format!(
                "sslrootcert=system needs sslmode=verify-full (as in libpq), not {m}"
            )))
        }
        // libpq: `require` with a root CA file verifies the chain.
        (Some(TlsMode::Require), Some(Roots::File(_))) => TlsMode::VerifyCa,
        (Some(m), _) => m,
        (None, Some(_)) => TlsMode::VerifyFull,
        (None, None) if local_only(&config) => TlsMode::Disable,
        (None, None) => TlsMode::VerifyFull,
    };
    if mode == TlsMode::Disable {
        config.ssl_mode(SslMode::Disable);
        return Ok(Resolved {
            config,
            mode,
            by_default,
            connector: None,
        });
    }
    check_hosts(&config, mode)?;
    config.ssl_mode(SslMode::Require);
    let roots = load_roots(roots.unwrap_or(Roots::Webpki))?;
    let connector = MakeRustlsConnect::new(client_config(mode, roots)?);
    Ok(Resolved {
        config,
        mode,
        by_default,
        connector: Some(connector),
    })
}

/// TLS needs a host name to send (SNI) and, for `verify-full`, to check:
/// every host must be a TCP one (PostgreSQL has no TLS on Unix sockets).
fn check_hosts(config: &tokio_postgres::Config, mode: TlsMode) -> Result<(), StoreError> {
    if config.get_hosts().is_empty() && !config.get_hostaddrs().is_empty() {
        return Err(err(format!(
            "sslmode={mode} needs a host name (host=…) to check the server's certificate \
             against; only hostaddr is given"
        )));
    }
    for h in config.get_hosts() {
        #[cfg(unix)]
        if let Host::Unix(path) = h {
            return Err(err(format!(
                "sslmode={mode}: PostgreSQL has no TLS on a Unix socket ({}); connect over \
                 TCP or say sslmode=disable",
                path.display()
            )));
        }
        #[cfg(not(unix))]
        let _ = h;
    }
    Ok(())
}

/// Whether every host is this machine: loopback names and addresses, and
/// Unix sockets.
fn local_only(config: &tokio_postgres::Config) -> bool {
    let host_local = |h: &Host| match h {
        Host::Tcp(name) => {
            name.eq_ignore_ascii_case("localhost")
                || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        #[cfg(unix)]
        Host::Unix(_) => true,
    };
    config.get_hosts().iter().all(host_local)
        && config.get_hostaddrs().iter().all(|a| a.is_loopback())
}

fn load_roots(roots: Roots) -> Result<RootCertStore, StoreError> {
    let file = match roots {
        Roots::Webpki => {
            return Ok(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
        }
        Roots::File(f) => f,
    };
    let at = format!("{} {}", file.setting, file.path.display());
    let pem = std::fs::read(&file.path).map_err(|e| err(format!("{at}: {e}")))?;
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| err(format!("{at}: {e}")))?;
        store
            .add(cert)
            .map_err(|e| err(format!("{at}: not a usable CA certificate: {e}")))?;
    }
    if store.is_empty() {
        return Err(err(format!("{at}: no PEM certificate in it")));
    }
    Ok(store)
}

fn client_config(mode: TlsMode, roots: RootCertStore) -> Result<ClientConfig, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?;
    let mut config = match mode {
        TlsMode::VerifyFull => builder.with_root_certificates(roots),
        TlsMode::VerifyCa => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly {
                roots: Arc::new(roots),
                provider,
            })),
        TlsMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(danger::NoCertificateCheck { provider })),
        TlsMode::Disable => return Err(err("no TLS configuration for sslmode=disable".into())),
    }
    .with_no_client_auth();
    // As libpq does (PostgreSQL 17 requires it for sslnegotiation=direct).
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

/// `verify-ca`: the certificate chain must lead to a trusted CA (validity
/// dates and key usage included); the names in it are not checked.
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `sslmode=require` without a CA file: what libpq does, and unsafe.
mod danger {
    use super::*;

    /// Accepts any certificate. The handshake signatures are still checked
    /// (the server holds the key of the certificate it sent), but nothing
    /// says whose certificate that is: it keeps passive listeners out, not
    /// anyone who can answer in the server's place.
    #[derive(Debug)]
    pub(super) struct NoCertificateCheck {
        pub(super) provider: Arc<CryptoProvider>,
    }

    impl ServerCertVerifier for NoCertificateCheck {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
}

/// A first connection's error, with what to change when TLS is why it failed.
pub(crate) fn explain(e: StoreError, mode: TlsMode, by_default: bool) -> StoreError {
    let StoreError::Backend(msg) = &e else {
        return e;
    };
    let hint = if msg.contains("server does not support TLS") {
        "the server has TLS off (ssl = off in postgresql.conf): turn it on, or say \
         sslmode=disable on a network you trust"
    } else if msg.contains("UnknownIssuer") {
        "the server's certificate is not signed by a trusted CA: name its CA \
         (sslrootcert, or the configured CA file)"
    } else if msg.contains("NotValidForName") || msg.contains("not valid for name") {
        "the server's certificate does not name the host connected to: connect by a name \
         it carries, or use sslmode=verify-ca"
    } else if msg.contains("TLS handshake") {
        "the TLS handshake failed"
    } else {
        return e;
    };
    let why = if by_default {
        format!(
            "; {mode} is the default for a host that is not this machine, and \
             sslmode=disable turns TLS off"
        )
    } else {
        String::new()
    };
    StoreError::Backend(format!("{msg} (sslmode={mode}: {hint}{why})"))
}

// ---- splitting the TLS parameters off a connection string ----

/// Split `sslmode` and `sslrootcert` off a `postgres://` URL or a
/// `key=value` string, reading it as tokio-postgres does. The rest is left
/// as it was (URL) or written back quoted (`key=value`); a string that does
/// not parse is returned whole, for tokio-postgres to report.
fn split(s: &str) -> Split {
    for prefix in ["postgres://", "postgresql://"] {
        if let Some(rest) = s.strip_prefix(prefix) {
            return split_url(s, s.len() - rest.len());
        }
    }
    split_key_values(s).unwrap_or_else(|| Split {
        rest: s.to_string(),
        ..Split::default()
    })
}

fn split_url(s: &str, after_prefix: usize) -> Split {
    // tokio-postgres: credentials end at the first '@'; the parameters
    // start at the first '?' after them.
    let body = &s[after_prefix..];
    let creds = body.find('@').map_or(0, |i| i + 1);
    let Some(q) = body[creds..].find('?') else {
        return Split {
            rest: s.to_string(),
            ..Split::default()
        };
    };
    let q = after_prefix + creds + q;
    let mut out = Split::default();
    let mut kept: Vec<&str> = Vec::new();
    let mut params = &s[q + 1..];
    while !params.is_empty() {
        let Some(eq) = params.find('=') else {
            // Unterminated: tokio-postgres says so.
            kept.push(params);
            break;
        };
        // The key runs to the first '=' (over any '&', as tokio-postgres
        // reads it), the value to the next '&'.
        let end = params[eq..].find('&').map_or(params.len(), |a| eq + a);
        let piece = &params[..end];
        params = params.get(end + 1..).unwrap_or("");
        let (k, v) = (&piece[..eq], &piece[eq + 1..]);
        match percent_decode(k).as_deref() {
            Some("sslmode") => out.sslmode = Some(percent_decode(v).unwrap_or_default()),
            Some("sslrootcert") => out.sslrootcert = Some(percent_decode(v).unwrap_or_default()),
            _ => kept.push(piece),
        }
    }
    out.rest = s[..q].to_string();
    if !kept.is_empty() {
        out.rest.push('?');
        out.rest.push_str(&kept.join("&"));
    }
    out
}

/// Percent-decoding as the `percent-encoding` crate does it (an invalid
/// escape stays as it is); `None` if the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `key = value` pairs, separated by white space; a value is `'quoted'` or
/// bare, `\` escaping the next character in both. `None` if it does not parse.
fn split_key_values(s: &str) -> Option<Split> {
    let mut out = Split::default();
    let mut kept = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = it.next_if(|&c| !c.is_whitespace() && c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            break;
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        it.next_if_eq(&'=')?;
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if it.next_if_eq(&'\'').is_some() {
            loop {
                match it.next()? {
                    '\'' => break,
                    '\\' => value.push(it.next()?),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = it.next_if(|c| !c.is_whitespace()) {
                match c {
                    '\\' => value.extend(it.next()),
                    c => value.push(c),
                }
            }
            if value.is_empty() {
                return None;
            }
        }
        match key.as_str() {
            "sslmode" => out.sslmode = Some(value),
            "sslrootcert" => out.sslrootcert = Some(value),
            _ => {
                let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
                kept.push(format!("{key}='{quoted}'"));
            }
        }
    }
    out.rest = kept.join(" ");
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn split3(s: &str) -> (String, Option<String>, Option<String>) {
        let p = split(s);
        (p.rest, p.sslmode, p.sslrootcert)
    }

    #[test]
    fn modes_parse_by_libpq_names_and_prefer_is_refused() {
        for m in ["disable", "require", "verify-ca", "verify-full"] {
            assert_eq!(m.parse::<TlsMode>().unwrap().as_str(), m);
        }
        for (bad, says) in [
            ("prefer", "falls back to plain text"),
            ("allow", "falls back to plain text"),
            ("verify_full", "unknown mode"),
            ("VERIFY-FULL", "unknown mode"),
            ("", "unknown mode"),
        ] {
            let e = bad.parse::<TlsMode>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn url_tls_parameters_are_split_off_and_the_rest_kept() {
        assert_eq!(
            split3("postgres://u@db:5432/x?sslmode=verify-ca&connect_timeout=3&sslrootcert=%2Fetc%2Fca.pem"),
            (
                "postgres://u@db:5432/x?connect_timeout=3".into(),
                Some("verify-ca".into()),
                Some("/etc/ca.pem".into())
            )
        );
        assert_eq!(
            split3("postgresql://db/x?sslmode=disable"),
            ("postgresql://db/x".into(), Some("disable".into()), None)
        );
        assert_eq!(
            split3("postgres://db/x?application_name=a%26b&options=-c%20x%3Dy"),
            (
                "postgres://db/x?application_name=a%26b&options=-c%20x%3Dy".into(),
                None,
                None
            )
        );
        // No parameters; a '?' in the credentials is not their start.
        assert_eq!(
            split3("postgres://db/x"),
            ("postgres://db/x".into(), None, None)
        );
        assert_eq!(
            split3("postgres://u:p?w@db/x?sslmode=require"),
            ("postgres://u:p?w@db/x".into(), Some("require".into()), None)
        );
        // Percent-encoded keys are what tokio-postgres decodes too.
        assert_eq!(
            split3("postgres://db/x?ssl%6Dode=verify-full"),
            ("postgres://db/x".into(), Some("verify-full".into()), None)
        );
        // An unterminated parameter is left for tokio-postgres to report.
        let (rest, _, _) = split3("postgres://db/x?sslmode=disable&oops");
        assert_eq!(rest, "postgres://db/x?oops");
        assert!(rest.parse::<tokio_postgres::Config>().is_err());
    }

    #[test]
    fn key_value_tls_parameters_are_split_off_and_the_rest_quoted() {
        let (rest, mode, ca) = split3(
            "host=db user='a b' sslmode = verify-full sslrootcert='/x/it''s' password=p\\'q dbname=t",
        );
        // `''` closes the quote and starts a key `'s'` with no `=`: the
        // string does not parse, so it goes to tokio-postgres whole.
        assert_eq!((mode, ca), (None, None));
        assert!(rest.starts_with("host=db user='a b' sslmode"));
        assert!(rest.parse::<tokio_postgres::Config>().is_err());

        let (rest, mode, ca) = split3(
            "host=db user='a b' sslmode = verify-full sslrootcert='/x/it\\'s' password=p\\'q dbname=t",
        );
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(ca.as_deref(), Some("/x/it's"));
        assert_eq!(rest, "host='db' user='a b' password='p\\'q' dbname='t'");
        let c: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(c.get_user(), Some("a b"));
        assert_eq!(c.get_password(), Some(&b"p'q"[..]));
        assert_eq!(c.get_dbname(), Some("t"));
    }

    fn mode_of(url: &str) -> Result<TlsMode, String> {
        tls_mode(url, &TlsOptions::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn without_tls_settings_loopback_is_plain_and_anything_else_verify_full() {
        for local in [
            "postgres://u@127.0.0.1:5432/x",
            "postgres://u@localhost/x",
            "postgres://u@[::1]:5432/x",
            "postgres://u@127.0.0.2,localhost/x",
            "host=/var/run/postgresql dbname=x",
            "postgres://u@%2Fvar%2Frun%2Fpostgresql/x",
        ] {
            assert_eq!(mode_of(local), Ok(TlsMode::Disable), "{local}");
        }
        for remote in [
            "postgres://u@db.internal/x",
            "postgres://u@10.0.0.5/x",
            "postgres://u@127.0.0.1,db/x",
            "host=localhost hostaddr=10.0.0.5 dbname=x",
        ] {
            assert_eq!(mode_of(remote), Ok(TlsMode::VerifyFull), "{remote}");
        }
        // Said explicitly, the mode is what was said.
        assert_eq!(
            mode_of("postgres://u@127.0.0.1/x?sslmode=verify-full"),
            Ok(TlsMode::VerifyFull)
        );
        assert_eq!(
            mode_of("postgres://u@db/x?sslmode=disable"),
            Ok(TlsMode::Disable)
        );
        assert_eq!(
            mode_of("postgres://u@db/x?sslmode=require"),
            Ok(TlsMode::Require)
        );
        assert_eq!(
            mode_of("postgres://u@db/x?sslrootcert=system"),
            Ok(TlsMode::VerifyFull)
        );
    }

    fn ca_file() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, cert.pem()).unwrap();
        (dir, path)
    }

    #[test]
    fn a_ca_file_means_verify_full_unless_said_otherwise() {
        let (_dir, ca) = ca_file();
        let ca = ca.display().to_string();
        let opts = TlsOptions {
            mode: None,
            ca_file: Some(CaFile {
                path: PathBuf::from(&ca),
                setting: "store.tls.ca_file".into(),
            }),
        };
        assert_eq!(
            tls_mode("postgres://u@127.0.0.1/x", &opts).unwrap(),
            TlsMode::VerifyFull
        );
        assert_eq!(
            mode_of(&format!("postgres://u@127.0.0.1/x?sslrootcert={ca}")),
            Ok(TlsMode::VerifyFull)
        );
        assert_eq!(
            mode_of(&format!(
                "postgres://u@db/x?sslrootcert={ca}&sslmode=verify-ca"
            )),
            Ok(TlsMode::VerifyCa)
        );
        // libpq: require with a CA file checks the chain.
        assert_eq!(
            mode_of(&format!(
                "postgres://u@db/x?sslrootcert={ca}&sslmode=require"
            )),
            Ok(TlsMode::VerifyCa)
        );
        let with_mode = TlsOptions {
            mode: Some(TlsMode::VerifyCa),
            ..opts.clone()
        };
        assert_eq!(
            tls_mode("postgres://u@db/x?sslmode=verify-ca", &with_mode).unwrap(),
            TlsMode::VerifyCa
        );
    }

    #[test]
    fn bad_settings_are_errors_that_name_them() {
        let (dir, ca) = ca_file();
        let ca = ca.display().to_string();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let empty = empty.display().to_string();
        let configured = |mode: Option<TlsMode>, file: Option<&str>| TlsOptions {
            mode,
            ca_file: file.map(|f| CaFile {
                path: PathBuf::from(f),
                setting: "store.tls.ca_file".into(),
            }),
        };
        for (url, opts, says) in [
            (
                "postgres://db/x?sslmode=prefer",
                TlsOptions::default(),
                "sslmode in the connection string: \"prefer\" is not supported",
            ),
            (
                "postgres://db/x?sslmode=verify",
                TlsOptions::default(),
                "unknown mode \"verify\"",
            ),
            (
                "sslmode=bogus host=db",
                TlsOptions::default(),
                "unknown mode \"bogus\"",
            ),
            (
                "postgres://db/x?sslmode=disable",
                configured(Some(TlsMode::VerifyFull), None),
                "sslmode=disable and the configured TLS mode is verify-full",
            ),
            (
                "postgres://db/x?sslrootcert=/a.pem",
                configured(None, Some(&ca)),
                "named twice, by sslrootcert in the connection string and by store.tls.ca_file",
            ),
            (
                "postgres://db/x?sslrootcert=",
                TlsOptions::default(),
                "sslrootcert in the connection string is empty",
            ),
            (
                "postgres://db/x?sslrootcert=/nonexistent/ca.pem",
                TlsOptions::default(),
                "sslrootcert /nonexistent/ca.pem: No such file",
            ),
            (
                "postgres://db/x",
                configured(None, Some("/nonexistent/ca.pem")),
                "store.tls.ca_file /nonexistent/ca.pem: No such file",
            ),
            (
                "postgres://db/x",
                configured(None, Some(&empty)),
                "no PEM certificate in it",
            ),
            (
                "postgres://db/x?sslmode=disable",
                configured(None, Some(&ca)),
                "store.tls.ca_file names a CA file but sslmode is disable",
            ),
            (
                "postgres://db/x?sslmode=verify-ca&sslrootcert=system",
                TlsOptions::default(),
                "sslrootcert=system needs sslmode=verify-full",
            ),
            (
                "host=/var/run/postgresql sslmode=require",
                TlsOptions::default(),
                "no TLS on a Unix socket",
            ),
            (
                "hostaddr=10.0.0.5 sslmode=verify-full",
                TlsOptions::default(),
                "needs a host name",
            ),
            (
                "hostaddr=10.0.0.5",
                TlsOptions::default(),
                "needs a host name",
            ),
            (
                "postgres://db/x?sslcert=/c.pem",
                TlsOptions::default(),
                "unknown option `sslcert`",
            ),
        ] {
            let e = tls_mode(url, &opts).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains(says), "{url}: {e}");
        }
    }

    #[test]
    fn a_failed_handshake_says_what_to_change_and_a_default_says_it_was_one() {
        let e = |m: &str| StoreError::Backend(m.into());
        let said = explain(
            e("postgres pool: error performing TLS handshake: invalid peer certificate: UnknownIssuer"),
            TlsMode::VerifyCa,
            false,
        )
        .to_string();
        assert!(said.ends_with("(sslmode=verify-ca: the server's certificate is not signed by a trusted CA: name its CA (sslrootcert, or the configured CA file))"), "{said}");
        let defaulted = explain(
            e("postgres pool: error performing TLS handshake: server does not support TLS"),
            TlsMode::VerifyFull,
            true,
        )
        .to_string();
        assert!(defaulted.contains("has TLS off"), "{defaulted}");
        assert!(
            defaulted.contains("verify-full is the default for a host that is not this machine"),
            "{defaulted}"
        );
        // Anything else is left as it was.
        let other = explain(
            e("postgres: password authentication failed"),
            TlsMode::VerifyFull,
            true,
        );
        assert_eq!(
            other.to_string(),
            "storage failure: postgres: password authentication failed"
        );
    }

    #[test]
    fn the_connection_string_without_tls_parameters_still_shows_a_password() {
        let c = parse_without_tls("postgres://u:secret@db/x?sslmode=verify-full").unwrap();
        assert_eq!(c.get_password(), Some(&b"secret"[..]));
        assert!(parse_without_tls("postgres://u@db/x?sslmode=verify-full")
            .unwrap()
            .get_password()
            .is_none());
    }
}
