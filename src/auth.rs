//! Who may do what: callers' identities, their roles and the pools they
//! may touch, and the bearer tokens that prove an identity.
//!
//! Roles, from most to least:
//! - `admin`: everything;
//! - `operator`: reads, plus pool operations (create, update, delete,
//!   reset statistics, check health, alerts) on its pools;
//! - `viewer`: reads (pools, statistics, history, alerts, Watch);
//! - `client`: Query on its pools, nothing else.
//!
//! Tokens are kept only as SHA-256 hashes, and every presented token is
//! compared with every configured hash in constant time, so neither memory
//! nor timing tells a token.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Client,
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::Viewer, Role::Client];

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Client => "client",
        }
    }

    /// Whether this role holds `right` at all (on its pools).
    pub fn grants(self, right: Right) -> bool {
        match self {
            Role::Admin => true,
            Role::Operator => matches!(right, Right::Read | Right::Operate),
            Role::Viewer => right == Right::Read,
            Role::Client => right == Right::Query,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// Run SQL (`poolplane.v1.Query`).
    Query,
    /// See pools, statistics, history, alerts and events.
    Read,
    /// Change pools and alerts.
    Operate,
}

impl Right {
    pub fn as_str(self) -> &'static str {
        match self {
            Right::Query => "query",
            Right::Read => "read",
            Right::Operate => "operate",
        }
    }
}

/// The pools an identity may touch: all, or names (`name`, or a prefix
/// ending in `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolScope(Vec<String>);

impl PoolScope {
    pub fn all() -> PoolScope {
        PoolScope(vec!["*".into()])
    }

    pub fn of(patterns: Vec<String>) -> PoolScope {
        PoolScope(patterns)
    }

    pub fn contains(&self, pool: &str) -> bool {
        self.0
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => pool.starts_with(prefix),
                None => pattern == pool,
            })
    }

    pub fn is_all(&self) -> bool {
        self.0.iter().any(|pattern| pattern == "*")
    }
}

/// A caller, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub role: Role,
    pub pools: PoolScope,
}

impl Identity {
    /// Whoever calls a server that authenticates nobody.
    pub fn anonymous_admin() -> Identity {
        Identity {
            name: "anonymous".into(),
            role: Role::Admin,
            pools: PoolScope::all(),
        }
    }

    /// Whether this caller may do `right` on `pool` (or, with `None`, at all).
    pub fn may(&self, right: Right, pool: Option<&str>) -> bool {
        self.role.grants(right) && pool.is_none_or(|pool| self.pools.contains(pool))
    }
}

/// A configured token: its hash and whom it proves.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenEntry {
    pub sha256: [u8; 32],
    pub identity: Identity,
}

impl fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEntry")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// A client certificate's name (a DNS or URI subject alternative name,
/// such as a SPIFFE ID) and whom it proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateEntry {
    pub name: String,
    pub identity: Identity,
}

/// OAuth2 access tokens (JWTs) checked against a key set: signature,
/// algorithm (from an allow-list; `none` never), issuer, audience, `exp`
/// and `nbf` with a small leeway. The caller's name, role and pools come
/// from claims.
#[derive(Clone)]
pub struct JwtVerifier {
    pub keys: jsonwebtoken::jwk::JwkSet,
    pub validation: jsonwebtoken::Validation,
    pub name_claim: String,
    pub role_claim: String,
    pub pools_claim: String,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("keys", &self.keys.keys.len())
            .finish_non_exhaustive()
    }
}

impl PartialEq for JwtVerifier {
    fn eq(&self, other: &Self) -> bool {
        self.keys == other.keys
            && self.name_claim == other.name_claim
            && self.role_claim == other.role_claim
            && self.pools_claim == other.pools_claim
    }
}

impl Eq for JwtVerifier {}

