//! EdDSA (Ed25519) JSON Web Tokens: signing (user-service), verification with
//! `alg`, `iss`, `aud`, `exp` and `nbf` checked, a JWKS cache that refreshes on
//! an unknown `kid` at most once per interval, and the axum layer that puts
//! the caller's [`Principal`] into the request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ed25519_dalek::{Signer, Verifier};
use serde::{Deserialize, Serialize};

use crate::http::{ApiError, ErrorCode};

/// The `iss` of every dialstack token.
pub const ISSUER: &str = "dialstack";
/// The `aud` of every dialstack token.
pub const AUDIENCE: &str = "dialstack";
/// Leeway for clock skew on `exp` and `nbf`.
pub const LEEWAY_SECS: i64 = 30;

/// The roles of DESIGN §6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Campaigns and the agents of their teams.
    Supervisor,
    /// Their own calls and leads.
    Agent,
    /// Service accounts for service-to-service calls.
    Service,
}

impl Role {
    /// Parses the snake_case name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Self::Admin),
            "supervisor" => Some(Self::Supervisor),
            "agent" => Some(Self::Agent),
            "service" => Some(Self::Service),
            _ => None,
        }
    }

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Supervisor => "supervisor",
            Self::Agent => "agent",
            Self::Service => "service",
        }
    }
}

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// Issuer, [`ISSUER`].
    pub iss: String,
    /// Audience, [`AUDIENCE`].
    pub aud: String,
    /// The user id.
    pub sub: String,
    /// The user's role.
    pub role: Role,
    /// Issued at (s since epoch).
    pub iat: i64,
    /// Not before (s since epoch).
    pub nbf: i64,
    /// Expiry (s since epoch).
    pub exp: i64,
    /// Token id.
    pub jti: String,
    /// The teams of an agent or supervisor, which scope what they may see in
    /// every service. Absent for admins and service accounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teams: Vec<String>,
}

impl Claims {
    /// When the token was issued, to the millisecond: `jti` is a UUIDv7,
    /// whose timestamp is the moment of issue (`iat` alone has whole
    /// seconds, too coarse to tell a token from the revocation that follows
    /// it within the same second). Falls back to `iat`.
    pub fn issued_at_ms(&self) -> i64 {
        uuid::Uuid::parse_str(&self.jti)
            .ok()
            .and_then(|u| u.get_timestamp())
            .map(|t| {
                let (s, ns) = t.to_unix();
                s as i64 * 1000 + i64::from(ns / 1_000_000)
            })
            .unwrap_or(self.iat * 1000)
    }
}

/// Why a token was refused. Every variant is a 401 to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token")]
    Missing,
    /// Not three base64url parts of JSON.
    #[error("malformed token")]
    Malformed,
    /// `alg` is not `EdDSA`.
    #[error("unsupported algorithm")]
    Algorithm,
    /// No key with this `kid` is published.
    #[error("unknown signing key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// Issued before its user's sessions were revoked.
    #[error("token revoked")]
    Revoked,
    /// Wrong `iss`.
    #[error("wrong issuer")]
    Issuer,
    /// Wrong `aud`.
    #[error("wrong audience")]
    Audience,
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let mut resp = ApiError::new(ErrorCode::Unauthorized, self.to_string()).into_response();
        resp.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
        resp
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

/// An Ed25519 signing key with its key id.
#[derive(Clone)]
pub struct SigningKey {
    /// Key id, in the token header and the JWKS.
    pub kid: String,
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new random key.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).expect("the OS provides randomness");
        Self {
            kid: uuid::Uuid::now_v7().simple().to_string(),
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        }
    }

    /// A key from its stored 32-byte seed.
    pub fn from_seed(kid: String, seed: &[u8]) -> Option<Self> {
        let seed: [u8; 32] = seed.try_into().ok()?;
        Some(Self {
            kid,
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        })
    }

    /// The 32-byte seed, for storage.
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The public half as a JWK.
    pub fn jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            alg: "EdDSA".into(),
            use_: "sig".into(),
            kid: self.kid.clone(),
            x: B64.encode(self.key.verifying_key().as_bytes()),
        }
    }

    /// Signs `claims` into a compact JWT.
    pub fn sign(&self, claims: &Claims) -> String {
        let header = Header {
            alg: "EdDSA".into(),
            kid: Some(self.kid.clone()),
            typ: Some("JWT".into()),
        };
        let h = B64.encode(serde_json::to_vec(&header).unwrap_or_default());
        let p = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
        let input = format!("{h}.{p}");
        let sig = self.key.sign(input.as_bytes());
        format!("{input}.{}", B64.encode(sig.to_bytes()))
    }
}

