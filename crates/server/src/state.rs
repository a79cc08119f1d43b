//! Shared server state and how it is built from the config and data dirs.

use crate::config::ServerConfig;
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tollgate_audit::AuditEvent;
use tollgate_core::Clock;
use tollgate_identity::{SigningKeyPair, Tokens, TrustBundle};
use tollgate_policy::PolicyPack;
use tollgate_store::{Batch, PostgresStore, SqliteStore, Store};

pub use tollgate_store::FROZEN_KEY;
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
pub const ISSUER_KEY_FILE: &str = "issuer-key.der";
pub const DB_FILE: &str = "tollgate.db";

/// The state every handler and service operation shares.
pub type Shared = Arc<AppState>;

/// A pack evaluated beside the enforced one, and where it came from.
pub struct ShadowPack {
    pub pack: PolicyPack,
    /// The directory it was read from.
    pub source: String,
    /// When it was loaded (Unix seconds).
    pub loaded_at: i64,
}

pub struct AppState {
    pub store: Arc<dyn Store>,
    pub pack: ArcSwap<PolicyPack>,
    /// The shadow pack, if one is loaded: evaluated beside `pack`, never
    /// enforced (`service::gateway::load_shadow`).
    pub shadow: arc_swap::ArcSwapOption<ShadowPack>,
    pub tokens: Tokens,
    pub clock: Arc<dyn Clock>,
    pub config: ServerConfig,
    /// Where the pack is read from on reload; `None` = the embedded pack.
    pub config_dir: Option<PathBuf>,
    /// SHA-256 of the admin token; compared hash-to-hash.
    pub admin_token_hash: String,
    pub metrics: Metrics,
    /// Approvers signing in with OIDC ID tokens, if configured.
    pub oidc: Option<tollgate_identity::OidcVerifier>,
    /// Woken on every approval change, for long-polls.
    pub approval_events: tokio::sync::Notify,
    /// Woken when this process queued webhook messages, so its delivery
    /// worker sends them at once instead of at its next poll.
    pub outbox_ready: tokio::sync::Notify,
    /// Cancelled when the server starts to stop, so answers that stream
    /// until told otherwise (the console's events, MCP streams) end and a
    /// graceful stop does not wait for them forever.
    pub stopping: tokio_util::sync::CancellationToken,
    pub audit: crate::audit::AuditKeys,
    /// The newest signed checkpoint, cached.
    pub checkpoint: std::sync::Mutex<Option<tollgate_audit::checkpoint::Checkpoint>>,
    /// Upstream MCP servers behind the gateway, with their credentials.
    pub upstreams: crate::upstream::Upstreams,
    /// External trust domains whose bundles come from an endpoint.
    pub bundle_endpoints: crate::bundles::BundleEndpoints,
    /// Spans for decisions and MCP forwards, when traces are exported.
    pub telemetry: crate::telemetry::Telemetry,
    /// `http://<address>` this process serves on, set when it starts
    /// serving: the base of absolute URLs when `public_url` is not set.
    pub listen_url: std::sync::OnceLock<String>,
    /// The last readiness probe (`/readyz`).
    pub readiness: crate::health::Readiness,
    /// Refused credentials, aggregated per source and second.
    pub refusals: crate::refusals::RefusalLog,
    /// This process's id among the replicas over the store, new at every
    /// start: the holder of its `replica:<id>` lease and of the
    /// `background` lease, and the replica named on the calls it holds.
    pub replica: String,
}

