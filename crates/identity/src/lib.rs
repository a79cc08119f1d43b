//! Tokens: Tollgate's built-in JWT-SVID issuer, task credentials, and the
//! verification of both (plus JWT-SVIDs from external SPIFFE issuers).
//!
//! Architecture invariants:
//! - No IO and no wall clock: keys come in as bytes, time as an argument.
//!   Expiry is checked here against the caller's `now` (jsonwebtoken's own
//!   clock checks are switched off) so tests control time.
//! - Algorithms are pinned per key, never taken from the token header: a
//!   token whose `alg` differs from its key's algorithm is refused, which is
//!   what makes `alg: none` and HMAC-confusion attacks impossible.
//! - An SVID and a task credential can never stand in for each other: they
//!   differ in `typ` header and audience, and each verifier checks both.
//! - One verifier (`verify_jwt`) checks every token kind: `typ`, signature,
//!   `aud`, `iss` (always for Tollgate's own tokens and OIDC, for external
//!   SVIDs when the trust domain names its issuer), `exp`, `nbf`, `iat`.
//! - Knows nothing of tasks being revoked; that is the store's job, checked
//!   by the server on every request.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use tollgate_core::{Scope, SpiffeId, UnixTime};

/// `typ` header of JWT-SVIDs (the SPIFFE JWT-SVID spec allows `JWT` or `JOSE`).
pub const SVID_TYP: &str = "JWT";
/// `typ` header of task credentials.
pub const TASK_TYP: &str = "tollgate-task+jwt";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("token has no key id (kid)")]
    MissingKid,
    #[error("no trusted key with id {0:?}")]
    UnknownKey(String),
    #[error("token signature is invalid")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not yet valid")]
    NotYetValid,
    #[error("token audience is wrong")]
    Audience,
    #[error("token is not a {0}")]
    WrongType(&'static str),
    #[error("token subject is not a valid spiffe id: {0}")]
    Subject(String),
    #[error("trust domain {0:?} is not trusted")]
    UntrustedDomain(String),
    #[error("no trust bundle for {0:?} yet: its bundle endpoint has not answered")]
    NoBundleYet(String),
    #[error("trust bundle: {0}")]
    Bundle(String),
    #[error("key: {0}")]
    Key(String),
    #[error("token issuer is not the configured one")]
    Issuer,
    #[error("token lacks the {0:?} claim")]
    Claim(String),
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => TokenError::Signature,
        K::ExpiredSignature => TokenError::Expired,
        K::ImmatureSignature => TokenError::NotYetValid,
        K::InvalidAudience => TokenError::Audience,
        K::InvalidAlgorithm | K::InvalidAlgorithmName => TokenError::Algorithm("mismatch".into()),
        _ => TokenError::Malformed,
    }
}

/// An Ed25519 key pair Tollgate signs with, and its public JWK.
pub struct SigningKeyPair {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    public_jwk: serde_json::Value,
}

impl SigningKeyPair {
    /// A fresh key; returns it with its PKCS#8 DER encoding for storage.
    pub fn generate() -> Result<(Self, Vec<u8>), TokenError> {
        let sk = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let der = sk
            .to_pkcs8_der()
            .map_err(|e| TokenError::Key(e.to_string()))?
            .as_bytes()
            .to_vec();
        Ok((Self::from_pkcs8_der(&der)?, der))
    }

    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, TokenError> {
        let sk = ed25519_dalek::SigningKey::from_pkcs8_der(der)
            .map_err(|e| TokenError::Key(format!("not an ed25519 pkcs#8 key: {e}")))?;
        let x = B64.encode(sk.verifying_key().to_bytes());
        // RFC 7638 thumbprint: members in lexicographic order, no whitespace.
        let thumb = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let kid = B64.encode(Sha256::digest(thumb.as_bytes()));
        let public_jwk = serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "jwt-svid",
        });
        Ok(Self {
            kid,
            encoding: EncodingKey::from_ed_der(der),
            decoding: DecodingKey::from_ed_der(&sk.verifying_key().to_bytes()),
            public_jwk,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn public_jwk(&self) -> &serde_json::Value {
        &self.public_jwk
    }

    fn sign<T: Serialize>(&self, typ: &str, claims: &T) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        header.typ = Some(typ.to_string());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| TokenError::Key(e.to_string()))
    }
}

/// Claims of a JWT-SVID as Tollgate issues them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SvidClaims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: UnixTime,
    pub iat: UnixTime,
    pub jti: String,
}

