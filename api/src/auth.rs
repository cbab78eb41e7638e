//! Who is calling: HS256 JWTs carrying the user id and role.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use chrono::Utc;
use domain::values::{Actor, Role};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::background::StopSignal;
use crate::error::ApiError;
use crate::AppState;

/// The shortest secret Herald accepts, in bytes.
pub const MIN_SECRET_LEN: usize = 32;
/// The longest token Herald reads, in bytes: its own are a few hundred, and
/// a larger one is only work for the server.
pub const MAX_TOKEN_LEN: usize = 4096;

/// The claims of a Herald token: who, in which role, until when; when it
/// was issued and its own id. Tokens minted before `iat` and `jti` existed
/// carry neither and are still read.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: Uuid,
    role: String,
    exp: i64,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    jti: Option<Uuid>,
}

/// Signs tokens with the newest secret and checks them with it and the
/// previous ones, so that the secret can be rotated without signing everyone
/// out; refuses the tokens of users whose access was taken away since.
#[derive(Clone)]
pub struct JwtKeys {
    /// Shared, since every request's extractors take a copy of the state.
    keys: Arc<Keys>,
    revocations: Arc<Revocations>,
}

#[derive(Clone)]
struct Keys {
    /// The key that signs, named in each token's `kid`.
    kid: String,
    encoding: EncodingKey,
    /// Every key that checks, the signing one first, by `kid`.
    decoding: Vec<(String, DecodingKey)>,
    /// What a token must be to pass.
    validation: Validation,
}

/// A key's name: the first 8 bytes of the SHA-256 of its secret, in hex,
/// which tells keys apart without saying anything of the secret.
fn key_id(secret: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(secret)[..8])
}

/// Where a change of a user's role or access is announced (by the trigger
/// that fills `user_access`).
const USER_ACCESS_CHANNEL: &str = "herald_user_access";

/// How often every process reloads [`Revocations`] even without being told
/// of a change, in case it missed one while its connection was down.
pub const REVOCATIONS_RELOAD: Duration = Duration::from_secs(30);

/// The users whose tokens are refused: every token of a deactivated user,
/// and tokens issued before the moment a user's role changed or they were
/// deactivated. Read from `user_access`, which the log's User events fill.
#[derive(Debug, Default)]
pub struct Revocations {
    users: RwLock<HashMap<Uuid, Revoked>>,
}

#[derive(Debug, Clone, Copy)]
struct Revoked {
    active: bool,
    /// Tokens issued before this (Unix seconds, rounded up: a token says
    /// when it was issued in whole seconds, so one from the second of the
    /// change is refused too) are refused.
    not_before: i64,
}

impl Revocations {
    /// Reads the revoked users afresh.
    pub async fn reload<'c>(&self, executor: impl PgExecutor<'c>) -> Result<(), sqlx::Error> {
        let rows: Vec<(Uuid, bool, i64)> = sqlx::query_as(
            "SELECT user_id, active, ceil(extract(epoch FROM not_before))::bigint
               FROM user_access WHERE NOT active OR not_before > '-infinity'",
        )
        .fetch_all(executor)
        .await?;
        let users = rows
            .into_iter()
            .map(|(user_id, active, not_before)| (user_id, Revoked { active, not_before }))
            .collect();
        *self.users.write().unwrap_or_else(|e| e.into_inner()) = users;
        Ok(())
    }

    /// Reloads whenever a change is announced, and every
    /// [`REVOCATIONS_RELOAD`] anyway, until `stop`; keeps the last ones while
    /// Postgres is away.
    pub async fn keep_reloading(self: Arc<Self>, pool: PgPool, stop: StopSignal) {
        let following = async {
            loop {
                if let Err(err) = self.follow(&pool).await {
                    tracing::warn!(%err, "cannot follow changes to users' access; keeping the last ones");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        tokio::select! {
            () = following => {}
            () = stop => {}
        }
    }

    /// Listens on a connection of its own, so the pool's idle connections
    /// serve only requests, and reloads through it.
    async fn follow(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(USER_ACCESS_CHANNEL).await?;
        loop {
            self.reload(&mut listener).await?;
            tokio::select! {
                notified = listener.recv() => { notified?; }
                () = tokio::time::sleep(REVOCATIONS_RELOAD) => {}
            }
        }
    }

    /// Why a token of `user_id` issued at `issued_at` is refused, if it is.
    fn refusal(&self, user_id: Uuid, issued_at: Option<i64>) -> Option<&'static str> {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        let revoked = users.get(&user_id)?;
        if !revoked.active {
            return Some("the account is deactivated");
        }
        (issued_at.unwrap_or(i64::MIN) < revoked.not_before)
            .then_some("the token was issued before the account's role changed; sign in again")
    }
}

/// Why a secret cannot sign tokens.
#[derive(Debug, thiserror::Error)]
#[error(
    "HERALD_JWT_SECRET must be at least {MIN_SECRET_LEN} bytes long; \
     make one with `openssl rand -hex 32`"
)]
pub struct WeakSecret;