/// The configured store, opened (migrations applied) and named for errors:
/// the data directory's SQLite file, or PostgreSQL.
pub async fn open_store(
    cfg: &crate::config::StoreConfig,
    config_dir: &Path,
    data: &Path,
) -> Result<(Arc<dyn Store>, String), StartError> {
    let Some(url) = cfg.postgres_url() else {
        let path = data.join(DB_FILE);
        let store = SqliteStore::open(&path)?;
        return Ok((Arc::new(store), path.display().to_string()));
    };
    if PostgresStore::url_has_password(url) {
        return Err(StartError::Config(
            "store: the URL carries a password; put it in store.password_file or the variable store.password_env names".into(),
        ));
    }
    let password = match (&cfg.password_file, &cfg.password_env) {
        (Some(file), _) => {
            let p = config_dir.join(file);
            let text = std::fs::read_to_string(&p).map_err(|e| {
                StartError::Config(format!("store.password_file {}: {e}", p.display()))
            })?;
            Some(text.trim_end_matches(['\r', '\n']).to_string())
        }
        (None, Some(var)) => Some(
            std::env::var(var)
                .map_err(|_| StartError::Config(format!("store.password_env: {var} is not set")))?,
        ),
        (None, None) => None,
    };
    if let Some(p) = &password {
        // A password must never reach a log line.
        crate::redact::register([p.clone()]);
    }
    let tls = tollgate_store::TlsOptions {
        mode: cfg.tls.mode().map_err(StartError::Config)?,
        ca_file: cfg.tls.ca_file.as_ref().map(|f| tollgate_store::CaFile {
            path: config_dir.join(f),
            setting: "store.tls.ca_file".into(),
        }),
    };
    if tollgate_store::tls_mode(url, &tls)? == tollgate_store::TlsMode::Require {
        tracing::warn!(
            "store: sslmode=require encrypts the connection to PostgreSQL but does not check \
             the server's certificate: anyone on the path can pose as the database. Name its \
             CA (store.tls.ca_file or sslrootcert) for verify-full"
        );
    }
    let store =
        PostgresStore::connect_with(url, cfg.schema.as_deref(), password.as_deref(), &tls).await?;
    let name = match &cfg.schema {
        Some(s) => format!("PostgreSQL store (schema {s})"),
        None => "PostgreSQL store".to_string(),
    };
    Ok((Arc::new(store), name))
}

/// Open the configured store (with the environment's overrides) and apply
/// its pending migrations, for operators who apply them by hand before
/// starting replicas (`tollgate store migrate`). Returns the store's name.
pub async fn migrate_store(opts: &Options) -> Result<String, StartError> {
    let config = read_config(opts.config_dir.as_deref())?;
    let store = config.store.with_env(|k| std::env::var(k).ok());
    store
        .validate()
        .map_err(|e| StartError::Config(format!("TOLLGATE_STORE: {e}")))?;
    let config_dir = opts.config_dir.as_deref().unwrap_or(Path::new("."));
    create_data_dir(&opts.data_dir)?;
    let (_, name) = open_store(&store, config_dir, &opts.data_dir).await?;
    Ok(name)
}

/// Where to find things, as the CLI resolved them.
pub struct Options {
    pub config_dir: Option<PathBuf>,
    pub data_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Policy(#[from] tollgate_policy::PolicyError),
    #[error("data directory {path}: {message}")]
    Data { path: String, message: String },
    #[error(transparent)]
    Store(#[from] tollgate_store::StoreError),
}

fn data_err(path: &Path, e: impl std::fmt::Display) -> StartError {
    StartError::Data {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Write a secret file readable by the owner only.
fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), StartError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| data_err(path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| data_err(path, e))
}

pub fn random_token(prefix: &str) -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}

pub fn load_pack(
    config_dir: Option<&Path>,
    options: tollgate_policy::LoadOptions,
) -> Result<PolicyPack, tollgate_policy::PolicyError> {
    match config_dir {
        Some(dir) => PolicyPack::load_dir_with(dir, options),
        None => crate::embedded::pack(options),
    }
}

fn config_err(path: &Path, e: impl std::fmt::Display) -> StartError {
    StartError::Config(format!("{}: {e}", path.display()))
}

/// `tollgate.yaml` from the config dir, or the embedded one.
fn read_config(config_dir: Option<&Path>) -> Result<ServerConfig, StartError> {
    match config_dir {
        Some(dir) => {
            let p = dir.join("tollgate.yaml");
            let text = std::fs::read_to_string(&p).map_err(|e| config_err(&p, e))?;
            ServerConfig::from_yaml(&text).map_err(StartError::Config)
        }
        None => ServerConfig::from_yaml(crate::embedded::config_text()).map_err(StartError::Config),
    }
}

fn create_data_dir(data: &Path) -> Result<(), StartError> {
    if !data.exists() {
        std::fs::create_dir_all(data).map_err(|e| data_err(data, e))?;
        // The directory holds the audit log, evidence and keys: owner only.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| data_err(data, e))?;
        }
    }
    Ok(())
}

