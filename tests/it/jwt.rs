//! OAuth2 access tokens (JWTs) checked against a JWKS file: a valid token's
//! claims give the caller's name, role and pools; an expired one, one for
//! another audience or issuer, one signed by an unknown key, and an
//! unsigned one (`alg: none`) are UNAUTHENTICATED.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use poolplane::proto::{ListPoolsRequest, UpdatePoolRequest};
use rcgen::KeyPair;
use serde_json::json;
use tonic::Code;

use crate::support::{bearer, config_yaml_with, exec, PoolSpec, TestServer};

/// Base64url without padding (JWK coordinates, JWT parts).
pub(crate) fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// An EC P-256 key and its public JWK.
pub(crate) fn key(kid: &str) -> (KeyPair, serde_json::Value) {
    let key = KeyPair::generate().expect("P-256 key");
    let point = key.public_key_raw();
    let (x, y) = point[1..].split_at(32);
    let jwk = json!({"kty": "EC", "crv": "P-256", "x": base64url(x), "y": base64url(y), "kid": kid, "alg": "ES256", "use": "sig"});
    (key, jwk)
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

pub(crate) fn sign(key: &KeyPair, kid: &str, claims: serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("encoding key"),
    )
    .expect("sign")
}

pub(crate) fn claims(role: &str, pools: &[&str]) -> serde_json::Value {
    json!({
        "sub": "svc-orders",
        "iss": "https://issuer.test",
        "aud": "poolplane",
        "exp": now() + 600,
        "nbf": now() - 10,
        "role": role,
        "pools": pools,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_tokens_are_checked_and_their_claims_decide() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (signer, jwk) = key("k1");
    let (stranger, _) = key("k1");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [jwk]}).to_string()).expect("write jwks");
    let server = TestServer::start(&config_yaml_with(
        &[PoolSpec::new("jwt_pool", 1)],
        &format!(
            // Default algorithms (RS256 and ES256): a list mixing key types.
            "  server:\n    shutdown_timeout_ms: 5000\n    auth:\n      jwt:\n        jwks_file: {}\n        issuer: https://issuer.test\n        audience: poolplane\n",
            jwks.display()
        ),
    ))
    .await;
    let mut admin = server.admin().await;
    let mut query = server.query().await;

    let list = |token: String| {
        let mut admin = admin.clone();
        async move {
            admin
                .list_pools(bearer(&token, ListPoolsRequest::default()))
                .await
                .map(|r| r.into_inner().pools.len())
                .map_err(|status| status.code())
        }
    };
    assert_eq!(
        list(sign(&signer, "k1", claims("admin", &["*"]))).await,
        Ok(1)
    );
    let mut expired = claims("admin", &["*"]);
    expired["exp"] = json!(now() - 3600);
    let mut other_audience = claims("admin", &["*"]);
    other_audience["aud"] = json!("someone-else");
    let mut other_issuer = claims("admin", &["*"]);
    other_issuer["iss"] = json!("https://evil.test");
    let mut no_audience = claims("admin", &["*"]);
    no_audience.as_object_mut().expect("claims").remove("aud");
    let mut no_issuer = claims("admin", &["*"]);
    no_issuer.as_object_mut().expect("claims").remove("iss");
    let mut forged_name = claims("admin", &["*"]);
    forged_name["sub"] = json!("adm\n2026 INFO poolplane::audit: forged");
    let unsigned = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        base64url(claims("admin", &["*"]).to_string().as_bytes())
    );
    for (what, token) in [
        ("expired", sign(&signer, "k1", expired)),
        ("another audience", sign(&signer, "k1", other_audience)),
        ("another issuer", sign(&signer, "k1", other_issuer)),
        (
            "an unknown key",
            sign(&stranger, "k1", claims("admin", &["*"])),
        ),
        ("alg none", unsigned),
        // Made for whoever: audience and issuer are required claims.
        ("no audience", sign(&signer, "k1", no_audience)),
        ("no issuer", sign(&signer, "k1", no_issuer)),
        // A name that would forge log lines.
        (
            "a control character in the name",
            sign(&signer, "k1", forged_name),
        ),
    ] {
        assert_eq!(list(token).await, Err(Code::Unauthenticated), "{what}");
    }

    // The role and pools claims decide.
    let viewer = sign(&signer, "k1", claims("viewer", &["*"]));
    assert_eq!(list(viewer.clone()).await, Ok(1));
    let status = admin
        .update_pool(bearer(
            &viewer,
            UpdatePoolRequest {
                name: "jwt_pool".into(),
                max_connections: Some(2),
                ..Default::default()
            },
        ))
        .await
        .expect_err("a viewer changes nothing");
    assert_eq!(status.code(), Code::PermissionDenied);
    let elsewhere = sign(&signer, "k1", claims("client", &["other_pool"]));
    let status = query
        .execute(bearer(&elsewhere, exec("jwt_pool", "SELECT 1", vec![])))
        .await
        .expect_err("not its pool");
    assert_eq!(status.code(), Code::PermissionDenied);
    let own = sign(&signer, "k1", claims("client", &["jwt_pool"]));
    query
        .execute(bearer(&own, exec("jwt_pool", "SELECT 1", vec![])))
        .await
        .expect("its pool");
    // Two authorization headers: neither counts.
    let mut doubled = tonic::Request::new(ListPoolsRequest::default());
    for token in [
        sign(&signer, "k1", claims("client", &["jwt_pool"])),
        sign(&signer, "k1", claims("admin", &["*"])),
    ] {
        doubled.metadata_mut().append(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    let status = admin.list_pools(doubled).await.expect_err("ambiguous");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    server.stop().await;
}
