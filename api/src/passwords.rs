//! Passwords as Herald keeps them: argon2id hashes with OWASP's parameters
//! (19 MiB, two passes, one lane), computed off the async threads, and on at
//! most half of the cores at once: a burst of sign-ins waits its turn
//! instead of taking the CPU from commands and reads, or 19 MiB per request.

use std::sync::LazyLock;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use domain::values::Password;

use commands::CommandError;
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// Hashes computed at once: half of the cores, at least one.
static HASHING: LazyLock<Semaphore> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    Semaphore::new((cores / 2).max(1))
});

/// Runs `work` (an argon2 computation) on a blocking thread once a hashing
/// slot is free.
async fn hashing<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let _slot = HASHING
        .acquire()
        .await
        .map_err(|err| internal(err.into()))?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| internal(err.into()))
}

/// The hasher, with OWASP's argon2id parameters.
fn argon2() -> Argon2<'static> {
    // Constant parameters within argon2's limits always build.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A hash checked when no account has the address given, so that an unknown
/// address takes as long to refuse as a wrong password.
static DECOY: LazyLock<String> = LazyLock::new(|| {
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(b"a password nobody has", &salt)
        .map(|hash| hash.to_string())
        .unwrap_or_default()
});

/// The PHC string of `password`'s argon2id hash with a fresh salt.
pub async fn hash(password: Password) -> Result<String, ApiError> {
    hashing(move || {
        let salt = SaltString::generate(&mut OsRng);
        argon2()
            .hash_password(password.expose().as_bytes(), &salt)
            .map(|hash| hash.to_string())
    })
    .await?
    .map_err(|err| internal(err.to_string().into()))
}

/// What an account opened by an admin holds until its user sets a password:
/// no password matches it.
pub const NOT_SET: &str = "!";

/// Whether `password` is the one `stored` is the hash of. With no stored
/// hash, or none set yet, a decoy is checked and the answer is no, in the
/// same time.
pub async fn matches(password: String, stored: Option<String>) -> Result<bool, ApiError> {
    hashing(move || {
        let stored = stored
            .as_deref()
            .and_then(|hash| PasswordHash::new(hash).ok());
        let decoy = PasswordHash::new(&DECOY).ok();
        let Some(hash) = stored.clone().or(decoy) else {
            return false;
        };
        let matched = argon2().verify_password(password.as_bytes(), &hash).is_ok();
        stored.is_some() && matched
    })
    .await
}

fn internal(err: Box<dyn std::error::Error + Send + Sync>) -> ApiError {
    ApiError::Command(CommandError::Internal(err))
}
