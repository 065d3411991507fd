//! The user directory port: where the plan of a user who is not the caller is learned (the
//! Firebase Auth custom claims, in production), so that a backend acting for a user is held
//! to that user's real limit.

use async_trait::async_trait;

use super::{UserId, UserType};

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The directory could not answer now (503).
    #[error("user directory unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait UserDirectory: Send + Sync {
    /// The user's plan as their custom claims state it now: [`UserType::DEFAULT`] for a user
    /// without the claim or without an account.
    async fn user_type(&self, user_id: &UserId) -> Result<UserType, DirectoryError>;
}

/// No directory at all: a Firebase `demo-` project without the Auth emulator has no accounts,
/// so nobody has claims and every user acted for is on [`UserType::DEFAULT`] unless the request
/// states a type.
pub struct OfflineDirectory;

#[async_trait]
impl UserDirectory for OfflineDirectory {
    async fn user_type(&self, _: &UserId) -> Result<UserType, DirectoryError> {
        Ok(UserType::DEFAULT)
    }
}