impl JwtKeys {
    /// Keys from a secret of at least [`MIN_SECRET_LEN`] bytes.
    pub fn new(secret: &SecretString) -> Result<Self, WeakSecret> {
        let bytes = strong(secret)?;
        let kid = key_id(bytes);
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        // A token that says when it starts is not honoured before then.
        validation.validate_nbf = true;
        let keys = Keys {
            decoding: vec![(kid.clone(), DecodingKey::from_secret(bytes))],
            kid,
            encoding: EncodingKey::from_secret(bytes),
            validation,
        };
        Ok(Self {
            keys: Arc::new(keys),
            revocations: Arc::default(),
        })
    }

    /// These keys, also accepting tokens signed with the `previous` secrets.
    pub fn accepting(mut self, previous: &[SecretString]) -> Result<Self, WeakSecret> {
        for secret in previous {
            let bytes = strong(secret)?;
            Arc::make_mut(&mut self.keys)
                .decoding
                .push((key_id(bytes), DecodingKey::from_secret(bytes)));
        }
        Ok(self)
    }

    /// The users whose tokens these keys refuse.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// A token for `actor`, valid for `ttl`.
    pub fn mint(&self, actor: Actor, ttl: Duration) -> String {
        let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let now = Utc::now();
        let exp = now
            .checked_add_signed(ttl)
            .unwrap_or(chrono::DateTime::<Utc>::MAX_UTC)
            .timestamp();
        let claims = Claims {
            sub: actor.user_id,
            role: actor.role.as_str().to_owned(),
            exp,
            iat: Some(now.timestamp()),
            jti: Some(Uuid::new_v4()),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.keys.kid.clone());
        // HS256 signing of a plain struct cannot fail.
        jsonwebtoken::encode(&header, &claims, &self.keys.encoding).unwrap_or_default()
    }

    /// The actor a token speaks for, when it is genuine and current.
    pub fn verify(&self, token: &str) -> Result<Actor, ApiError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(ApiError::Unauthorized(
                "the token is longer than any Herald token",
            ));
        }
        // A token without a `kid` predates key names: the signing key checks it.
        let kid = jsonwebtoken::decode_header(token)
            .map_err(|_| ApiError::Unauthorized("the token is not a valid Herald token"))?
            .kid;
        let key = match kid {
            None => &self.keys.decoding[0].1,
            Some(kid) => self
                .keys
                .decoding
                .iter()
                .find(|(id, _)| *id == kid)
                .map(|(_, key)| key)
                .ok_or(ApiError::Unauthorized(
                    "the token is signed with a key Herald no longer accepts",
                ))?,
        };
        let claims = jsonwebtoken::decode::<Claims>(token, key, &self.keys.validation)
            .map_err(|err| match err.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    ApiError::Unauthorized("the token has expired")
                }
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                    ApiError::Unauthorized("the token is not valid yet")
                }
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    ApiError::Unauthorized("the token's signature is not valid")
                }
                _ => ApiError::Unauthorized("the token is not a valid Herald token"),
            })?
            .claims;
        let role: Role = claims
            .role
            .parse()
            .map_err(|_| ApiError::Unauthorized("the token's role is not recognised"))?;
        if let Some(refusal) = self.revocations.refusal(claims.sub, claims.iat) {
            return Err(ApiError::Unauthorized(refusal));
        }
        Ok(Actor::new(claims.sub, role))
    }
}

/// A secret's bytes, when it is long enough.
fn strong(secret: &SecretString) -> Result<&[u8], WeakSecret> {
    let bytes = secret.expose_secret().as_bytes();
    if bytes.len() < MIN_SECRET_LEN {
        return Err(WeakSecret);
    }
    Ok(bytes)
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub Actor);