/// The key that signs agent tokens, created on first start.
fn issuer_key(data: &Path) -> Result<SigningKeyPair, StartError> {
    let key_path = data.join(ISSUER_KEY_FILE);
    if key_path.exists() {
        let der = std::fs::read(&key_path).map_err(|e| data_err(&key_path, e))?;
        SigningKeyPair::from_pkcs8_der(&der).map_err(|e| data_err(&key_path, e))
    } else {
        let (key, der) = SigningKeyPair::generate().map_err(|e| data_err(&key_path, e))?;
        write_secret(&key_path, &der)?;
        Ok(key)
    }
}

/// The admin token, created on first start.
fn admin_token(data: &Path) -> Result<String, StartError> {
    let token_path = data.join(ADMIN_TOKEN_FILE);
    if token_path.exists() {
        Ok(std::fs::read_to_string(&token_path)
            .map_err(|e| data_err(&token_path, e))?
            .trim()
            .to_string())
    } else {
        let t = random_token("tga_");
        write_secret(&token_path, t.as_bytes())?;
        Ok(t)
    }
}

/// `tokens`, also trusting the SPIFFE bundles the config names.
fn with_trust_bundles(
    mut tokens: Tokens,
    config: &ServerConfig,
    config_dir: &Path,
) -> Result<Tokens, StartError> {
    for b in &config.trust_bundles {
        let Some(file) = &b.jwks_file else {
            // From its bundle endpoint, once fetched (`bundles.rs`).
            tokens = tokens.with_pending_domain(&b.trust_domain);
            continue;
        };
        let p = config_dir.join(file);
        let text = std::fs::read_to_string(&p).map_err(|e| config_err(&p, e))?;
        let bundle =
            TrustBundle::from_jwks(&b.trust_domain, &text).map_err(|e| config_err(&p, e))?;
        tokens = tokens.with_bundle(bundle.with_issuer(b.issuer.clone()));
    }
    Ok(tokens)
}

/// The verifier of approvers' OIDC ID tokens, if the config names one.
fn approver_oidc(
    config: &ServerConfig,
    config_dir: &Path,
) -> Result<Option<tollgate_identity::OidcVerifier>, StartError> {
    let Some(o) = &config.approver_oidc else {
        return Ok(None);
    };
    let p = config_dir.join(&o.jwks_file);
    let text = std::fs::read_to_string(&p).map_err(|e| config_err(&p, e))?;
    tollgate_identity::OidcVerifier::new(
        &o.issuer,
        &o.audience,
        &text,
        &o.name_claim,
        &o.role_claim,
    )
    .map(Some)
    .map_err(|e| config_err(&p, e))
}

/// The key that signs audit checkpoints, created on first start.
fn audit_signing_key(data: &Path) -> Result<ed25519_dalek::SigningKey, StartError> {
    let audit_key_path = data.join(crate::audit::AUDIT_KEY_FILE);
    if audit_key_path.exists() {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let der = std::fs::read(&audit_key_path).map_err(|e| data_err(&audit_key_path, e))?;
        ed25519_dalek::SigningKey::from_pkcs8_der(&der).map_err(|e| data_err(&audit_key_path, e))
    } else {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let der = key
            .to_pkcs8_der()
            .map_err(|e| data_err(&audit_key_path, e))?;
        write_secret(&audit_key_path, der.as_bytes())?;
        Ok(key)
    }
}

