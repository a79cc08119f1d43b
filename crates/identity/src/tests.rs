use super::*;

const NOW: UnixTime = 1_800_000_000;

fn tokens() -> Tokens {
    let (key, _) = SigningKeyPair::generate().unwrap();
    Tokens::new(key, "tollgate", "acme.test", "tollgate")
}

fn agent() -> SpiffeId {
    SpiffeId::parse("spiffe://acme.test/agent/ir-responder/i-1").unwrap()
}

fn b64(v: &serde_json::Value) -> String {
    B64.encode(serde_json::to_vec(v).unwrap())
}

#[test]
fn own_svid_round_trips_and_expires() {
    let t = tokens();
    let (svid, exp) = t.issue_svid(&agent(), NOW, 300, "j1".into()).unwrap();
    assert_eq!(exp, NOW + 300);
    let v = t.verify_svid(&svid, NOW + 10).unwrap();
    assert_eq!(v.spiffe_id, agent());
    assert!(!v.external);
    // Within the 30 s leeway it still verifies; past it, it does not.
    assert!(t.verify_svid(&svid, NOW + 320).is_ok());
    assert_eq!(t.verify_svid(&svid, NOW + 331), Err(TokenError::Expired));
}

#[test]
fn key_survives_pkcs8_round_trip() {
    let (k1, der) = SigningKeyPair::generate().unwrap();
    let k2 = SigningKeyPair::from_pkcs8_der(&der).unwrap();
    assert_eq!(k1.kid(), k2.kid());
    assert_eq!(k1.public_jwk(), k2.public_jwk());
    assert!(SigningKeyPair::from_pkcs8_der(b"garbage").is_err());
}

#[test]
fn a_token_signed_by_another_key_is_refused() {
    let t = tokens();
    let other = tokens();
    let (svid, _) = other.issue_svid(&agent(), NOW, 300, "j".into()).unwrap();
    assert!(matches!(
        t.verify_svid(&svid, NOW),
        Err(TokenError::UnknownKey(_))
    ));
    // Same kid as ours but a different signature: forge by swapping the signature.
    let (mine, _) = t.issue_svid(&agent(), NOW, 300, "j".into()).unwrap();
    let forged = format!(
        "{}.{}",
        mine.rsplit_once('.').unwrap().0,
        svid.rsplit_once('.').unwrap().1
    );
    assert_eq!(t.verify_svid(&forged, NOW), Err(TokenError::Signature));
}

#[test]
fn alg_none_and_hmac_are_refused() {
    let t = tokens();
    let claims =
        serde_json::json!({"sub": agent().to_string(), "aud": ["tollgate"], "exp": NOW + 300});
    let none = format!(
        "{}.{}.",
        b64(&serde_json::json!({"alg": "none", "kid": t.key.kid()})),
        b64(&claims)
    );
    assert!(t.verify_svid(&none, NOW).is_err());
    // HS256 "signed" with the public key bytes: the classic confusion attack.
    let hs = jsonwebtoken::encode(
        &Header {
            kid: Some(t.key.kid().to_string()),
            ..Header::new(Algorithm::HS256)
        },
        &claims,
        &EncodingKey::from_secret(t.key.public_jwk()["x"].as_str().unwrap().as_bytes()),
    )
    .unwrap();
    assert!(matches!(
        t.verify_svid(&hs, NOW),
        Err(TokenError::Algorithm(_))
    ));
}