/// RFC 8693 actor claim: who acted on whose behalf, nested for each hop.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Actor {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

/// Claims of a task credential.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TaskClaims {
    pub iss: String,
    /// The agent's SPIFFE ID.
    pub sub: String,
    pub aud: String,
    pub exp: UnixTime,
    pub iat: UnixTime,
    pub jti: String,
    pub task_id: String,
    pub incident_id: String,
    #[serde(default)]
    pub scope: Scope,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
}

/// What a task credential grants; [`Tokens::issue_task_credential`] signs it.
#[derive(Debug, Clone)]
pub struct TaskGrant {
    pub sub: String,
    pub task_id: String,
    pub incident_id: String,
    pub scope: Scope,
    pub iat: UnixTime,
    pub exp: UnixTime,
    pub jti: String,
    pub act: Option<Actor>,
}

/// A verified SVID: who the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSvid {
    pub spiffe_id: SpiffeId,
    pub exp: UnixTime,
    /// When it was issued, if it says (Tollgate's own always do).
    pub iat: Option<UnixTime>,
    /// Whether an external trust domain's issuer signed it (not Tollgate's own).
    pub external: bool,
}

/// One verification key with its pinned algorithm.
struct TrustedKey {
    alg: Algorithm,
    key: DecodingKey,
}

/// The JWT-SVID keys of one external trust domain (SPIFFE bundle format).
pub struct TrustBundle {
    trust_domain: String,
    /// `iss` every SVID of this domain must carry, when configured. The
    /// JWT-SVID spec leaves `iss` to the issuer, so it is checked only if
    /// the operator names it.
    issuer: Option<String>,
    keys: HashMap<String, TrustedKey>,
    /// `spiffe_sequence`: increases with every new version of the bundle.
    sequence: Option<u64>,
    /// `spiffe_refresh_hint`: how often to fetch it again, seconds.
    refresh_hint: Option<u64>,
}

impl TrustBundle {
    /// Parse a SPIFFE trust bundle (a JWK Set, with the optional
    /// `spiffe_sequence` and `spiffe_refresh_hint`) or a plain JWK Set. Keys
    /// whose `use` is `x509-svid` are skipped; every JWT key needs a `kid`.
    /// Accepted key types: RSA (RS256), EC P-256 (ES256), OKP Ed25519 (EdDSA).
    pub fn from_jwks(trust_domain: &str, json: &str) -> Result<Self, TokenError> {
        let doc: serde_json::Value =
            serde_json::from_str(json).map_err(|e| TokenError::Bundle(e.to_string()))?;
        let number = |field: &str| -> Result<Option<u64>, TokenError> {
            match doc.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                    TokenError::Bundle(format!("{field} must be a non-negative integer"))
                }),
            }
        };
        let sequence = number("spiffe_sequence")?;
        let refresh_hint = number("spiffe_refresh_hint")?;
        let keys = doc
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or_else(|| TokenError::Bundle("no keys array".into()))?;
        let mut out = HashMap::new();
        for k in keys {
            if k.get("use").and_then(|u| u.as_str()) == Some("x509-svid") {
                continue;
            }
            let kid = k
                .get("kid")
                .and_then(|v| v.as_str())
                .ok_or_else(|| TokenError::Bundle("a jwt-svid key has no kid".into()))?
                .to_string();
            let alg = match (
                k.get("kty").and_then(|v| v.as_str()),
                k.get("crv").and_then(|v| v.as_str()),
            ) {
                (Some("RSA"), _) => Algorithm::RS256,
                (Some("EC"), Some("P-256")) => Algorithm::ES256,
                (Some("OKP"), Some("Ed25519")) => {
                    // jsonwebtoken slices the key to 32 bytes; a shorter one
                    // would panic there and a longer one would be truncated.
                    let x = k.get("x").and_then(|v| v.as_str()).unwrap_or_default();
                    if B64.decode(x).map(|b| b.len()) != Ok(32) {
                        return Err(TokenError::Bundle(format!(
                            "key {kid}: ed25519 x must be 32 bytes"
                        )));
                    }
                    Algorithm::EdDSA
                }
                (kty, crv) => {
                    return Err(TokenError::Bundle(format!(
                        "key {kid}: unsupported key type {kty:?}/{crv:?}"
                    )))
                }
            };
            let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(k.clone())
                .map_err(|e| TokenError::Bundle(format!("key {kid}: {e}")))?;
            let key = DecodingKey::from_jwk(&jwk)
                .map_err(|e| TokenError::Bundle(format!("key {kid}: {e}")))?;
            out.insert(kid, TrustedKey { alg, key });
        }
        if out.is_empty() {
            return Err(TokenError::Bundle("no jwt-svid keys".into()));
        }
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            issuer: None,
            keys: out,
            sequence,
            refresh_hint,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The bundle's `spiffe_sequence`, if it carries one.
    pub fn sequence(&self) -> Option<u64> {
        self.sequence
    }

    /// The bundle's `spiffe_refresh_hint` in seconds, if it carries one.
    pub fn refresh_hint(&self) -> Option<u64> {
        self.refresh_hint
    }

    /// The key ids of its JWT-SVID keys, sorted.
    pub fn key_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.keys.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Require `iss` to equal `issuer` on every SVID of this trust domain.
    pub fn with_issuer(mut self, issuer: Option<String>) -> Self {
        self.issuer = issuer;
        self
    }
}

