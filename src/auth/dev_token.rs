//! Tokens as the Firebase Auth emulator issues them, for local use with `demo-` projects.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::ADMIN_CLAIM;
use super::verifier::issuer;
use crate::usage::UserType;

/// As long as a real Firebase ID token lives.
const LIFETIME_SECS: i64 = 60 * 60;

/// An unsigned (`alg: none`) ID token as the Firebase Auth emulator issues them, for `demo-` projects.
pub fn emulator_token(
    project_id: &str,
    uid: &str,
    admin: bool,
    user_type: Option<UserType>,
    user_type_claim: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    let issued_at = now.timestamp();
    let mut payload = json!({
        "iss": issuer(project_id),
        "aud": project_id,
        "sub": uid,
        "user_id": uid,
        "iat": issued_at,
        "auth_time": issued_at,
        "exp": issued_at + LIFETIME_SECS,
        "firebase": {"sign_in_provider": "custom", "identities": {}},
    });
    if admin {
        payload[ADMIN_CLAIM] = Value::Bool(true);
    }
    if let Some(user_type) = user_type {
        payload[user_type_claim] = Value::from(user_type.as_str());
    }
    let header = json!({"alg": "none", "typ": "JWT"});
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    )
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;

    fn decode(segment: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
    }

    #[test]
    fn emulator_tokens_look_like_the_emulators() {
        let now = Utc.with_ymd_and_hms(2024, 1, 15, 14, 30, 0).unwrap();
        let token = emulator_token(
            "demo-x",
            "alice",
            true,
            Some(UserType::Subscribed),
            "userType",
            now,
        );
        assert!(!token.contains('='));
        let [header, payload, signature] = token.split('.').collect::<Vec<_>>()[..] else {
            panic!("not three segments: {token}");
        };
        assert_eq!(signature, "");
        assert_eq!(decode(header), json!({"alg": "none", "typ": "JWT"}));
        let at = now.timestamp();
        assert_eq!(
            decode(payload),
            json!({
                "iss": "https://securetoken.google.com/demo-x",
                "aud": "demo-x",
                "sub": "alice",
                "user_id": "alice",
                "iat": at,
                "auth_time": at,
                "exp": at + 3600,
                "firebase": {"sign_in_provider": "custom", "identities": {}},
                "admin": true,
                "userType": "subscribed",
            })
        );
    }

    #[test]
    fn custom_claims_are_present_only_when_given_and_the_user_type_claim_is_renamed() {
        let token = emulator_token("demo-x", "bob", false, None, "userType", Utc::now());
        let payload = decode(token.split('.').nth(1).unwrap());
        assert!(payload.get("admin").is_none());
        assert!(payload.get("userType").is_none());

        let token = emulator_token(
            "demo-x",
            "bob",
            true,
            Some(UserType::Trial),
            "plan",
            Utc::now(),
        );
        let payload = decode(token.split('.').nth(1).unwrap());
        assert_eq!(payload["admin"], json!(true));
        assert_eq!(payload["plan"], json!("trial"));
        assert!(payload.get("userType").is_none());
    }
}