/// Builds the claims of a new access token valid for `ttl`.
pub fn new_claims(sub: &str, role: Role, ttl: Duration) -> Claims {
    let now = crate::now_ms() / 1000;
    Claims {
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        sub: sub.into(),
        role,
        iat: now,
        nbf: now,
        exp: now + ttl.as_secs() as i64,
        jti: uuid::Uuid::now_v7().to_string(),
        teams: Vec::new(),
    }
}

/// One public key of a JWKS.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Jwk {
    /// `OKP`.
    pub kty: String,
    /// `Ed25519`.
    pub crv: String,
    /// `EdDSA`.
    pub alg: String,
    /// `sig`.
    #[serde(rename = "use")]
    pub use_: String,
    /// Key id.
    pub kid: String,
    /// The public key, base64url.
    pub x: String,
}

/// A JSON Web Key Set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Jwks {
    /// The keys.
    pub keys: Vec<Jwk>,
    /// Users whose tokens issued before `not_before` are void (role changed,
    /// password reset, deleted), for as long as such a token could live. An
    /// extra member of the set (RFC 7517 §5: verifiers that do not know it
    /// ignore it); dialstack's verifiers refuse those tokens.
    #[serde(
        default,
        rename = "dialstack_revoked",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub revoked: Vec<Revoked>,
}

/// Tokens of `sub` issued before `not_before_ms` are void.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Revoked {
    /// The user id.
    pub sub: String,
    /// Milliseconds since epoch; a token issued earlier is refused (see
    /// [`Claims::issued_at_ms`]).
    pub not_before_ms: i64,
}

impl Jwks {
    fn verifying_keys(&self) -> HashMap<String, ed25519_dalek::VerifyingKey> {
        self.keys
            .iter()
            .filter(|k| k.kty == "OKP" && k.crv == "Ed25519")
            .filter_map(|k| {
                let bytes: [u8; 32] = B64.decode(&k.x).ok()?.try_into().ok()?;
                let vk = ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok()?;
                Some((k.kid.clone(), vk))
            })
            .collect()
    }
}

/// Where verification finds public keys.
#[async_trait::async_trait]
pub trait KeySource: Send + Sync {
    /// The key with this id, if published.
    async fn key(&self, kid: &str) -> Option<ed25519_dalek::VerifyingKey>;

    /// Tokens of `sub` issued before this (ms since epoch) are void.
    fn not_before(&self, _sub: &str) -> Option<i64> {
        None
    }
}

/// Verifies `token` at time `now_s` against `keys`.
pub async fn verify(token: &str, keys: &dyn KeySource, now_s: i64) -> Result<Claims, AuthError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let header: Header = B64
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(AuthError::Malformed)?;
    if header.alg != "EdDSA" {
        return Err(AuthError::Algorithm);
    }
    let kid = header.kid.ok_or(AuthError::UnknownKey)?;
    let key = keys.key(&kid).await.ok_or(AuthError::UnknownKey)?;
    let sig: [u8; 64] = B64
        .decode(s)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(AuthError::Malformed)?;
    let signed = &token[..h.len() + 1 + p.len()];
    key.verify(
        signed.as_bytes(),
        &ed25519_dalek::Signature::from_bytes(&sig),
    )
    .map_err(|_| AuthError::Signature)?;
    let claims: Claims = B64
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(AuthError::Malformed)?;
    if claims.iss != ISSUER {
        return Err(AuthError::Issuer);
    }
    if claims.aud != AUDIENCE {
        return Err(AuthError::Audience);
    }
    if claims.exp + LEEWAY_SECS < now_s {
        return Err(AuthError::Expired);
    }
    if claims.nbf - LEEWAY_SECS > now_s {
        return Err(AuthError::NotYetValid);
    }
    Ok(claims)
}

/// Tokens already verified, so that a client presenting the same token on
/// every request pays for the signature check once. An entry is used only
/// while its key is still published and its `exp`/`nbf` hold.
#[derive(Default)]
pub struct VerifiedTokens {
    /// Claims and key id by token; cleared when full.
    entries: std::sync::RwLock<HashMap<String, (String, Claims)>>,
}

/// Tokens remembered at most.
const VERIFIED_CAPACITY: usize = 10_000;

