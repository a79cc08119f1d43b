//! External trust domains whose keys come from a SPIFFE bundle endpoint
//! (`trust_bundles: - bundle_endpoint: {url, ca_file?, refresh_seconds?}`).
//!
//! Each bundle is fetched before the server answers its first request, then
//! again as the bundle asks (`spiffe_refresh_hint`, or the configured
//! `refresh_seconds`), so a key rotation at the issuer (SPIRE, say) reaches
//! Tollgate without a restart. Choices, each failing closed:
//!
//! - Only the `https_web` profile: the endpoint is authenticated by its TLS
//!   certificate, against the system's roots or only the configured CA
//!   file. No redirects are followed, the answer is at most 1 MiB and must
//!   parse as a bundle with at least one JWT-SVID key.
//! - A failed fetch keeps the last good bundle (and is counted in
//!   `/metrics`, beside the bundle's age); it is retried sooner than a
//!   normal refresh. The last good bundle is also saved in the data
//!   directory (`bundles/<trust domain>.json`), so a restart while the
//!   endpoint is down still trusts what was trusted; with neither, the
//!   domain's SVIDs are refused until the endpoint answers.
//! - A bundle whose `spiffe_sequence` is lower than the one in use is
//!   refused: an endpoint replaying an old bundle cannot bring back a key
//!   the issuer has retired.
//! - Every change of a domain's keys is audited (`trust_bundle.updated`),
//!   with the key ids before and after.
//!
//! Every replica fetches on its own; for a few seconds after a rotation two
//! replicas may trust different key sets, as two caches would.

use crate::config::{BundleEndpointConfig, TrustBundleConfig};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate_audit::AuditEvent;
use tollgate_core::{EventKind, UnixTime};
use tollgate_identity::{Tokens, TrustBundle};

/// The largest bundle accepted from an endpoint.
const MAX_BUNDLE_BYTES: usize = 1 << 20;
/// Refresh interval when neither the config nor the bundle names one.
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// Bounds on any refresh interval: a hint of 0 must not spin, nor one of
/// a year leave a revoked key trusted that long.
const MIN_REFRESH: Duration = Duration::from_secs(1);
const MAX_REFRESH: Duration = Duration::from_secs(86_400);
/// After a failure, try again no later than this.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// One fetch, connection and body included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// What is known of one endpoint, for `/metrics`.
#[derive(Debug, Default, Clone)]
struct Status {
    /// When the bundle in use was fetched (or read from the saved copy).
    fetched_at: Option<UnixTime>,
    failures: u64,
    keys: usize,
}

/// One trust domain's bundle endpoint.
pub struct BundleEndpoint {
    pub trust_domain: String,
    url: String,
    issuer: Option<String>,
    refresh: Option<Duration>,
    client: reqwest::Client,
    /// The saved copy of the last good bundle.
    saved: PathBuf,
    status: Mutex<Status>,
}

/// Every configured bundle endpoint.
#[derive(Default)]
pub struct BundleEndpoints(Vec<Arc<BundleEndpoint>>);

