//! Why a caller could not be authenticated.

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token is missing, malformed, expired, for another project, or not signed by a
    /// current key: 401.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    /// No signing key could be fetched and none is cached: 503, not 401.
    #[error("signing keys unavailable")]
    KeysUnavailable,
}