/// A verified SVID's answer, once its claims are checked: the subject read
/// before verification must be the one that was signed.
fn finish_svid(
    raw: RawClaims,
    peeked_sub: String,
    id: SpiffeId,
    external: bool,
) -> Result<VerifiedSvid, TokenError> {
    if raw.sub != peeked_sub {
        return Err(TokenError::Malformed);
    }
    Ok(VerifiedSvid {
        spiffe_id: id,
        exp: raw.exp,
        iat: raw.iat,
        external,
    })
}

/// The registered claims every token kind is checked on.
#[derive(Debug, Deserialize)]
struct RawClaims {
    #[serde(default)]
    iss: Option<String>,
    sub: String,
    exp: UnixTime,
    #[serde(default)]
    nbf: Option<UnixTime>,
    #[serde(default)]
    iat: Option<UnixTime>,
}

/// What a `typ` header must say.
#[derive(Debug, Clone, Copy)]
enum TypRule {
    /// Exactly this value.
    Exactly(&'static str),
    /// `JWT` or `JOSE`, or absent (the JWT-SVID spec, for external issuers).
    JwtOrJose,
    /// Anything (OIDC ID tokens: `typ` is not specified there).
    Any,
}

impl TypRule {
    fn admits(self, typ: Option<&str>) -> bool {
        match self {
            TypRule::Exactly(want) => typ == Some(want),
            TypRule::JwtOrJose => matches!(typ, None | Some("JWT") | Some("JOSE")),
            TypRule::Any => true,
        }
    }
}

/// Everything a token of one kind must satisfy besides its signature.
/// Every token Tollgate accepts goes through [`verify_jwt`] with one of
/// these, so no kind can skip a claim check.
#[derive(Debug, Clone, Copy)]
struct Expect<'a> {
    /// Which kind of token this is, for the `WrongType` error.
    kind: &'static str,
    typ: TypRule,
    aud: &'a str,
    /// `iss` must be present and equal this; `None` = not checked.
    iss: Option<&'a str>,
}

/// Issues and verifies Tollgate's tokens.
pub struct Tokens {
    key: SigningKeyPair,
    /// `iss` of every token Tollgate signs.
    issuer: String,
    /// The trust domain Tollgate's own issuer vouches for.
    trust_domain: String,
    /// Audience of SVIDs (the gateway); task credentials use `<audience>/task`.
    audience: String,
    /// External trust domains and their current bundles; `None` until a
    /// bundle endpoint first answers. Replaced whole on refresh.
    bundles: std::sync::RwLock<HashMap<String, Option<Arc<TrustBundle>>>>,
    /// Clock skew tolerated on `exp` and `nbf`, seconds.
    leeway: i64,
    /// Task credentials already verified.
    verified: VerifiedCredentials,
}

/// How many verified task credentials are remembered; past it the cache
/// starts over (costing one re-verification per credential).
const MAX_VERIFIED: usize = 65_536;

/// Task credentials already verified, so a credential used for many calls
/// costs one Ed25519 verification and JSON parse, not one per call. Keyed
/// by the SHA-256 of the whole token (a token differing in any byte is a
/// miss and is verified); an entry serves only until the credential's own
/// `exp` (plus leeway), exactly as re-verifying would. Liveness is not
/// cached: the gateway reads the task and its agent from the store on
/// every call, so a revoked credential is refused on the very next request,
/// and the gateway drops the entry when it finds the task dead.
#[derive(Default)]
struct VerifiedCredentials {
    entries: std::sync::Mutex<HashMap<[u8; 32], TaskClaims>>,
}