impl JwtVerifier {
    /// The identity a JWT proves.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Jwt("malformed"))?;
        let jwk = match &header.kid {
            Some(kid) => self.keys.find(kid),
            None if self.keys.keys.len() == 1 => self.keys.keys.first(),
            None => None,
        }
        .ok_or(AuthError::Jwt("signed by an unknown key"))?;
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk)
            .map_err(|_| AuthError::Jwt("signed by an unusable key"))?;
        // The token's own algorithm, if allowed: the library checks every
        // allowed algorithm against the key's type, so a list mixing RSA
        // and EC would refuse every token.
        if !self.validation.algorithms.contains(&header.alg) {
            return Err(AuthError::Jwt("signed with an algorithm not allowed"));
        }
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        let claims = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key,
            &validation,
        )
        .map_err(|err| AuthError::Jwt(jwt_reason(err.kind())))?
        .claims;
        let text = |claim: &str| claims.get(claim).and_then(serde_json::Value::as_str);
        let name = text(&self.name_claim)
            .filter(|name| {
                !name.is_empty() && name.len() <= 256 && !name.chars().any(char::is_control)
            })
            .ok_or(AuthError::Jwt("no usable caller name claim"))?;
        let role = text(&self.role_claim)
            .and_then(Role::parse)
            .ok_or(AuthError::Jwt("no valid role claim"))?;
        let pools = match claims.get(&self.pools_claim) {
            None => PoolScope::all(),
            Some(serde_json::Value::Array(items)) => PoolScope::of(
                items
                    .iter()
                    .filter_map(|item| item.as_str().map(str::to_string))
                    .collect(),
            ),
            Some(_) => return Err(AuthError::Jwt("the pools claim is not a list")),
        };
        Ok(Identity {
            // Apart from configured names: a token's subject cannot pass
            // for a static token or a certificate identity.
            name: format!("jwt:{name}"),
            role,
            pools,
        })
    }
}

/// Why a JWT is refused, in words that give nothing away.
fn jwt_reason(kind: &jsonwebtoken::errors::ErrorKind) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match kind {
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::ImmatureSignature => "not valid yet",
        ErrorKind::InvalidAudience => "not for this audience",
        ErrorKind::InvalidIssuer => "from another issuer",
        ErrorKind::InvalidAlgorithm => "signed with an algorithm not allowed",
        ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
        _ => "invalid",
    }
}

/// How callers prove who they are.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Authenticator {
    /// `None`: no tokens are configured.
    tokens: Option<Vec<TokenEntry>>,
    /// Client certificate names that prove an identity (mutual TLS).
    certificates: Vec<CertificateEntry>,
    /// OAuth2 access tokens, if configured.
    jwt: Option<JwtVerifier>,
}

/// Why a caller is not authenticated. Never holds what the caller sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials: send `authorization: Bearer <token>`")]
    Missing,
    #[error("the authorization header is not `Bearer <token>`")]
    Malformed,
    #[error("invalid token")]
    Invalid,
    #[error("invalid access token: {0}")]
    Jwt(&'static str),
    #[error("the client certificate names more than one identity")]
    Ambiguous,
}

impl Authenticator {
    /// Nobody is authenticated: every caller may do everything.
    pub fn off() -> Authenticator {
        Authenticator::default()
    }

    pub fn with_tokens(tokens: Vec<TokenEntry>) -> Authenticator {
        Authenticator {
            tokens: Some(tokens),
            certificates: Vec::new(),
            jwt: None,
        }
    }

    /// Adds OAuth2 access tokens (JWTs).
    pub fn with_jwt(mut self, jwt: JwtVerifier) -> Authenticator {
        self.jwt = Some(jwt);
        self
    }

    /// Adds identities proven by client certificates.
    pub fn with_certificates(mut self, certificates: Vec<CertificateEntry>) -> Authenticator {
        self.certificates = certificates;
        self
    }

    pub fn is_on(&self) -> bool {
        self.tokens.is_some() || !self.certificates.is_empty() || self.jwt.is_some()
    }

    /// The identity an `authorization` header value proves, or else the
    /// client certificate's names (`certificate_names`, from a verified
    /// certificate).
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        certificate_names: &[String],
    ) -> Result<Identity, AuthError> {
        if !self.is_on() {
            return Ok(Identity::anonymous_admin());
        }
        let Some(header) = authorization else {
            let mut matching = self
                .certificates
                .iter()
                .filter(|entry| certificate_names.contains(&entry.name));
            return match (matching.next(), matching.next()) {
                (Some(entry), None) => Ok(entry.identity.clone()),
                // Two identities in one certificate: neither is chosen.
                (Some(_), Some(_)) => Err(AuthError::Ambiguous),
                _ => Err(AuthError::Missing),
            };
        };
        if let Some(jwt) = &self.jwt {
            let token = bearer(header).ok_or(AuthError::Malformed)?;
            // A JWT is three base64url parts; a static token never has dots.
            if token.iter().filter(|&&b| b == b'.').count() == 2 {
                let text = std::str::from_utf8(token).map_err(|_| AuthError::Malformed)?;
                match jwt.verify(text) {
                    // Not a JWT after all: perhaps a static token with dots.
                    Err(AuthError::Jwt("malformed")) => {}
                    verified => return verified,
                }
            }
        }
        let tokens = self.tokens.as_deref().unwrap_or_default();
        let token = bearer(header).ok_or(AuthError::Malformed)?;
        let presented = hash(token);
        // Every entry is compared, whatever matches, in constant time.
        let mut found = None;
        for entry in tokens {
            if bool::from(entry.sha256.ct_eq(&presented)) {
                found = Some(&entry.identity);
            }
        }
        found.cloned().ok_or(AuthError::Invalid)
    }
}

