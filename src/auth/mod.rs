//! Who is calling: Firebase ID tokens verified against Google's signing keys (or, for the
//! Auth emulator, unsigned tokens whose claims are still fully checked), and the Firebase Auth
//! user directory that knows the plan of a user who is not the caller.

mod dev_token;
mod directory;
mod error;
mod keys;
mod verifier;

pub use dev_token::emulator_token;
pub use directory::{DirectorySettings, IdentityToolkitDirectory};
pub use error::AuthError;
pub use verifier::{TokenVerifier, VerifierSettings};

/// The custom claim whose JSON `true` makes a caller an admin. `firestore.rules` names it
/// too (`request.auth.token.admin`), which is why it is not configurable.
pub const ADMIN_CLAIM: &str = "admin";

/// Who is calling: the verified token's subject and custom claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub uid: String,
    pub user_type: crate::usage::UserType,
    pub admin: bool,
}