/// The audit log's HMAC key, created on first start.
fn hmac_key(data: &Path) -> Result<[u8; 32], StartError> {
    let hmac_path = data.join(crate::audit::HMAC_KEY_FILE);
    if hmac_path.exists() {
        let bytes = std::fs::read(&hmac_path).map_err(|e| data_err(&hmac_path, e))?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| data_err(&hmac_path, "expected 32 bytes"))
    } else {
        use rand::RngCore;
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        write_secret(&hmac_path, &k)?;
        Ok(k)
    }
}

impl AppState {
    /// The base of the absolute URLs this server hands out: `public_url`
    /// when configured, else the address it listens on (never a request's
    /// `Host` header, which the client chooses).
    pub fn base_url(&self) -> String {
        self.config
            .public_url
            .clone()
            .or_else(|| self.listen_url.get().cloned())
            .unwrap_or_else(|| "http://127.0.0.1:8181".into())
    }

    /// Open (or initialise) the data dir and load the pack.
    pub async fn open(opts: &Options, clock: Arc<dyn Clock>) -> Result<Arc<Self>, StartError> {
        let mut config = read_config(opts.config_dir.as_deref())?;
        config.store = config.store.with_env(|k| std::env::var(k).ok());
        config
            .store
            .validate()
            .map_err(|e| StartError::Config(format!("TOLLGATE_STORE: {e}")))?;
        let pack = load_pack(opts.config_dir.as_deref(), config.pack_options())?;
        let shadow = match &config.shadow_pack {
            Some(dir) => {
                let dir = opts
                    .config_dir
                    .as_deref()
                    .unwrap_or(Path::new("."))
                    .join(dir);
                let pack = PolicyPack::load_dir_with(&dir, config.pack_options()).map_err(|e| {
                    StartError::Config(format!("tollgate.yaml: shadow_pack {}: {e}", dir.display()))
                })?;
                Some((pack, dir))
            }
            None => None,
        };

        let data = &opts.data_dir;
        create_data_dir(data)?;
        let key = issuer_key(data)?;
        let admin_token = admin_token(data)?;

        // Key set files are named relative to the config dir (or the
        // working directory, with the embedded config).
        let config_dir = opts.config_dir.as_deref().unwrap_or(Path::new("."));
        let tokens = with_trust_bundles(
            Tokens::new(key, &config.issuer, &config.trust_domain, &config.audience),
            &config,
            config_dir,
        )?;
        let bundle_endpoints =
            crate::bundles::BundleEndpoints::from_config(&config.trust_bundles, config_dir, data)
                .map_err(|e| StartError::Config(format!("tollgate.yaml: trust_bundles: {e}")))?;
        crate::bundles::load_saved(&bundle_endpoints, &tokens, clock.now());
        let telemetry = crate::telemetry::Telemetry::from_config(&config.telemetry)
            .map_err(StartError::Config)?;
        let oidc = approver_oidc(&config, config_dir)?;
        let signing = audit_signing_key(data)?;
        let hmac = hmac_key(data)?;
        let audit = crate::audit::AuditKeys {
            signing,
            hmac,
            origin: format!("tollgate {}", config.trust_domain),
        };
        let (store, store_name) = open_store(&config.store, config_dir, data).await?;
        // Fail closed: never append to, or sign checkpoints over, a log that
        // no longer matches what was already signed.
        store
            .check_consistency()
            .await
            .map_err(|e| StartError::Data {
                path: store_name,
                message: format!("{e}; refusing to start (inspect with `tollgate audit verify`)"),
            })?;
        crate::redact::register([admin_token.clone()]);
        // Upstream credentials are read now: a missing one stops startup.
        let upstreams = crate::upstream::Upstreams::from_config(
            &config.mcp,
            opts.config_dir.as_deref(),
            &opts.data_dir,
            std::slice::from_ref(&admin_token),
        )
        .map_err(|e| StartError::Config(format!("tollgate.yaml: {e}")))?;
        let latest_checkpoint = store.checkpoints().await?.pop();
        let state = Arc::new(Self {
            store,
            pack: ArcSwap::from_pointee(pack),
            shadow: arc_swap::ArcSwapOption::empty(),
            tokens,
            bundle_endpoints,
            listen_url: std::sync::OnceLock::new(),
            telemetry,
            clock,
            config,
            config_dir: opts.config_dir.clone(),
            admin_token_hash: tollgate_core::sha256_hex(admin_token.as_bytes()),
            metrics: Metrics::default(),
            oidc,
            approval_events: tokio::sync::Notify::new(),
            outbox_ready: tokio::sync::Notify::new(),
            stopping: tokio_util::sync::CancellationToken::new(),
            audit,
            checkpoint: std::sync::Mutex::new(latest_checkpoint),
            readiness: crate::health::Readiness::default(),
            refusals: crate::refusals::RefusalLog::default(),
            upstreams,
            // `service::new_id`'s form, spelt out: `state` sits below `service`.
            replica: format!("replica_{}", uuid::Uuid::now_v7().simple()),
        });
        let pack = state.pack.load_full();
        state.audit_pack_loaded(&pack, "startup").await?;
        if let Some((shadow, dir)) = shadow {
            state.put_shadow(shadow, &dir, "tollgate").await?;
        }
        Ok(state)
    }

    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    pub fn latest_checkpoint(&self) -> Option<tollgate_audit::checkpoint::Checkpoint> {
        self.checkpoint.lock().ok().and_then(|c| c.clone())
    }