impl VerifiedTokens {
    /// Verifies `token`, from memory when it was verified before.
    pub async fn verify(
        &self,
        token: &str,
        keys: &dyn KeySource,
        now_s: i64,
    ) -> Result<Claims, AuthError> {
        let hit = self.entries.read().ok().and_then(|e| e.get(token).cloned());
        if let Some((kid, claims)) = hit {
            if keys.key(&kid).await.is_none() {
                return Err(AuthError::UnknownKey);
            }
            if claims.exp + LEEWAY_SECS < now_s {
                return Err(AuthError::Expired);
            }
            if claims.nbf - LEEWAY_SECS > now_s {
                return Err(AuthError::NotYetValid);
            }
            return Ok(claims);
        }
        let claims = verify(token, keys, now_s).await?;
        let kid = token
            .split('.')
            .next()
            .and_then(|h| B64.decode(h).ok())
            .and_then(|b| serde_json::from_slice::<Header>(&b).ok())
            .and_then(|h| h.kid)
            .unwrap_or_default();
        if let Ok(mut e) = self.entries.write() {
            if e.len() >= VERIFIED_CAPACITY {
                e.clear();
            }
            e.insert(token.to_owned(), (kid, claims.clone()));
        }
        Ok(claims)
    }
}

static VERIFIED: std::sync::LazyLock<VerifiedTokens> =
    std::sync::LazyLock::new(VerifiedTokens::default);

/// Keys fetched from a JWKS URL, refreshed when a token names an unknown
/// `kid`, at most once per `min_refresh`.
pub struct JwksCache {
    url: String,
    client: reqwest::Client,
    min_refresh: Duration,
    /// Known keys by kid.
    keys: tokio::sync::RwLock<HashMap<String, ed25519_dalek::VerifyingKey>>,
    /// When the last fetch started; guards the refresh rate.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    /// Revocations by user id (`not_before_ms`).
    revoked: std::sync::RwLock<HashMap<String, i64>>,
}

impl JwksCache {
    /// A cache of the JWKS at `url`, trusting the system's CAs for `https://`.
    pub fn new(url: impl Into<String>) -> Self {
        Self::with_tls(url, &crate::tls::TlsConfig::system())
    }

    /// A cache of the JWKS at `url`, trusting the system's CAs and those of
    /// `tls` for `https://`.
    pub fn with_tls(url: impl Into<String>, tls: &crate::tls::TlsConfig) -> Self {
        Self {
            url: url.into(),
            client: tls
                .http_client()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            min_refresh: Duration::from_secs(10),
            keys: Default::default(),
            last_fetch: Default::default(),
            revoked: Default::default(),
        }
    }

    /// Refetches the set every `every` until shutdown, so revocations arrive
    /// within that time even when no unknown `kid` asks for a refresh.
    pub async fn run(
        self: Arc<Self>,
        every: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            self.refresh().await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    async fn refresh(&self) {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.min_refresh) {
            return;
        }
        *last = Some(Instant::now());
        let fetched = async {
            self.client
                .get(&self.url)
                .send()
                .await?
                .error_for_status()?
                .json::<Jwks>()
                .await
        }
        .await;
        match fetched {
            Ok(jwks) => {
                let keys = jwks.verifying_keys();
                tracing::debug!(
                    keys = keys.len(),
                    revoked = jwks.revoked.len(),
                    "jwks refreshed"
                );
                *self.keys.write().await = keys;
                let revoked = jwks
                    .revoked
                    .into_iter()
                    .map(|r| (r.sub, r.not_before_ms))
                    .collect();
                if let Ok(mut r) = self.revoked.write() {
                    *r = revoked;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, url = %self.url, "jwks fetch failed");
                // Let the next unknown kid try again soon rather than after the full interval.
                *last = Some(Instant::now() - self.min_refresh + Duration::from_secs(1));
            }
        }
    }
}

#[async_trait::async_trait]
impl KeySource for JwksCache {
    async fn key(&self, kid: &str) -> Option<ed25519_dalek::VerifyingKey> {
        if let Some(k) = self.keys.read().await.get(kid) {
            return Some(*k);
        }
        self.refresh().await;
        self.keys.read().await.get(kid).copied()
    }

    fn not_before(&self, sub: &str) -> Option<i64> {
        self.revoked.read().ok()?.get(sub).copied()
    }
}

/// A fixed set of keys (user-service verifies against its own store; tests).
pub struct StaticKeys(pub std::sync::RwLock<HashMap<String, ed25519_dalek::VerifyingKey>>);

impl StaticKeys {
    /// Keys from a JWKS.
    pub fn from_jwks(jwks: &Jwks) -> Self {
        Self(std::sync::RwLock::new(jwks.verifying_keys()))
    }

    /// Replaces the keys.
    pub fn replace(&self, jwks: &Jwks) {
        if let Ok(mut k) = self.0.write() {
            *k = jwks.verifying_keys();
        }
    }
}

