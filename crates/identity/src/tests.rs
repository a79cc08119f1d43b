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
    let good = serde_json::json!({"iss": "tollgate", "sub": agent().to_string(), "aud": ["tollgate"], "exp": NOW + 300});
    assert_eq!(
        t.verify_svid(&sign(h.clone(), good.clone()), NOW),
        Err(TokenError::MissingKid)
    );
    h.kid = Some(t.key.kid().to_string());
    assert!(t.verify_svid(&sign(h.clone(), good.clone()), NOW).is_ok());
    let wrong_aud = serde_json::json!({"iss": "tollgate", "sub": agent().to_string(), "aud": ["someone-else"], "exp": NOW + 300});
    assert_eq!(
        t.verify_svid(&sign(h.clone(), wrong_aud), NOW),
        Err(TokenError::Audience)
    );
    let future = serde_json::json!({"iss": "tollgate", "sub": agent().to_string(), "aud": ["tollgate"], "exp": NOW + 900, "nbf": NOW + 600});
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

/// Every token kind against every claim: one verifier checks them all, so
/// each row must be refused with the same error whatever the kind.
#[test]
fn every_claim_is_checked_for_every_token_kind() {
    use p256::pkcs8::EncodePrivateKey as _;
    // An external trust domain with a configured issuer, signing ES256.
    let sk = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let mut jwk: serde_json::Value =
        serde_json::from_str(&sk.public_key().to_jwk_string()).unwrap();
    jwk["kid"] = "ec-1".into();
    let ext_der = sk.to_pkcs8_der().unwrap();
    let ext_key = EncodingKey::from_ec_der(ext_der.as_bytes());
    let t = tokens().with_bundle(
        TrustBundle::from_jwks(
            "other.test",
            &serde_json::json!({"keys": [jwk.clone()]}).to_string(),
        )
        .unwrap()
        .with_issuer(Some("https://spire.other.test".into())),
    );
    let oidc_sk = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let mut oidc_jwk: serde_json::Value =
        serde_json::from_str(&oidc_sk.public_key().to_jwk_string()).unwrap();
    oidc_jwk["kid"] = "idp-1".into();
    let oidc_key = EncodingKey::from_ec_der(oidc_sk.to_pkcs8_der().unwrap().as_bytes());
    let oidc = OidcVerifier::new(
        "https://login.acme.test",
        "tollgate-console",
        &serde_json::json!({"keys": [oidc_jwk]}).to_string(),
        "email",
        "role",
    )
    .unwrap();

    struct Kind {
        name: &'static str,
        alg: Algorithm,
        kid: String,
        typ: Option<&'static str>,
        claims: serde_json::Value,
    }
    let own_svid = Kind {
        name: "own svid",
        alg: Algorithm::EdDSA,
        kid: t.key.kid().to_string(),
        typ: Some("JWT"),
        claims: serde_json::json!({"iss": "tollgate", "sub": agent().to_string(), "aud": ["tollgate"], "exp": NOW + 300, "iat": NOW}),
    };
    let task = Kind {
        name: "task credential",
        alg: Algorithm::EdDSA,
        kid: t.key.kid().to_string(),
        typ: Some(TASK_TYP),
        claims: serde_json::json!({"iss": "tollgate", "sub": agent().to_string(), "aud": "tollgate/task", "exp": NOW + 300, "iat": NOW, "jti": "c1", "task_id": "task_1", "incident_id": "INC-1"}),
    };
    let ext_svid = Kind {
        name: "external svid",
        alg: Algorithm::ES256,
        kid: "ec-1".into(),
        typ: Some("JWT"),
        claims: serde_json::json!({"iss": "https://spire.other.test", "sub": "spiffe://other.test/agent/siem/i-3", "aud": ["tollgate"], "exp": NOW + 300, "iat": NOW}),
    };
    let id_token = Kind {
        name: "oidc id token",
        alg: Algorithm::ES256,
        kid: "idp-1".into(),
        typ: Some("JWT"),
        claims: serde_json::json!({"iss": "https://login.acme.test", "sub": "u1", "aud": "tollgate-console", "exp": NOW + 300, "iat": NOW, "email": "bob@acme.test", "role": "secops"}),
    };
    let verify = |k: &Kind, token: &str| -> Result<(), TokenError> {
        match k.name {
            "own svid" | "external svid" => t.verify_svid(token, NOW).map(|_| ()),
            "task credential" => t.verify_task_credential(token, NOW).map(|_| ()),
            _ => oidc.verify(token, NOW).map(|_| ()),
        }
    };
    let sign = |k: &Kind, typ: Option<&str>, claims: &serde_json::Value| {
        let mut h = Header::new(k.alg);
        h.kid = Some(k.kid.clone());
        h.typ = typ.map(str::to_string);
        let key = match k.name {
            "external svid" => &ext_key,
            "oidc id token" => &oidc_key,
            _ => &t.key.encoding,
        };
        jsonwebtoken::encode(&h, claims, key).unwrap()
    };
    type Edit = fn(&mut serde_json::Value);
    let rows: Vec<(&str, Edit, TokenError)> = vec![
        (
            "iss of another issuer",
            |c| c["iss"] = "evil-issuer".into(),
            TokenError::Issuer,
        ),
        (
            "iss missing",
            |c| {
                c.as_object_mut().unwrap().remove("iss");
            },
            TokenError::Issuer,
        ),
        (
            "iss not a string",
            |c| c["iss"] = 7.into(),
            TokenError::Malformed,
        ),
        (
            "aud of someone else",
            |c| c["aud"] = "someone-else".into(),
            TokenError::Audience,
        ),
        (
            "aud missing",
            |c| {
                c.as_object_mut().unwrap().remove("aud");
            },
            TokenError::Malformed,
        ),
        (
            "exp past",
            |c| c["exp"] = (NOW - 31).into(),
            TokenError::Expired,
        ),
        (
            "exp missing",
            |c| {
                c.as_object_mut().unwrap().remove("exp");
            },
            TokenError::Malformed,
        ),
        (
            "exp not a number",
            |c| c["exp"] = "soon".into(),
            TokenError::Malformed,
        ),
        ("exp zero", |c| c["exp"] = 0.into(), TokenError::Expired),
        (
            "nbf future",
            |c| c["nbf"] = (NOW + 31).into(),
            TokenError::NotYetValid,
        ),
        (
            "nbf i64::MAX",
            |c| c["nbf"] = i64::MAX.into(),
            TokenError::NotYetValid,
        ),
        (
            "iat future",
            |c| c["iat"] = (NOW + 31).into(),
            TokenError::NotYetValid,
        ),
        (
            "sub missing",
            |c| {
                c.as_object_mut().unwrap().remove("sub");
            },
            TokenError::Malformed,
        ),
    ];
    for kind in [&own_svid, &task, &ext_svid, &id_token] {
        // The untouched token verifies, so each refusal below is the edit's doing.
        assert_eq!(
            verify(kind, &sign(kind, kind.typ, &kind.claims)),
            Ok(()),
            "{}",
            kind.name
        );
        // Within the leeway, exp/nbf/iat at the edge still verify.
        let mut edge = kind.claims.clone();
        edge["exp"] = (NOW - 30).into();
        edge["nbf"] = (NOW + 30).into();
        edge["iat"] = (NOW + 30).into();
        assert_eq!(
            verify(kind, &sign(kind, kind.typ, &edge)),
            Ok(()),
            "{} at the edge",
            kind.name
        );
        for (what, edit, want) in &rows {
            let mut claims = kind.claims.clone();
            edit(&mut claims);
            let got = verify(kind, &sign(kind, kind.typ, &claims));
            // `sub` is what an SVID's key is chosen by, so its absence is malformed
            // before anything else; aud/iss-missing may surface as Malformed from
            // jsonwebtoken's required claims, which is a refusal all the same.
            let ok = match (&got, want) {
                (Err(TokenError::Malformed), _) if *what == "aud missing" => true,
                (Err(e), w) => e == w,
                (Ok(()), _) => false,
            };
            assert!(ok, "{} with {what}: want {want:?}, got {got:?}", kind.name);
        }
    }
    // typ: each kind only with its own header.
    let typ_rows: [(&Kind, Option<&str>, bool); 10] = [
        (&own_svid, None, false),
        (&own_svid, Some(TASK_TYP), false),
        (&own_svid, Some("JOSE"), false),
        (&task, Some("JWT"), false),
        (&task, None, false),
        (&ext_svid, Some("JOSE"), true),
        (&ext_svid, None, true),
        (&ext_svid, Some(TASK_TYP), false),
        (&id_token, None, true),
        (&id_token, Some("at+jwt"), true),
    ];
    for (kind, typ, accepted) in typ_rows {
        let got = verify(kind, &sign(kind, typ, &kind.claims));
        if accepted {
            assert_eq!(got, Ok(()), "{} with typ {typ:?}", kind.name);
        } else {
            assert!(
                matches!(got, Err(TokenError::WrongType(_))),
                "{} with typ {typ:?}: {got:?}",
                kind.name
            );
        }
    }
}

#[test]
fn external_issuer_is_checked_only_when_configured() {
    let (ed, der) = SigningKeyPair::generate().unwrap();
    let bundle = serde_json::json!({"keys": [ed.public_jwk()]}).to_string();
    let claims = serde_json::json!({"iss": "anything", "sub": "spiffe://other.test/agent/siem/i-3", "aud": ["tollgate"], "exp": NOW + 60});
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some(ed.kid().to_string());
    let token = jsonwebtoken::encode(&h, &claims, &EncodingKey::from_ed_der(&der)).unwrap();
    let open = tokens().with_bundle(TrustBundle::from_jwks("other.test", &bundle).unwrap());
    assert!(open.verify_svid(&token, NOW).is_ok());
    let pinned = tokens().with_bundle(
        TrustBundle::from_jwks("other.test", &bundle)
            .unwrap()
            .with_issuer(Some("https://spire.other.test".into())),
    );
    assert_eq!(pinned.verify_svid(&token, NOW), Err(TokenError::Issuer));
}