impl<S> FromRequestParts<S> for Caller
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let app = AppState::from_ref(state);
        let header =
            parts
                .headers
                .get(axum::http::header::AUTHORIZATION)
                .ok_or(ApiError::Unauthorized(
                    "an Authorization: Bearer token is required",
                ))?;
        // The scheme name is case-insensitive (RFC 9110 §11.1).
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token)
            .ok_or(ApiError::Unauthorized(
                "the Authorization header must be `Bearer <token>`",
            ))?;
        app.keys.verify(token.trim()).map(Caller)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> JwtKeys {
        JwtKeys::new(&SecretString::from(secret.to_owned())).unwrap()
    }

    #[test]
    fn a_secret_shorter_than_32_bytes_is_refused() {
        assert!(JwtKeys::new(&SecretString::from("x".repeat(31))).is_err());
        assert!(JwtKeys::new(&SecretString::from("x".repeat(32))).is_ok());
    }

    #[test]
    fn a_minted_token_verifies_as_its_actor() {
        let keys = keys(&"s".repeat(32));
        let actor = Actor::new(Uuid::new_v4(), Role::Doctor);
        let verified = keys
            .verify(&keys.mint(actor, Duration::from_secs(60)))
            .unwrap();
        assert_eq!(verified.user_id, actor.user_id);
        assert_eq!(verified.role, Role::Doctor);
    }

    #[test]
    fn a_rotated_secret_keeps_its_tokens_valid_while_it_is_accepted() {
        let (old, new) = ("o".repeat(32), "n".repeat(32));
        let actor = Actor::new(Uuid::new_v4(), Role::Patient);
        let old_token = keys(&old).mint(actor, Duration::from_secs(60));
        let rotated = keys(&new)
            .accepting(&[SecretString::from(old.clone())])
            .unwrap();
        assert_eq!(rotated.verify(&old_token).unwrap(), actor);
        let new_token = rotated.mint(actor, Duration::from_secs(60));
        let kid = |token: &str| jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
        assert_eq!(kid(&new_token), key_id(new.as_bytes()));
        assert_ne!(kid(&new_token), kid(&old_token));
        assert_eq!(rotated.verify(&new_token).unwrap(), actor);
        // Once the old secret is dropped, its tokens are refused by name.
        assert!(matches!(
            keys(&new).verify(&old_token),
            Err(ApiError::Unauthorized(
                "the token is signed with a key Herald no longer accepts"
            ))
        ));
        assert!(keys(&new)
            .accepting(&[SecretString::from("short".to_owned())])
            .is_err());
    }

    #[test]
    fn a_token_before_its_not_before_time_is_refused() {
        let secret = "s".repeat(32);
        let now = Utc::now().timestamp();
        let token = |nbf: i64| {
            let claims = serde_json::json!({
                "sub": Uuid::new_v4(), "role": "patient", "exp": now + 600, "nbf": nbf,
            });
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(secret.as_bytes()),
            )
            .unwrap()
        };
        assert!(matches!(
            keys(&secret).verify(&token(now + 300)),
            Err(ApiError::Unauthorized("the token is not valid yet"))
        ));
        assert!(keys(&secret).verify(&token(now - 1)).is_ok());
    }

    #[test]
    fn a_token_longer_than_any_herald_token_is_refused_unread() {
        let keys = keys(&"s".repeat(32));
        let token = keys.mint(
            Actor::new(Uuid::new_v4(), Role::Patient),
            Duration::from_secs(60),
        );
        let padded = format!("{token}{}", "A".repeat(100 * 1024));
        assert!(matches!(
            keys.verify(&padded),
            Err(ApiError::Unauthorized(
                "the token is longer than any Herald token"
            ))
        ));
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let token = keys(&"a".repeat(32)).mint(
            Actor::new(Uuid::new_v4(), Role::Admin),
            Duration::from_secs(60),
        );
        assert!(keys(&"b".repeat(32)).verify(&token).is_err());
    }

    #[test]
    fn the_internal_system_role_cannot_be_claimed_by_a_token() {
        let keys = keys(&"s".repeat(32));
        let token = keys.mint(Actor::system(), Duration::from_secs(60));
        assert!(keys.verify(&token).is_err());
    }
}
