//! Who is calling: Firebase ID tokens verified against Google's signing keys (or, for the
//! Auth emulator, unsigned tokens whose claims are still fully checked).

mod dev_token;
mod keys;
mod verifier;

pub use dev_token::emulator_token;
pub use verifier::{AuthError, TokenVerifier, VerifierSettings};

/// Who is calling: the verified token's subject and custom claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub uid: String,
    pub user_type: crate::usage::UserType,
    pub admin: bool,
}