impl VerifiedCredentials {
    fn key(token: &str) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(token.as_bytes()).into()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], TaskClaims>> {
        // Only cached verifications live here; a poisoned lock keeps them.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Tokens {
    pub fn new(key: SigningKeyPair, issuer: &str, trust_domain: &str, audience: &str) -> Self {
        Self {
            key,
            issuer: issuer.to_string(),
            trust_domain: trust_domain.to_string(),
            audience: audience.to_string(),
            bundles: std::sync::RwLock::new(HashMap::new()),
            leeway: 30,
            verified: VerifiedCredentials::default(),
        }
    }

    pub fn with_bundle(self, bundle: TrustBundle) -> Self {
        self.set_bundle(bundle);
        self
    }

    /// Trust `trust_domain`, whose keys come later ([`Self::set_bundle`],
    /// from its bundle endpoint); until then its SVIDs are refused.
    pub fn with_pending_domain(self, trust_domain: &str) -> Self {
        self.write_bundles()
            .entry(trust_domain.to_string())
            .or_insert(None);
        self
    }

    /// Install (or replace) a trust domain's bundle: SVIDs verified from
    /// now on use exactly its keys.
    pub fn set_bundle(&self, bundle: TrustBundle) {
        self.write_bundles()
            .insert(bundle.trust_domain.clone(), Some(Arc::new(bundle)));
    }

    /// The current bundle of an external trust domain.
    pub fn bundle(&self, trust_domain: &str) -> Option<Arc<TrustBundle>> {
        self.read_bundles().get(trust_domain).cloned().flatten()
    }

    fn read_bundles(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, HashMap<String, Option<Arc<TrustBundle>>>> {
        // Writers replace whole entries, so a poisoned lock holds whole ones.
        self.bundles.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_bundles(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Option<Arc<TrustBundle>>>> {
        self.bundles.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Whether SVIDs of `trust_domain` can be verified at all.
    pub fn trusts_domain(&self, trust_domain: &str) -> bool {
        trust_domain == self.trust_domain || self.read_bundles().contains_key(trust_domain)
    }

    pub fn task_audience(&self) -> String {
        format!("{}/task", self.audience)
    }

    /// The JWK Set published at `/.well-known/jwks.json`.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.key.public_jwk()] })
    }

    pub fn issue_svid(
        &self,
        spiffe_id: &SpiffeId,
        now: UnixTime,
        ttl: i64,
        jti: String,
    ) -> Result<(String, UnixTime), TokenError> {
        let exp = now.saturating_add(ttl);
        let claims = SvidClaims {
            iss: self.issuer.clone(),
            sub: spiffe_id.to_string(),
            aud: vec![self.audience.clone()],
            exp,
            iat: now,
            jti,
        };
        Ok((self.key.sign(SVID_TYP, &claims)?, exp))
    }

    /// Sign a task credential for `grant`; `iss` and `aud` are filled in here.
    pub fn issue_task_credential(
        &self,
        grant: TaskGrant,
    ) -> Result<(String, TaskClaims), TokenError> {
        let claims = TaskClaims {
            iss: self.issuer.clone(),
            sub: grant.sub,
            aud: self.task_audience(),
            exp: grant.exp,
            iat: grant.iat,
            jti: grant.jti,
            task_id: grant.task_id,
            incident_id: grant.incident_id,
            scope: grant.scope,
            act: grant.act,
        };
        Ok((self.key.sign(TASK_TYP, &claims)?, claims))
    }

    /// Verify a JWT-SVID from Tollgate's issuer or a trusted external one.
    pub fn verify_svid(&self, token: &str, now: UnixTime) -> Result<VerifiedSvid, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithmName => {
                TokenError::Algorithm("unsupported".into())
            }
            _ => TokenError::Malformed,
        })?;
        let kid = header.kid.clone().ok_or(TokenError::MissingKid)?;
        // The subject decides which keys may have signed, so peek at it
        // first; nothing from this unverified read is trusted beyond key choice.
        let sub = peek_sub(token)?;
        let id = SpiffeId::parse(&sub).map_err(|e| TokenError::Subject(e.to_string()))?;
        let (key, external, expect) = if id.trust_domain() == self.trust_domain {
            if kid != self.key.kid {
                return Err(TokenError::UnknownKey(kid));
            }
            (
                TrustedKey {
                    alg: Algorithm::EdDSA,
                    key: self.key.decoding.clone(),
                },
                false,
                // Tollgate's own SVIDs: exactly what `issue_svid` writes.
                Expect {
                    kind: "jwt-svid",
                    typ: TypRule::Exactly(SVID_TYP),
                    aud: &self.audience,
                    iss: Some(&self.issuer),
                },
            )
        } else {
            let td = id.trust_domain();
            let bundle = match self.read_bundles().get(td) {
                None => return Err(TokenError::UntrustedDomain(td.to_string())),
                Some(None) => return Err(TokenError::NoBundleYet(td.to_string())),
                Some(Some(b)) => b.clone(),
            };
            let k = bundle.keys.get(&kid).ok_or(TokenError::UnknownKey(kid))?;
            let key = TrustedKey {
                alg: k.alg,
                key: k.key.clone(),
            };
            let expect = Expect {
                kind: "jwt-svid",
                typ: TypRule::JwtOrJose,
                aud: &self.audience,
                iss: bundle.issuer.as_deref(),
            };
            // The bundle may be replaced meanwhile; this check uses the one read.
            let raw: RawClaims = verify_jwt(token, &header, &key, expect, self.leeway, now)?;
            return finish_svid(raw, sub, id, true);
        };
        let raw: RawClaims = verify_jwt(token, &header, &key, expect, self.leeway, now)?;
        finish_svid(raw, sub, id, external)
    }

    /// Verify a task credential (only Tollgate's own key can have signed it).
    pub fn verify_task_credential(
        &self,
        token: &str,
        now: UnixTime,
    ) -> Result<TaskClaims, TokenError> {
        let key = VerifiedCredentials::key(token);
        let mut cache = self.verified.lock();
        match cache.get(&key) {
            Some(claims) if now <= claims.exp.saturating_add(self.leeway) => {
                return Ok(claims.clone())
            }
            Some(_) => {
                cache.remove(&key);
                return Err(TokenError::Expired);
            }
            None => {}
        }
        drop(cache);
        let claims = self.verify_task_credential_uncached(token, now)?;
        let mut cache = self.verified.lock();
        if cache.len() >= MAX_VERIFIED {
            cache.clear();
        }
        cache.insert(key, claims.clone());
        Ok(claims)
    }

    /// Forget a verified credential (its task was found dead), so the next
    /// use verifies it again from scratch.
    pub fn forget_task_credential(&self, token: &str) {
        self.verified
            .lock()
            .remove(&VerifiedCredentials::key(token));
    }

    /// How many verified task credentials are cached.
    pub fn cached_task_credentials(&self) -> usize {
        self.verified.lock().len()
    }

    fn verify_task_credential_uncached(
        &self,
        token: &str,
        now: UnixTime,
    ) -> Result<TaskClaims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        // The type is checked before the key so an SVID presented as a
        // credential says so, whatever key signed it.
        if header.typ.as_deref() != Some(TASK_TYP) {
            return Err(TokenError::WrongType("task credential"));
        }
        let kid = header.kid.clone().ok_or(TokenError::MissingKid)?;
        if kid != self.key.kid {
            return Err(TokenError::UnknownKey(kid));
        }
        let key = TrustedKey {
            alg: Algorithm::EdDSA,
            key: self.key.decoding.clone(),
        };
        let aud = self.task_audience();
        let expect = Expect {
            kind: "task credential",
            typ: TypRule::Exactly(TASK_TYP),
            aud: &aud,
            iss: Some(&self.issuer),
        };
        verify_jwt::<TaskClaims>(token, &header, &key, expect, self.leeway, now)
    }
}