#[async_trait::async_trait]
impl KeySource for StaticKeys {
    async fn key(&self, kid: &str) -> Option<ed25519_dalek::VerifyingKey> {
        self.0.read().ok()?.get(kid).copied()
    }
}

/// The authenticated caller, put into request extensions by [`require_auth`].
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// User id.
    pub sub: String,
    /// Role.
    pub role: Role,
    /// Teams (agents and supervisors), from the token.
    pub teams: Vec<String>,
}

impl Principal {
    /// Whether the caller sees everything: admins and service accounts.
    pub fn sees_all(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Service)
    }

    /// Whether a supervisor caller leads one of `teams`.
    pub fn leads_any<S: AsRef<str>>(&self, teams: &[S]) -> bool {
        self.role == Role::Supervisor
            && teams
                .iter()
                .any(|t| self.teams.iter().any(|mine| mine == t.as_ref()))
    }

    /// `Ok` when the caller has one of `roles`; otherwise a 403.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("role {} may not do this", self.role.as_str()),
            ))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or(AuthError::Missing)
    }
}

/// The shared key source for [`require_auth`].
pub type Keys = Arc<dyn KeySource>;

/// Axum middleware: refuses the request with 401 unless it carries a valid
/// bearer token; otherwise inserts the [`Principal`] and the verified
/// [`Claims`] into the request's extensions.
pub async fn require_auth(State(keys): State<Keys>, mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(token) = token else {
        return AuthError::Missing.into_response();
    };
    match VERIFIED
        .verify(token, keys.as_ref(), crate::now_ms() / 1000)
        .await
    {
        Ok(claims)
            if keys
                .not_before(&claims.sub)
                .is_some_and(|nb| claims.issued_at_ms() < nb) =>
        {
            tracing::info!(sub = %claims.sub, "revoked token refused");
            AuthError::Revoked.into_response()
        }
        Ok(claims) => {
            // The whole claims too, for a service that checks more than the
            // principal (user-service compares the issue time with its own
            // revocations).
            req.extensions_mut().insert(claims.clone());
            req.extensions_mut().insert(Principal {
                sub: claims.sub,
                role: claims.role,
                teams: claims.teams,
            });
            next.run(req).await
        }
        Err(e) => {
            tracing::info!(reason = %e, "token refused");
            e.into_response()
        }
    }
}

/// Who may call one route: the declaration every `/v1` route carries.
#[derive(Debug, Clone, Copy)]
pub struct RouteRoles {
    /// HTTP method.
    pub method: &'static str,
    /// Path as routed (with `{param}` segments).
    pub path: &'static str,
    /// Roles allowed; empty means public (no token).
    pub roles: &'static [Role],
}

/// Every role, for routes open to any authenticated caller (object-level
/// rules then apply in the handler).
pub const ANY_ROLE: &[Role] = &[Role::Admin, Role::Supervisor, Role::Agent, Role::Service];

/// Axum middleware for one route: 403 unless the caller's role is declared.
/// Runs before the body is read, so a refused caller learns nothing about
/// what the route would have accepted.
pub async fn require_roles(
    State(roles): State<&'static [Role]>,
    req: Request,
    next: Next,
) -> Response {
    match req.extensions().get::<Principal>() {
        None => AuthError::Missing.into_response(),
        Some(p) => match p.require(roles) {
            Ok(()) => next.run(req).await,
            Err(e) => e.into_response(),
        },
    }
}

/// The boxed future of [`require_roles`].
type RolesFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>>;
/// [`require_roles`] as a plain function pointer, so the layer has a nameable type.
type RolesFn = fn(State<&'static [Role]>, Request, Next) -> RolesFuture;
/// The per-route authorisation layer.
pub type RolesLayer =
    axum::middleware::FromFnLayer<RolesFn, &'static [Role], (State<&'static [Role]>, Request)>;