#[test]
fn missing_kid_wrong_audience_and_not_yet_valid_are_refused() {
    let t = tokens();
    let sign = |header: Header, claims: serde_json::Value| {
        jsonwebtoken::encode(&header, &claims, &t.key.encoding).unwrap()
    };
    let mut h = Header::new(Algorithm::EdDSA);
    let good =
        serde_json::json!({"sub": agent().to_string(), "aud": ["tollgate"], "exp": NOW + 300});
    assert_eq!(
        t.verify_svid(&sign(h.clone(), good.clone()), NOW),
        Err(TokenError::MissingKid)
    );
    h.kid = Some(t.key.kid().to_string());
    assert!(t.verify_svid(&sign(h.clone(), good.clone()), NOW).is_ok());
    let wrong_aud =
        serde_json::json!({"sub": agent().to_string(), "aud": ["someone-else"], "exp": NOW + 300});
    assert_eq!(
        t.verify_svid(&sign(h.clone(), wrong_aud), NOW),
        Err(TokenError::Audience)
    );
    let future = serde_json::json!({"sub": agent().to_string(), "aud": ["tollgate"], "exp": NOW + 900, "nbf": NOW + 600});
    assert_eq!(
        t.verify_svid(&sign(h.clone(), future), NOW),
        Err(TokenError::NotYetValid)
    );
    let untrusted = serde_json::json!({"sub": "spiffe://evil.test/agent/x/y", "aud": ["tollgate"], "exp": NOW + 300});
    assert!(matches!(
        t.verify_svid(&sign(h, untrusted), NOW),
        Err(TokenError::UntrustedDomain(_))
    ));
}

#[test]
fn svids_and_task_credentials_do_not_stand_in_for_each_other() {
    let t = tokens();
    let (svid, _) = t.issue_svid(&agent(), NOW, 300, "j".into()).unwrap();
    assert!(matches!(
        t.verify_task_credential(&svid, NOW),
        Err(TokenError::WrongType(_))
    ));
    let grant = TaskGrant {
        sub: agent().to_string(),
        task_id: "task_1".into(),
        incident_id: "INC-1".into(),
        scope: Scope::default(),
        iat: NOW,
        exp: NOW + 300,
        jti: "j2".into(),
        act: None,
    };
    let (cred, claims) = t.issue_task_credential(grant).unwrap();
    assert_eq!(t.verify_task_credential(&cred, NOW).unwrap(), claims);
    assert!(matches!(
        t.verify_svid(&cred, NOW),
        Err(TokenError::WrongType(_))
    ));
    assert_eq!(
        t.verify_task_credential(&cred, NOW + 400),
        Err(TokenError::Expired)
    );
}

#[test]
fn external_es256_and_eddsa_bundles_verify() {
    use p256::pkcs8::EncodePrivateKey as _;
    let sk = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let mut jwk: serde_json::Value =
        serde_json::from_str(&sk.public_key().to_jwk_string()).unwrap();
    jwk["kid"] = "ec-1".into();
    jwk["use"] = "jwt-svid".into();
    let (ed, _) = SigningKeyPair::generate().unwrap();
    let bundle = serde_json::json!({
        "keys": [jwk, ed.public_jwk(), {"kty": "EC", "crv": "P-256", "use": "x509-svid", "x5c": ["AA=="]}],
        "spiffe_sequence": 1
    });
    let t =
        tokens().with_bundle(TrustBundle::from_jwks("other.test", &bundle.to_string()).unwrap());
    let claims = serde_json::json!({"sub": "spiffe://other.test/agent/siem/i-3", "aud": ["tollgate"], "exp": NOW + 60});
    let der = sk.to_pkcs8_der().unwrap();
    let es = jsonwebtoken::encode(
        &Header {
            kid: Some("ec-1".into()),
            ..Header::new(Algorithm::ES256)
        },
        &claims,
        &EncodingKey::from_ec_der(der.as_bytes()),
    )
    .unwrap();
    let v = t.verify_svid(&es, NOW).unwrap();
    assert!(v.external);
    assert_eq!(v.spiffe_id.trust_domain(), "other.test");
    let eds = ed.sign("JWT", &claims).unwrap();
    assert!(t.verify_svid(&eds, NOW).is_ok());
    // An external issuer cannot mint identities in our own trust domain.
    let ours =
        serde_json::json!({"sub": agent().to_string(), "aud": ["tollgate"], "exp": NOW + 60});
    let spoof = jsonwebtoken::encode(
        &Header {
            kid: Some("ec-1".into()),
            ..Header::new(Algorithm::ES256)
        },
        &ours,
        &EncodingKey::from_ec_der(der.as_bytes()),
    )
    .unwrap();
    assert!(matches!(
        t.verify_svid(&spoof, NOW),
        Err(TokenError::UnknownKey(_))
    ));
}