/// The token of a `Bearer <token>` header value (scheme case-insensitive).
fn bearer(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// SHA-256 of a token.
pub fn hash(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(token: &str, name: &str, role: Role, pools: &[&str]) -> TokenEntry {
        TokenEntry {
            sha256: hash(token.as_bytes()),
            identity: Identity {
                name: name.into(),
                role,
                pools: PoolScope::of(pools.iter().map(|p| p.to_string()).collect()),
            },
        }
    }

    #[test]
    fn a_token_proves_its_identity_and_nothing_else_does() {
        let auth = Authenticator::with_tokens(vec![
            entry("s3cret-admin", "ops", Role::Admin, &["*"]),
            entry("s3cret-app", "app", Role::Client, &["orders", "billing-*"]),
        ]);
        let app = auth
            .authenticate(Some(b"Bearer s3cret-app"), &[])
            .expect("valid");
        assert_eq!(app.name, "app");
        assert_eq!(
            auth.authenticate(Some(b"bearer   s3cret-admin "), &[])
                .map(|i| i.role),
            Ok(Role::Admin)
        );
        assert_eq!(auth.authenticate(None, &[]), Err(AuthError::Missing));
        assert_eq!(
            auth.authenticate(Some(b"Basic abc"), &[]),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            auth.authenticate(Some(b"Bearer "), &[]),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            auth.authenticate(Some(b"Bearer s3cret"), &[]),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            Authenticator::off().authenticate(None, &[]),
            Ok(Identity::anonymous_admin())
        );
        // The error never carries what was sent.
        assert!(!AuthError::Invalid.to_string().contains("s3cret"));
        // A certificate's name proves an identity when no token is sent; a
        // token sent decides, whatever the certificate.
        let auth = auth.with_certificates(vec![CertificateEntry {
            name: "spiffe://cluster/ns/shop/sa/orders".into(),
            identity: entry("unused", "orders", Role::Client, &["orders"]).identity,
        }]);
        let names = [
            "orders.shop.svc".to_string(),
            "spiffe://cluster/ns/shop/sa/orders".to_string(),
        ];
        assert_eq!(
            auth.authenticate(None, &names).map(|i| i.name),
            Ok("orders".into())
        );
        assert_eq!(
            auth.authenticate(None, &["other".to_string()]),
            Err(AuthError::Missing)
        );
        assert_eq!(
            auth.authenticate(Some(b"Bearer wrong"), &names),
            Err(AuthError::Invalid)
        );
        // A certificate naming two identities proves neither.
        let twice = auth.clone().with_certificates(vec![
            CertificateEntry {
                name: "orders.shop.svc".into(),
                identity: entry("unused", "orders-dns", Role::Admin, &["*"]).identity,
            },
            CertificateEntry {
                name: "spiffe://cluster/ns/shop/sa/orders".into(),
                identity: entry("unused", "orders", Role::Client, &["orders"]).identity,
            },
        ]);
        assert_eq!(twice.authenticate(None, &names), Err(AuthError::Ambiguous));
    }

    #[test]
    fn roles_and_scopes_decide_each_right_on_each_pool() {
        let client = entry("t", "app", Role::Client, &["orders", "billing-*"]).identity;
        assert!(client.may(Right::Query, Some("orders")));
        assert!(client.may(Right::Query, Some("billing-eu")));
        assert!(!client.may(Right::Query, Some("payroll")));
        assert!(!client.may(Right::Read, Some("orders")));
        let operator = entry("t", "oncall", Role::Operator, &["orders"]).identity;
        assert!(operator.may(Right::Operate, Some("orders")));
        assert!(!operator.may(Right::Operate, Some("billing")));
        assert!(operator.may(Right::Read, None));
        assert!(!operator.may(Right::Query, Some("orders")));
        let viewer = entry("t", "dash", Role::Viewer, &["*"]).identity;
        assert!(viewer.may(Right::Read, Some("anything")));
        assert!(!viewer.may(Right::Operate, Some("anything")));
        for right in [Right::Query, Right::Read, Right::Operate] {
            assert!(Identity::anonymous_admin().may(right, Some("x")));
        }
        assert_eq!(Role::parse("operator"), Some(Role::Operator));
        assert_eq!(Role::parse("root"), None);
    }
}
