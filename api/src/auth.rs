//! Who is calling: HS256 JWTs carrying the user id and role.

use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use chrono::Utc;
use domain::values::{Actor, Role};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

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

/// Signs and checks tokens with one secret.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
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
        let bytes = secret.expose_secret().as_bytes();
        if bytes.len() < MIN_SECRET_LEN {
            return Err(WeakSecret);
        }
        Ok(Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
        })
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
        // HS256 signing of a plain struct cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default()
    }

    /// The actor a token speaks for, when it is genuine and current.
    pub fn verify(&self, token: &str) -> Result<Actor, ApiError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(ApiError::Unauthorized(
                "the token is longer than any Herald token",
            ));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        // A token that says when it starts is not honoured before then.
        validation.validate_nbf = true;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
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
        Ok(Actor::new(claims.sub, role))
    }
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