#[test]
fn bundles_without_kid_or_with_unsupported_keys_are_refused() {
    let no_kid = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
    assert!(TrustBundle::from_jwks("o.test", no_kid).is_err());
    let oct = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#;
    assert!(TrustBundle::from_jwks("o.test", oct).is_err());
}

proptest::proptest! {
    // The same property the token_verify fuzz target checks, on stable in CI:
    // arbitrary bearer strings (including JWT-shaped ones) never verify and never panic.
    #[test]
    fn arbitrary_tokens_never_verify(h in "[A-Za-z0-9_-]{0,40}", p in "[A-Za-z0-9_-]{0,80}", s in "[A-Za-z0-9_-]{0,90}", raw in ".{0,64}") {
        let t = tokens();
        for tok in [format!("{h}.{p}.{s}"), raw] {
            proptest::prop_assert!(t.verify_svid(&tok, NOW).is_err());
            proptest::prop_assert!(t.verify_task_credential(&tok, NOW).is_err());
        }
    }
}

#[test]
fn oidc_id_tokens_for_approvers() {
    let (idp, der) = SigningKeyPair::generate().unwrap();
    let jwks = serde_json::json!({"keys": [idp.public_jwk()]}).to_string();
    let v = OidcVerifier::new(
        "https://login.acme.test",
        "tollgate",
        &jwks,
        "email",
        "tollgate_role",
    )
    .unwrap();
    let key = EncodingKey::from_ed_der(&der);
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some(idp.kid().to_string());
    let sign = |c: serde_json::Value| jsonwebtoken::encode(&h, &c, &key).unwrap();
    let good = serde_json::json!({"iss": "https://login.acme.test", "aud": "tollgate", "sub": "u1", "email": "bob@acme.test", "tollgate_role": "secops", "exp": NOW + 60});
    assert_eq!(
        v.verify(&sign(good.clone()), NOW).unwrap(),
        OidcIdentity {
            name: "bob@acme.test".into(),
            role: "secops".into()
        }
    );
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = "https://evil.test".into();
    assert_eq!(v.verify(&sign(wrong_iss), NOW), Err(TokenError::Issuer));
    let mut no_role = good.clone();
    no_role.as_object_mut().unwrap().remove("tollgate_role");
    assert_eq!(
        v.verify(&sign(no_role), NOW),
        Err(TokenError::Claim("tollgate_role".into()))
    );
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = "other".into();
    assert_eq!(v.verify(&sign(wrong_aud), NOW), Err(TokenError::Audience));
    assert_eq!(v.verify(&sign(good), NOW + 200), Err(TokenError::Expired));
}

/// The verified-credential cache answers exactly as verification would:
/// same claims, expiry still enforced, any altered byte verified afresh.
#[test]
fn verified_task_credentials_are_cached_without_changing_answers() {
    let t = tokens();
    let grant = TaskGrant {
        sub: agent().to_string(),
        task_id: "task_1".into(),
        incident_id: "INC-1".into(),
        scope: Scope::default(),
        iat: NOW,
        exp: NOW + 300,
        jti: "j3".into(),
        act: None,
    };
    let (cred, claims) = t.issue_task_credential(grant).unwrap();
    assert_eq!(t.cached_task_credentials(), 0);
    assert_eq!(t.verify_task_credential(&cred, NOW).unwrap(), claims);
    assert_eq!(t.cached_task_credentials(), 1);
    assert_eq!(t.verify_task_credential(&cred, NOW + 10).unwrap(), claims);
    assert_eq!(t.cached_task_credentials(), 1);
    // A forged signature (last character changed) is not served from the cache.
    let mut forged = cred.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    assert!(t.verify_task_credential(&forged, NOW).is_err());
    assert_eq!(t.cached_task_credentials(), 1);
    // Within the leeway it still verifies; past it the entry is dropped.
    assert!(t.verify_task_credential(&cred, NOW + 320).is_ok());
    assert_eq!(
        t.verify_task_credential(&cred, NOW + 400),
        Err(TokenError::Expired)
    );
    assert_eq!(t.cached_task_credentials(), 0);
    t.verify_task_credential(&cred, NOW).unwrap();
    t.forget_task_credential(&cred);
    assert_eq!(t.cached_task_credentials(), 0);
}