/// The layer that enforces `roles` on one route.
pub fn roles(roles: &'static [Role]) -> RolesLayer {
    fn run(s: State<&'static [Role]>, req: Request, next: Next) -> RolesFuture {
        Box::pin(require_roles(s, req, next))
    }
    axum::middleware::from_fn_with_state(roles, run as RolesFn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &SigningKey) -> StaticKeys {
        StaticKeys::from_jwks(&Jwks {
            keys: vec![k.jwk()],
            ..Default::default()
        })
    }

    fn now() -> i64 {
        crate::now_ms() / 1000
    }

    #[test]
    fn issue_time_has_milliseconds() {
        let before = crate::now_ms();
        let c = new_claims("u1", Role::Agent, Duration::from_secs(60));
        let at = c.issued_at_ms();
        assert!(at >= before && at <= crate::now_ms(), "{before} <= {at}");
        let mut other = c.clone();
        other.jti = "not-a-uuid".into();
        assert_eq!(other.issued_at_ms(), c.iat * 1000);
    }

    #[tokio::test]
    async fn valid_token_verifies() {
        let k = SigningKey::generate();
        let t = k.sign(&new_claims("u1", Role::Admin, Duration::from_secs(900)));
        let c = verify(&t, &keys(&k), now()).await.unwrap();
        assert_eq!(c.sub, "u1");
        assert_eq!(c.role, Role::Admin);
    }

    #[tokio::test]
    async fn attacks_are_refused() {
        let k = SigningKey::generate();
        let ks = keys(&k);
        let good = new_claims("u1", Role::Agent, Duration::from_secs(900));

        // alg none
        let h = B64.encode(br#"{"alg":"none","kid":"x"}"#);
        let p = B64.encode(serde_json::to_vec(&good).unwrap());
        assert_eq!(
            verify(&format!("{h}.{p}."), &ks, now()).await,
            Err(AuthError::Algorithm)
        );
        // HS256 with the public key as secret
        let h = B64.encode(format!(r#"{{"alg":"HS256","kid":"{}"}}"#, k.kid));
        assert_eq!(
            verify(&format!("{h}.{p}.AAAA"), &ks, now()).await,
            Err(AuthError::Algorithm)
        );
        // expired, not yet valid, wrong aud/iss
        let mut c = good.clone();
        c.exp = now() - 3600;
        assert_eq!(
            verify(&k.sign(&c), &ks, now()).await,
            Err(AuthError::Expired)
        );
        let mut c = good.clone();
        c.nbf = now() + 3600;
        assert_eq!(
            verify(&k.sign(&c), &ks, now()).await,
            Err(AuthError::NotYetValid)
        );
        let mut c = good.clone();
        c.aud = "other".into();
        assert_eq!(
            verify(&k.sign(&c), &ks, now()).await,
            Err(AuthError::Audience)
        );
        let mut c = good.clone();
        c.iss = "evil".into();
        assert_eq!(
            verify(&k.sign(&c), &ks, now()).await,
            Err(AuthError::Issuer)
        );
        // tampered payload
        let t = k.sign(&good);
        let mut parts: Vec<&str> = t.split('.').collect();
        let mut admin = good.clone();
        admin.role = Role::Admin;
        let forged = B64.encode(serde_json::to_vec(&admin).unwrap());
        parts[1] = &forged;
        assert_eq!(
            verify(&parts.join("."), &ks, now()).await,
            Err(AuthError::Signature)
        );
        // a key not in the set
        let other = SigningKey::generate();
        assert_eq!(
            verify(&other.sign(&good), &ks, now()).await,
            Err(AuthError::UnknownKey)
        );
        // garbage
        assert_eq!(verify("a.b", &ks, now()).await, Err(AuthError::Malformed));
        assert_eq!(verify("a.b.c", &ks, now()).await, Err(AuthError::Malformed));
    }

    #[tokio::test]
    async fn remembered_tokens_still_expire_and_lose_their_key() {
        let k = SigningKey::generate();
        let ks = keys(&k);
        let cache = VerifiedTokens::default();
        let mut c = new_claims("u1", Role::Agent, Duration::from_secs(60));
        c.exp = now() + 60;
        let t = k.sign(&c);
        assert!(cache.verify(&t, &ks, now()).await.is_ok());
        assert!(cache.verify(&t, &ks, now()).await.is_ok(), "from memory");
        assert_eq!(
            cache.verify(&t, &ks, now() + 3600).await,
            Err(AuthError::Expired)
        );
        ks.replace(&Jwks {
            keys: vec![SigningKey::generate().jwk()],
            ..Default::default()
        });
        assert_eq!(
            cache.verify(&t, &ks, now()).await,
            Err(AuthError::UnknownKey),
            "key withdrawn"
        );
        let mut forged = t.clone();
        forged.push('x');
        assert!(
            cache.verify(&forged, &keys(&k), now()).await.is_err(),
            "a different string is verified afresh"
        );
    }

    #[test]
    fn seed_round_trips() {
        let k = SigningKey::generate();
        let back = SigningKey::from_seed(k.kid.clone(), &k.seed()).unwrap();
        assert_eq!(back.jwk(), k.jwk());
        assert!(SigningKey::from_seed("x".into(), &[1, 2]).is_none());
    }
}