/// The one verifier of every token kind: `typ` header, signature (algorithm
/// pinned to the key), `aud`, `iss`, `exp`, `nbf` and `iat`, against the
/// injected clock with `leeway` seconds of skew. Time arithmetic saturates,
/// so a claim near `i64::MAX` cannot wrap into the past.
fn verify_jwt<T: serde::de::DeserializeOwned>(
    token: &str,
    header: &Header,
    key: &TrustedKey,
    expect: Expect<'_>,
    leeway: i64,
    now: UnixTime,
) -> Result<T, TokenError> {
    if !expect.typ.admits(header.typ.as_deref()) {
        return Err(TokenError::WrongType(expect.kind));
    }
    if header.alg != key.alg {
        return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
    }
    let mut v = Validation::new(key.alg);
    v.validate_exp = false; // checked below against the injected clock
    v.validate_nbf = false;
    v.set_required_spec_claims(&["exp", "sub", "aud"]);
    v.set_audience(&[expect.aud]);
    let data =
        jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &v).map_err(map_jwt_error)?;
    let raw: RawClaims =
        serde_json::from_value(data.claims.clone()).map_err(|_| TokenError::Malformed)?;
    check_registered_claims(&raw, expect, leeway, now)?;
    serde_json::from_value(data.claims).map_err(|_| TokenError::Malformed)
}