    pub fn set_latest_checkpoint(&self, cp: tollgate_audit::checkpoint::Checkpoint) {
        if let Ok(mut c) = self.checkpoint.lock() {
            if c.as_ref().is_none_or(|old| old.tree_size < cp.tree_size) {
                *c = Some(cp);
            }
        }
    }

    /// Whether the gateway is frozen, as the store says: the brake is
    /// shared by every process over the same database.
    pub async fn is_frozen(&self) -> Result<bool, tollgate_store::StoreError> {
        Ok(self.store.setting(FROZEN_KEY).await?.as_deref() == Some("true"))
    }

    /// Make `pack` the shadow pack, once its `policy.shadow_loaded` entry
    /// is durable.
    pub(crate) async fn put_shadow(
        &self,
        pack: PolicyPack,
        dir: &Path,
        actor: &str,
    ) -> Result<(), tollgate_store::StoreError> {
        let shadow = ShadowPack {
            source: dir.display().to_string(),
            loaded_at: self.now(),
            pack,
        };
        let ev = AuditEvent::new(
            self.now(),
            tollgate_core::EventKind::PolicyShadowLoaded,
            actor,
        )
        .outcome("loaded")
        .detail(serde_json::json!({
            "digest": shadow.pack.digest(),
            "policies": shadow.pack.policy_count(),
            "source": shadow.source,
            "enforced_digest": self.pack.load().digest(),
        }));
        self.store.commit(Batch::audit_only(ev)).await?;
        self.shadow.store(Some(Arc::new(shadow)));
        Ok(())
    }

    pub(crate) async fn audit_pack_loaded(
        &self,
        pack: &PolicyPack,
        why: &str,
    ) -> Result<(), tollgate_store::StoreError> {
        let ev = AuditEvent::new(self.now(), tollgate_core::EventKind::PolicyLoaded, "tollgate").detail(serde_json::json!({
            "digest": pack.digest(), "policies": pack.policy_count(), "trigger": why,
            "source": self.config_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_else(|| "embedded".into()),
        }));
        self.store.commit(Batch::audit_only(ev)).await.map(|_| ())
    }
}
