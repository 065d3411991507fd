//! Firebase ID token verification: the checks firebase-admin's `verifyIdToken` makes.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::error::AuthError;
use super::keys::{KeyStore, STALE_KEY_GRACE};
use super::{ADMIN_CLAIM, Principal};
use crate::usage::UserType;

/// Clock skew tolerated on `exp`, `iat` and `auth_time`.
const CLOCK_SKEW_SECS: i64 = 60;
/// Firebase's own limit on a uid.
const MAX_SUBJECT_CHARS: usize = 128;
/// Signed tokens remembered after their signature was checked: enough for every client of a
/// busy instance, at about half a kilobyte each.
const VERIFIED_TOKENS: u64 = 100_000;
/// An ID token lives an hour; none is remembered longer.
const VERIFIED_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct VerifierSettings {
    /// `aud` must equal it; `iss` must be `https://securetoken.google.com/<project_id>`.
    pub project_id: String,
    /// The JWK set: Google's securetoken set in production, a local server in tests.
    pub jwks_url: String,
    /// Accept unsigned `alg: none` tokens (Firebase Auth emulator); claims are still checked.
    pub emulator_mode: bool,
    /// Custom string claim naming the user type (`trial` or `subscribed`).
    pub user_type_claim: String,
    /// Minimum time between key fetches triggered by an unknown `kid` or a stale cache.
    pub refetch_cooldown: Duration,
    /// Timeout of one JWK set fetch.
    pub fetch_timeout: Duration,
}

/// Verifies ID tokens; shared by all requests.
pub struct TokenVerifier {
    settings: VerifierSettings,
    issuer: String,
    validation: Validation,
    keys: KeyStore,
    /// Signed tokens whose signature checked out, by the SHA-256 of the token: a client sends
    /// the same token with every request for up to an hour, and checking an RS256 signature
    /// is the dearest step of a request. Only the signature check is skipped: the claims are
    /// checked again against the clock on every use, and the key must still be current.
    verified: moka::future::Cache<[u8; 32], Arc<VerifiedToken>>,
}

/// A signed token whose signature checked out.
struct VerifiedToken {
    kid: String,
    claims: Map<String, Value>,
}

/// The issuer of the project's ID tokens.
pub(super) fn issuer(project_id: &str) -> String {
    format!("https://securetoken.google.com/{project_id}")
}