/// The time and issuer claims, once the signature holds.
fn check_registered_claims(
    raw: &RawClaims,
    expect: Expect<'_>,
    leeway: i64,
    now: UnixTime,
) -> Result<(), TokenError> {
    if let Some(iss) = expect.iss {
        if raw.iss.as_deref() != Some(iss) {
            return Err(TokenError::Issuer);
        }
    }
    if now > raw.exp.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = raw.nbf {
        if now.saturating_add(leeway) < nbf {
            return Err(TokenError::NotYetValid);
        }
    }
    // Issued in the future: a clock far off, or a forged lifetime.
    if let Some(iat) = raw.iat {
        if now.saturating_add(leeway) < iat {
            return Err(TokenError::NotYetValid);
        }
    }
    Ok(())
}

/// A human approver, as an OIDC ID token vouches for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcIdentity {
    pub name: String,
    pub role: String,
}

/// Verifies OIDC ID tokens of one issuer for approvers: signature against
/// the issuer's JWK Set, `iss`, `aud`, `exp`, and the configured name and
/// role claims.
pub struct OidcVerifier {
    issuer: String,
    audience: String,
    keys: TrustBundle,
    name_claim: String,
    role_claim: String,
    leeway: i64,
}

impl OidcVerifier {
    pub fn new(
        issuer: &str,
        audience: &str,
        jwks: &str,
        name_claim: &str,
        role_claim: &str,
    ) -> Result<Self, TokenError> {
        Ok(Self {
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            keys: TrustBundle::from_jwks(issuer, jwks)?,
            name_claim: name_claim.to_string(),
            role_claim: role_claim.to_string(),
            leeway: 30,
        })
    }

    pub fn verify(&self, token: &str, now: UnixTime) -> Result<OidcIdentity, TokenError> {
        let claims = self.claims(token, now)?;
        self.identity(&claims)
    }

    /// [`verify`](Self::verify) for a token the issuer returned to our own
    /// login request: it must also carry the `nonce` that request sent, so
    /// a token minted for another login cannot be replayed into this one.
    pub fn verify_login(
        &self,
        token: &str,
        now: UnixTime,
        nonce: &str,
    ) -> Result<OidcIdentity, TokenError> {
        let claims = self.claims(token, now)?;
        if nonce.is_empty() || claims.get("nonce").and_then(|v| v.as_str()) != Some(nonce) {
            return Err(TokenError::Claim("nonce".into()));
        }
        self.identity(&claims)
    }

    fn claims(&self, token: &str, now: UnixTime) -> Result<serde_json::Value, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let kid = header.kid.clone().ok_or(TokenError::MissingKid)?;
        let key = self
            .keys
            .keys
            .get(&kid)
            .ok_or(TokenError::UnknownKey(kid))?;
        let expect = Expect {
            kind: "oidc id token",
            typ: TypRule::Any,
            aud: &self.audience,
            iss: Some(&self.issuer),
        };
        verify_jwt(token, &header, key, expect, self.leeway, now)
    }

    fn identity(&self, claims: &serde_json::Value) -> Result<OidcIdentity, TokenError> {
        let claim = |name: &str| {
            claims
                .get(name)
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let name =
            claim(&self.name_claim).ok_or_else(|| TokenError::Claim(self.name_claim.clone()))?;
        let role =
            claim(&self.role_claim).ok_or_else(|| TokenError::Claim(self.role_claim.clone()))?;
        Ok(OidcIdentity { name, role })
    }
}

fn peek_sub(token: &str) -> Result<String, TokenError> {
    let payload = token.split('.').nth(1).ok_or(TokenError::Malformed)?;
    let bytes = B64.decode(payload).map_err(|_| TokenError::Malformed)?;
    #[derive(Deserialize)]
    struct Sub {
        sub: String,
    }
    let s: Sub = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    Ok(s.sub)
}

#[cfg(test)]
mod tests;