impl BundleEndpoints {
    /// The endpoints the config names (file-based bundles are not here).
    pub fn from_config(
        bundles: &[TrustBundleConfig],
        config_dir: &Path,
        data: &Path,
    ) -> Result<Self, String> {
        let mut out = Vec::new();
        for b in bundles {
            let Some(e) = &b.bundle_endpoint else {
                continue;
            };
            out.push(Arc::new(BundleEndpoint::new(b, e, config_dir, data)?));
        }
        Ok(Self(out))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<BundleEndpoint>> {
        self.0.iter()
    }

    /// Prometheus text lines: each bundle's age, keys and failed fetches.
    pub fn metrics_text(&self, now: UnixTime) -> String {
        if self.0.is_empty() {
            return String::new();
        }
        let mut age = String::from(
            "# HELP tollgate_trust_bundle_age_seconds Seconds since the bundle in use was fetched from its endpoint.\n\
             # TYPE tollgate_trust_bundle_age_seconds gauge\n",
        );
        let mut keys = String::from(
            "# HELP tollgate_trust_bundle_keys JWT-SVID keys in the bundle in use (0: none yet).\n\
             # TYPE tollgate_trust_bundle_keys gauge\n",
        );
        let mut failures = String::from(
            "# HELP tollgate_trust_bundle_refresh_failures_total Failed fetches of the bundle endpoint.\n\
             # TYPE tollgate_trust_bundle_refresh_failures_total counter\n",
        );
        for e in &self.0 {
            let s = e.status();
            let label = format!("{{trust_domain=\"{}\"}}", label_value(&e.trust_domain));
            if let Some(at) = s.fetched_at {
                age.push_str(&format!(
                    "tollgate_trust_bundle_age_seconds{label} {}\n",
                    (now - at).max(0)
                ));
            }
            keys.push_str(&format!("tollgate_trust_bundle_keys{label} {}\n", s.keys));
            failures.push_str(&format!(
                "tollgate_trust_bundle_refresh_failures_total{label} {}\n",
                s.failures
            ));
        }
        format!("{age}{keys}{failures}")
    }
}

/// A Prometheus label value with `\`, `"` and newlines escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl BundleEndpoint {
    fn new(
        b: &TrustBundleConfig,
        e: &BundleEndpointConfig,
        config_dir: &Path,
        data: &Path,
    ) -> Result<Self, String> {
        crate::upstream::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(file) = &e.ca_file {
            let path = config_dir.join(file);
            let pem =
                std::fs::read(&path).map_err(|err| format!("ca_file {}: {err}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|err| format!("ca_file {}: {err}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "ca_file {} holds no PEM certificate",
                    path.display()
                ));
            }
            builder = builder.tls_certs_only(certs);
        }
        let client = builder
            .build()
            .map_err(|err| format!("building the HTTP client: {err}"))?;
        Ok(Self {
            trust_domain: b.trust_domain.clone(),
            url: e.url.clone(),
            issuer: b.issuer.clone(),
            refresh: e.refresh_seconds.map(Duration::from_secs),
            client,
            saved: data
                .join("bundles")
                .join(format!("{}.json", b.trust_domain)),
            status: Mutex::new(Status::default()),
        })
    }

    fn status(&self) -> Status {
        self.status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    fn update_status(&self, f: impl FnOnce(&mut Status)) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
    }

    /// GET the bundle: its text, bounded.
    async fn fetch_text(&self) -> Result<String, String> {
        let mut answer = self
            .client
            .get(&self.url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {}: {e}", self.url))?;
        if !answer.status().is_success() {
            return Err(format!("GET {}: status {}", self.url, answer.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = answer
            .chunk()
            .await
            .map_err(|e| format!("GET {}: {e}", self.url))?
        {
            if body.len() + chunk.len() > MAX_BUNDLE_BYTES {
                return Err(format!("GET {}: the bundle exceeds 1 MiB", self.url));
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body).map_err(|_| format!("GET {}: the bundle is not UTF-8", self.url))
    }

    fn parse(&self, text: &str) -> Result<TrustBundle, String> {
        TrustBundle::from_jwks(&self.trust_domain, text)
            .map(|b| b.with_issuer(self.issuer.clone()))
            .map_err(|e| format!("{}: {e}", self.url))
    }

    /// How long until the next fetch, given the bundle in use.
    fn next_refresh(&self, hint: Option<u64>) -> Duration {
        self.refresh
            .or(hint.map(Duration::from_secs))
            .unwrap_or(DEFAULT_REFRESH)
            .clamp(MIN_REFRESH, MAX_REFRESH)
    }
}

/// Install the saved copy of each endpoint's bundle, if there is one:
/// what the server trusts until the first fetch answers.
pub fn load_saved(endpoints: &BundleEndpoints, tokens: &Tokens, now: UnixTime) {
    for e in endpoints.iter() {
        let Ok(text) = std::fs::read_to_string(&e.saved) else {
            continue;
        };
        match e.parse(&text) {
            Ok(bundle) => {
                let keys = bundle.key_ids().len();
                tokens.set_bundle(bundle);
                e.update_status(|s| {
                    // Its age is unknown; count it from now.
                    s.fetched_at = Some(now);
                    s.keys = keys;
                });
            }
            Err(err) => tracing::warn!(
                trust_domain = %e.trust_domain, error = %err,
                "the saved trust bundle does not parse; ignored"
            ),
        }
    }
}

/// A change of a domain's keys: the audit entry's detail.
pub struct KeysChanged {
    pub trust_domain: String,
    pub url: String,
    pub sequence: Option<u64>,
    pub before: Vec<String>,
    pub after: Vec<String>,
}

impl KeysChanged {
    /// The `trust_bundle.updated` entry recording it.
    pub fn event(&self, now: UnixTime, replica: &str) -> AuditEvent {
        AuditEvent::new(now, EventKind::TrustBundleUpdated, "tollgate").detail(json!({
            "trust_domain": self.trust_domain,
            "url": self.url,
            "sequence": self.sequence,
            "key_ids": self.after,
            "previous_key_ids": self.before,
            "replica": replica,
        }))
    }
}

/// What one refresh did: when to fetch again, and the change of keys to
/// record, if any.
pub struct Refreshed {
    pub next: Duration,
    pub changed: Option<KeysChanged>,
}

/// Fetch one bundle and install it into `tokens` if it is acceptable; a
/// failure keeps the bundle in use.
pub async fn refresh(e: &BundleEndpoint, tokens: &Tokens, now: UnixTime) -> Refreshed {
    let current = tokens.bundle(&e.trust_domain);
    let result = match e.fetch_text().await {
        Ok(text) => install(e, tokens, &text, current.as_deref(), now),
        Err(err) => Err(err),
    };
    match result {
        Ok((changed, hint)) => {
            if let Some(c) = &changed {
                tracing::info!(trust_domain = %c.trust_domain, keys = ?c.after, "trust bundle updated");
            }
            Refreshed {
                next: e.next_refresh(hint),
                changed,
            }
        }
        Err(err) => {
            e.update_status(|s| s.failures += 1);
            tracing::warn!(
                trust_domain = %e.trust_domain, error = %err,
                "trust bundle refresh failed; keeping the last good bundle"
            );
            Refreshed {
                next: e
                    .next_refresh(current.and_then(|b| b.refresh_hint()))
                    .min(RETRY_AFTER_FAILURE),
                changed: None,
            }
        }
    }
}

/// Check a fetched bundle against the one in use, install it, save it.
/// Returns the change of keys (none if the same) and the bundle's hint.
fn install(
    e: &BundleEndpoint,
    tokens: &Tokens,
    text: &str,
    current: Option<&TrustBundle>,
    now: UnixTime,
) -> Result<(Option<KeysChanged>, Option<u64>), String> {
    let bundle = e.parse(text)?;
    if let (Some(in_use), Some(new)) = (current.and_then(TrustBundle::sequence), bundle.sequence())
    {
        if new < in_use {
            return Err(format!(
                "{}: spiffe_sequence went back from {in_use} to {new}; refused",
                e.url
            ));
        }
    }
    let after = bundle.key_ids();
    let before = current.map(TrustBundle::key_ids).unwrap_or_default();
    let (hint, sequence) = (bundle.refresh_hint(), bundle.sequence());
    let keys = after.len();
    tokens.set_bundle(bundle);
    e.update_status(|s| {
        s.fetched_at = Some(now);
        s.keys = keys;
    });
    if let Err(err) = save(&e.saved, text) {
        tracing::warn!(error = %err, "could not save the trust bundle");
    }
    let changed = (current.is_none() || before != after).then(|| KeysChanged {
        trust_domain: e.trust_domain.clone(),
        url: e.url.clone(),
        sequence,
        before,
        after,
    });
    Ok((changed, hint))
}

/// Write the bundle next to the data, atomically (a crash mid-write must
/// not leave half a bundle to load at the next start).
fn save(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(refresh: Option<u64>) -> BundleEndpoint {
        let dir = std::env::temp_dir();
        let b = TrustBundleConfig {
            trust_domain: "partner.test".into(),
            jwks_file: None,
            bundle_endpoint: Some(BundleEndpointConfig {
                url: "https://bundles.partner.test/".into(),
                ca_file: None,
                refresh_seconds: refresh,
            }),
            issuer: None,
        };
        let e = b.bundle_endpoint.clone().unwrap();
        BundleEndpoint::new(&b, &e, &dir, &dir).unwrap()
    }

    #[test]
    fn the_refresh_interval_follows_config_then_hint_within_bounds() {
        assert_eq!(endpoint(None).next_refresh(None), DEFAULT_REFRESH);
        assert_eq!(
            endpoint(None).next_refresh(Some(60)),
            Duration::from_secs(60)
        );
        assert_eq!(
            endpoint(Some(5)).next_refresh(Some(60)),
            Duration::from_secs(5)
        );
        assert_eq!(endpoint(None).next_refresh(Some(0)), MIN_REFRESH);
        assert_eq!(endpoint(None).next_refresh(Some(u64::MAX)), MAX_REFRESH);
    }

    #[test]
    fn metrics_escape_the_trust_domain() {
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