impl TokenVerifier {
    /// Builds the HTTP client; fetches nothing, so start-up never waits on (or fails for) Google.
    pub fn new(settings: VerifierSettings) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(settings.fetch_timeout)
            .build()?;
        let issuer = issuer(&settings.project_id);
        // RS256 only, whatever the token's header claims.
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[settings.project_id.as_str()]);
        validation.set_issuer(&[issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.leeway = CLOCK_SKEW_SECS.unsigned_abs();
        let keys = KeyStore::new(
            client,
            settings.jwks_url.clone(),
            settings.refetch_cooldown,
            STALE_KEY_GRACE,
        );
        Ok(Self {
            settings,
            issuer,
            validation,
            keys,
            verified: moka::future::Cache::builder()
                .max_capacity(VERIFIED_TOKENS)
                .time_to_live(VERIFIED_TOKEN_LIFETIME)
                .build(),
        })
    }

    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let verified = self.verify_token(token).await;
        if let Err(err) = &verified {
            tracing::debug!(error = %err, "rejected an ID token");
        }
        verified
    }

    /// Warms the key cache at start-up.
    pub async fn prefetch_keys(&self) -> Result<(), AuthError> {
        self.keys.refresh().await
    }

    /// Ready to verify signed tokens: a key set is cached, or one can be fetched now (at most
    /// as often as the key store allows). Unsigned emulator tokens need no keys.
    pub async fn ready(&self) -> Result<(), AuthError> {
        if self.settings.emulator_mode || self.keys.has_keys() {
            return Ok(());
        }
        self.keys.refresh().await
    }

    async fn verify_token(&self, token: &str) -> Result<Principal, AuthError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Invalid("malformed"));
        };
        let now = chrono::Utc::now().timestamp();
        // Only signed tokens are remembered, so a remembered one needs no look at its header.
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(verified) = self.verified.get(&digest).await {
            // The key may have been rotated out since: fails as an unknown kid would.
            self.keys.key(&verified.kid).await?;
            return self.principal(&verified.claims, now);
        }
        // `decode_header` cannot read `alg: none`, so look at the alg first.
        let header: AlgOnly = decode_json(header)?;
        if header.alg == "none" {
            return self.principal(&self.unsigned_claims(payload, signature)?, now);
        }
        let verified = Arc::new(self.signed_claims(token).await?);
        self.verified.insert(digest, verified.clone()).await;
        self.principal(&verified.claims, now)
    }

    fn unsigned_claims(
        &self,
        payload: &str,
        signature: &str,
    ) -> Result<Map<String, Value>, AuthError> {
        if !self.settings.emulator_mode {
            return Err(AuthError::Invalid("unsigned_token"));
        }
        if !signature.is_empty() {
            return Err(AuthError::Invalid("malformed"));
        }
        decode_json(payload)
    }

    async fn signed_claims(&self, token: &str) -> Result<VerifiedToken, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid("malformed"))?;
        // Checked before the key lookup too, so that other algs cannot trigger key fetches.
        if header.alg != Algorithm::RS256 {
            return Err(AuthError::Invalid("wrong_algorithm"));
        }
        let kid = header.kid.ok_or(AuthError::Invalid("missing_kid"))?;
        let key = self.keys.key(&kid).await?;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &self.validation)
            .map_err(|err| AuthError::Invalid(rejection_reason(err.kind())))?
            .claims;
        Ok(VerifiedToken { kid, claims })
    }

    /// The claim checks of both paths, signed or not.
    fn principal(&self, claims: &Map<String, Value>, now: i64) -> Result<Principal, AuthError> {
        let timestamp = |name: &str| claims.get(name).and_then(Value::as_i64);
        let string = |name: &str| claims.get(name).and_then(Value::as_str);

        let exp = timestamp("exp").ok_or(AuthError::Invalid("missing_exp"))?;
        if exp <= now - CLOCK_SKEW_SECS {
            return Err(AuthError::Invalid("expired"));
        }
        let iat = timestamp("iat").ok_or(AuthError::Invalid("missing_iat"))?;
        if iat > now + CLOCK_SKEW_SECS {
            return Err(AuthError::Invalid("issued_in_future"));
        }
        let auth_time = timestamp("auth_time").ok_or(AuthError::Invalid("missing_auth_time"))?;
        if auth_time > now + CLOCK_SKEW_SECS {
            return Err(AuthError::Invalid("auth_time_in_future"));
        }
        if string("aud") != Some(self.settings.project_id.as_str()) {
            return Err(AuthError::Invalid("wrong_audience"));
        }
        if string("iss") != Some(self.issuer.as_str()) {
            return Err(AuthError::Invalid("wrong_issuer"));
        }
        let uid = string("sub")
            .filter(|sub| !sub.is_empty() && sub.chars().count() <= MAX_SUBJECT_CHARS)
            .ok_or(AuthError::Invalid("invalid_subject"))?;

        Ok(Principal {
            uid: uid.to_owned(),
            user_type: UserType::from_claim(string(&self.settings.user_type_claim)),
            admin: claims.get(ADMIN_CLAIM) == Some(&Value::Bool(true)),
        })
    }
}

#[derive(Deserialize)]
struct AlgOnly {
    alg: String,
}

/// A base64url JSON segment; padding is tolerated although JWTs omit it.
fn decode_json<T: serde::de::DeserializeOwned>(segment: &str) -> Result<T, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment.trim_end_matches('='))
        .map_err(|_| AuthError::Invalid("malformed"))?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Invalid("malformed"))
}

/// The same reasons as the hand checks in `principal`, whichever check catches a token.
fn rejection_reason(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidSignature => "bad_signature",
        ErrorKind::InvalidAlgorithm => "wrong_algorithm",
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::InvalidAudience => "wrong_audience",
        ErrorKind::InvalidIssuer => "wrong_issuer",
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => "missing_exp",
            "aud" => "wrong_audience",
            "iss" => "wrong_issuer",
            "sub" => "invalid_subject",
            _ => "malformed",
        },
        _ => "malformed",
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::super::emulator_token;
    use super::super::keys::test_server::{
        JwkServer, KEY_1_JWK, KEY_1_PEM, KEY_2_JWK, KEY_2_PEM, closed_url,
    };
    use super::*;

    const PROJECT: &str = "test-project";
    const COOLDOWN: Duration = Duration::from_millis(500);

    fn settings(jwks_url: &str) -> VerifierSettings {
        VerifierSettings {
            project_id: PROJECT.to_owned(),
            jwks_url: jwks_url.to_owned(),
            emulator_mode: false,
            user_type_claim: "userType".to_owned(),
            refetch_cooldown: COOLDOWN,
            fetch_timeout: Duration::from_secs(2),
        }
    }

    /// A verifier whose key endpoint serves key 1.
    async fn setup() -> (JwkServer, TokenVerifier) {
        let server = JwkServer::start(&[KEY_1_JWK]).await;
        let verifier = TokenVerifier::new(settings(&server.url)).unwrap();
        (server, verifier)
    }

    fn now() -> i64 {
        Utc::now().timestamp()
    }

    /// The claims of a valid token, signed in 100 s ago and issued 10 s ago.
    fn claims() -> Value {
        let now = now();
        json!({
            "iss": format!("https://securetoken.google.com/{PROJECT}"),
            "aud": PROJECT,
            "sub": "alice",
            "user_id": "alice",
            "iat": now - 10,
            "auth_time": now - 100,
            "exp": now + 3590,
            "firebase": {"sign_in_provider": "password", "identities": {}},
        })
    }

    fn with(field: &str, value: Value) -> Value {
        let mut claims = claims();
        claims[field] = value;
        claims
    }

    fn without(field: &str) -> Value {
        let mut claims = claims();
        claims.as_object_mut().unwrap().remove(field);
        claims
    }

    fn sign_with(claims: &Value, kid: Option<&str>, pem: &str) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = kid.map(str::to_owned);
        let key = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    fn sign(claims: &Value) -> String {
        sign_with(claims, Some("test-key-1"), KEY_1_PEM)
    }

    fn reason(result: Result<Principal, AuthError>) -> String {
        match result {
            Ok(principal) => format!("accepted {principal:?}"),
            Err(AuthError::Invalid(reason)) => reason.to_owned(),
            Err(AuthError::KeysUnavailable) => "keys_unavailable".to_owned(),
        }
    }

    fn b64(bytes: impl AsRef<[u8]>) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    #[tokio::test]
    async fn a_valid_token_yields_its_subject_and_custom_claims() {
        let (_server, verifier) = setup().await;
        let mut claims = claims();
        claims["admin"] = json!(true);
        claims["userType"] = json!("subscribed");
        let principal = verifier.verify(&sign(&claims)).await.unwrap();
        assert_eq!(
            principal,
            Principal {
                uid: "alice".to_owned(),
                user_type: UserType::Subscribed,
                admin: true,
            }
        );
    }

    #[tokio::test]
    async fn only_a_boolean_true_admin_claim_makes_an_admin_and_odd_user_types_mean_trial() {
        let (_server, verifier) = setup().await;
        for (admin, user_type) in [
            (json!("true"), json!("subscribed ")),
            (json!(1), json!(["subscribed"])),
            (json!(false), json!(null)),
        ] {
            let mut claims = claims();
            claims["admin"] = admin;
            claims["userType"] = user_type;
            let principal = verifier.verify(&sign(&claims)).await.unwrap();
            assert!(!principal.admin);
            assert_eq!(principal.user_type, UserType::Trial);
        }
        let principal = verifier.verify(&sign(&claims())).await.unwrap();
        assert!(!principal.admin);
        assert_eq!(principal.user_type, UserType::Trial);
    }

    #[tokio::test]
    async fn the_user_type_claim_name_is_configurable() {
        let server = JwkServer::start(&[KEY_1_JWK]).await;
        let verifier = TokenVerifier::new(VerifierSettings {
            user_type_claim: "plan".to_owned(),
            ..settings(&server.url)
        })
        .unwrap();
        let mut claims = claims();
        claims["plan"] = json!("subscribed");
        claims["userType"] = json!("trial");
        let principal = verifier.verify(&sign(&claims)).await.unwrap();
        assert_eq!(principal.user_type, UserType::Subscribed);
    }

    #[tokio::test]
    async fn expired_tokens_are_rejected_beyond_the_clock_skew() {
        let (_server, verifier) = setup().await;
        let expired = with("exp", json!(now() - 120));
        assert_eq!(reason(verifier.verify(&sign(&expired)).await), "expired");
        let just_expired = with("exp", json!(now() - 20));
        verifier.verify(&sign(&just_expired)).await.unwrap();
    }

    #[tokio::test]
    async fn tokens_for_another_project_are_rejected() {
        let (_server, verifier) = setup().await;
        let cases = [
            (with("aud", json!("other-project")), "wrong_audience"),
            (
                with("aud", json!([PROJECT, "other-project"])),
                "wrong_audience",
            ),
            (without("aud"), "wrong_audience"),
            (
                with("iss", json!("https://securetoken.google.com/other-project")),
                "wrong_issuer",
            ),
            (
                with("iss", json!("https://accounts.google.com")),
                "wrong_issuer",
            ),
            (without("iss"), "wrong_issuer"),
        ];
        for (claims, expected) in cases {
            assert_eq!(
                reason(verifier.verify(&sign(&claims)).await),
                expected,
                "{claims}"
            );
        }
    }

    #[tokio::test]
    async fn iat_and_auth_time_must_be_present_and_not_in_the_future() {
        let (_server, verifier) = setup().await;
        let cases = [
            (with("iat", json!(now() + 300)), "issued_in_future"),
            (without("iat"), "missing_iat"),
            (with("iat", json!("yesterday")), "missing_iat"),
            (with("auth_time", json!(now() + 300)), "auth_time_in_future"),
            (without("auth_time"), "missing_auth_time"),
            (without("exp"), "missing_exp"),
        ];
        for (claims, expected) in cases {
            assert_eq!(
                reason(verifier.verify(&sign(&claims)).await),
                expected,
                "{claims}"
            );
        }
        let within_skew = with("iat", json!(now() + 30));
        verifier.verify(&sign(&within_skew)).await.unwrap();
    }

    #[tokio::test]
    async fn the_subject_must_be_1_to_128_characters() {
        let (_server, verifier) = setup().await;
        for sub in [json!(""), json!("a".repeat(129)), json!(42)] {
            let claims = with("sub", sub);
            assert_eq!(
                reason(verifier.verify(&sign(&claims)).await),
                "invalid_subject"
            );
        }
        assert_eq!(
            reason(verifier.verify(&sign(&without("sub"))).await),
            "invalid_subject"
        );
        // 128 characters, 256 bytes.
        let multibyte = "é".repeat(128);
        let principal = verifier
            .verify(&sign(&with("sub", json!(multibyte))))
            .await
            .unwrap();
        assert_eq!(principal.uid, multibyte);
    }

    #[tokio::test]
    async fn a_token_needs_a_kid_naming_a_current_key() {
        let (_server, verifier) = setup().await;
        let no_kid = sign_with(&claims(), None, KEY_1_PEM);
        assert_eq!(reason(verifier.verify(&no_kid).await), "missing_kid");
        let unknown = sign_with(&claims(), Some("retired-key"), KEY_1_PEM);
        assert_eq!(reason(verifier.verify(&unknown).await), "unknown_kid");
    }

    #[tokio::test]
    async fn a_tampered_payload_fails_the_signature_check() {
        let (_server, verifier) = setup().await;
        let token = sign(&claims());
        let [header, _, signature] = token.split('.').collect::<Vec<_>>()[..] else {
            panic!("not a JWT");
        };
        let mut forged = claims();
        forged["admin"] = json!(true);
        let tampered = format!("{header}.{}.{signature}", b64(forged.to_string()));
        assert_eq!(reason(verifier.verify(&tampered).await), "bad_signature");
    }

    #[tokio::test]
    async fn a_token_signed_by_another_key_than_its_kid_names_is_rejected() {
        let server = JwkServer::start(&[KEY_1_JWK, KEY_2_JWK]).await;
        let verifier = TokenVerifier::new(settings(&server.url)).unwrap();
        let token = sign_with(&claims(), Some("test-key-1"), KEY_2_PEM);
        assert_eq!(reason(verifier.verify(&token).await), "bad_signature");
        let honest = sign_with(&claims(), Some("test-key-2"), KEY_2_PEM);
        verifier.verify(&honest).await.unwrap();
    }

    #[tokio::test]
    async fn an_hs256_token_keyed_with_the_public_key_is_rejected() {
        let (server, verifier) = setup().await;
        let jwk: Value = serde_json::from_str(KEY_1_JWK).unwrap();
        let modulus = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
        for secret in [modulus.as_slice(), KEY_1_JWK.as_bytes()] {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("test-key-1".to_owned());
            let token = jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(secret))
                .unwrap();
            assert_eq!(reason(verifier.verify(&token).await), "wrong_algorithm");
        }
        assert_eq!(server.fetches(), 0);
    }

    #[tokio::test]
    async fn malformed_tokens_are_rejected() {
        let (_server, verifier) = setup().await;
        let valid = sign(&claims());
        let garbage_header = format!("{}.{}", b64("not json"), valid.split_once('.').unwrap().1);
        for token in [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            &format!("{valid}.extra"),
            &garbage_header,
            &format!("{}.e30.", b64(r#"{"typ":"JWT"}"#)),
        ] {
            assert_eq!(reason(verifier.verify(token).await), "malformed", "{token}");
        }
    }

    #[tokio::test]
    async fn unsigned_tokens_are_rejected_outside_emulator_mode() {
        let (_server, verifier) = setup().await;
        let token = emulator_token(PROJECT, "alice", true, None, "userType", Utc::now());
        assert_eq!(reason(verifier.verify(&token).await), "unsigned_token");
    }

    #[tokio::test]
    async fn emulator_mode_accepts_unsigned_tokens_with_valid_claims() {
        let verifier = TokenVerifier::new(VerifierSettings {
            emulator_mode: true,
            ..settings(&closed_url().await)
        })
        .unwrap();
        let token = emulator_token(
            PROJECT,
            "alice",
            true,
            Some(UserType::Subscribed),
            "userType",
            Utc::now(),
        );
        let expected = Principal {
            uid: "alice".to_owned(),
            user_type: UserType::Subscribed,
            admin: true,
        };
        assert_eq!(verifier.verify(&token).await.unwrap(), expected);

        // Padded segments, as some hand-made tools produce them.
        let (header, payload) = token.trim_end_matches('.').split_once('.').unwrap();
        let pad = |segment: &str| format!("{segment}{}", "=".repeat((4 - segment.len() % 4) % 4));
        let padded = format!("{}.{}.", pad(header), pad(payload));
        assert_eq!(verifier.verify(&padded).await.unwrap(), expected);
    }

    #[tokio::test]
    async fn emulator_mode_still_checks_every_claim() {
        let verifier = TokenVerifier::new(VerifierSettings {
            emulator_mode: true,
            ..settings(&closed_url().await)
        })
        .unwrap();
        let token = |project: &str, uid: &str, now| {
            emulator_token(project, uid, false, None, "userType", now)
        };
        let two_hours_ago = Utc::now() - chrono::Duration::hours(2);
        let in_an_hour = Utc::now() + chrono::Duration::hours(1);
        let cases = [
            (token(PROJECT, "alice", two_hours_ago), "expired"),
            (
                token("other-project", "alice", Utc::now()),
                "wrong_audience",
            ),
            (token(PROJECT, "", Utc::now()), "invalid_subject"),
            (token(PROJECT, "alice", in_an_hour), "issued_in_future"),
        ];
        for (token, expected) in cases {
            assert_eq!(reason(verifier.verify(&token).await), expected);
        }

        let unsigned =
            |claims: &Value| format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(claims.to_string()));
        assert_eq!(
            reason(verifier.verify(&unsigned(&without("auth_time"))).await),
            "missing_auth_time"
        );
        assert_eq!(
            reason(verifier.verify(&unsigned(&without("exp"))).await),
            "missing_exp"
        );
        verifier.verify(&unsigned(&claims())).await.unwrap();
        // An unsigned token carries no signature.
        let signed_none = format!("{}c2ln", unsigned(&claims()));
        assert_eq!(reason(verifier.verify(&signed_none).await), "malformed");
    }

    #[tokio::test]
    async fn emulator_mode_still_verifies_signed_tokens() {
        let server = JwkServer::start(&[KEY_1_JWK]).await;
        let verifier = TokenVerifier::new(VerifierSettings {
            emulator_mode: true,
            ..settings(&server.url)
        })
        .unwrap();
        verifier.verify(&sign(&claims())).await.unwrap();
        let forged = sign_with(&claims(), Some("test-key-1"), KEY_2_PEM);
        assert_eq!(reason(verifier.verify(&forged).await), "bad_signature");
    }

    #[tokio::test]
    async fn keys_are_fetched_once_for_many_verifications() {
        let (server, verifier) = setup().await;
        assert_eq!(server.fetches(), 0, "new() must not fetch");
        let token = sign(&claims());
        for _ in 0..100 {
            verifier.verify(&token).await.unwrap();
        }
        assert_eq!(server.fetches(), 1);
    }

    #[tokio::test]
    async fn prefetch_warms_the_cache() {
        let (server, verifier) = setup().await;
        verifier.prefetch_keys().await.unwrap();
        assert_eq!(server.fetches(), 1);
        verifier.verify(&sign(&claims())).await.unwrap();
        assert_eq!(server.fetches(), 1);
    }

    #[tokio::test]
    async fn no_reachable_key_endpoint_and_no_cached_key_is_keys_unavailable() {
        let verifier = TokenVerifier::new(settings(&closed_url().await)).unwrap();
        assert!(matches!(
            verifier.prefetch_keys().await,
            Err(AuthError::KeysUnavailable)
        ));
        assert_eq!(
            reason(verifier.verify(&sign(&claims())).await),
            "keys_unavailable"
        );
    }

    #[tokio::test]
    async fn a_token_signed_by_a_newly_rotated_key_is_accepted_after_the_cooldown() {
        let (server, verifier) = setup().await;
        verifier.verify(&sign(&claims())).await.unwrap();
        server.serve(&[KEY_1_JWK, KEY_2_JWK]);
        let rotated = sign_with(&claims(), Some("test-key-2"), KEY_2_PEM);
        assert_eq!(reason(verifier.verify(&rotated).await), "unknown_kid");
        assert_eq!(server.fetches(), 1);
        tokio::time::sleep(COOLDOWN).await;
        verifier.verify(&rotated).await.unwrap();
        assert_eq!(server.fetches(), 2);
    }

    #[tokio::test]
    async fn a_remembered_token_is_still_checked_against_the_clock() {
        let (_server, verifier) = setup().await;
        // Accepted while its exp is within the clock skew, then no more.
        let ending = sign(&with("exp", json!(now() - CLOCK_SKEW_SECS + 2)));
        verifier.verify(&ending).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3100)).await;
        assert_eq!(reason(verifier.verify(&ending).await), "expired");
    }

    #[tokio::test]
    async fn a_remembered_token_fails_once_its_key_is_rotated_out() {
        let (server, verifier) = setup().await;
        server.set_cache_control(Some("public, max-age=0"));
        let token = sign(&claims());
        verifier.verify(&token).await.unwrap();
        verifier.verify(&token).await.unwrap();
        server.serve(&[KEY_2_JWK]);
        tokio::time::sleep(COOLDOWN).await;
        assert_eq!(reason(verifier.verify(&token).await), "unknown_kid");
    }
}
