//! The webhook sink: one signed HTTP POST per attempt, per the Standard Webhooks
//! specification (<https://www.standardwebhooks.com/>). The body is the payload's bytes
//! unchanged; `webhook-id`, `webhook-timestamp` and `webhook-signature` let the receiver check
//! that this service sent exactly this body for this event at this time.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::{StatusCode, Url, header};
use sha2::Sha256;

use super::{Delivery, DeliveryError, Sink};

const SECRET_PREFIX: &str = "whsec_";

/// The specification's bounds on a symmetric signing secret: 192 to 512 bits.
const SECRET_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// The signing key of `NOTIFY_WEBHOOK_SECRET`: `whsec_` and the key in base64. Never shown,
/// not even by `Debug`.
#[derive(Clone)]
pub struct WebhookSecret {
    mac: Hmac<Sha256>,
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(redacted)")
    }
}

/// What is wrong with a webhook's configuration. The messages never repeat the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookConfigError {
    #[error(
        "NOTIFY_WEBHOOK_SECRET must start with \"{SECRET_PREFIX}\" (a Standard Webhooks secret)"
    )]
    SecretPrefix,
    #[error("NOTIFY_WEBHOOK_SECRET is not valid base64 after \"{SECRET_PREFIX}\"")]
    SecretEncoding,
    #[error(
        "NOTIFY_WEBHOOK_SECRET decodes to {0} bytes; a Standard Webhooks secret has 24 to 64 \
         (e.g. \"{SECRET_PREFIX}\" and the base64 of 32 random bytes)"
    )]
    SecretLength(usize),
    #[error("NOTIFY_WEBHOOK_URL is not an http(s) URL: {0}")]
    Url(String),
    #[error("cannot create the webhook's HTTP client: {0}")]
    Client(String),
}

impl WebhookSecret {
    /// Reads `whsec_<base64>`, padded or not, as the reference libraries do.
    pub fn parse(raw: &str) -> Result<Self, WebhookConfigError> {
        let encoded = raw
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(WebhookConfigError::SecretPrefix)?;
        let key = STANDARD_NO_PAD
            .decode(encoded.trim_end_matches('='))
            .map_err(|_| WebhookConfigError::SecretEncoding)?;
        if !SECRET_BYTES.contains(&key.len()) {
            return Err(WebhookConfigError::SecretLength(key.len()));
        }
        let mac =
            Hmac::new_from_slice(&key).map_err(|_| WebhookConfigError::SecretLength(key.len()))?;
        Ok(Self { mac })
    }

    /// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{payload}">`.
    pub fn signature(&self, event_id: &str, timestamp: i64, payload: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(format!("{event_id}.{timestamp}.{payload}").as_bytes());
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// Posts each event to one URL, signed with one secret.
pub struct WebhookSink {
    url: Url,
    secret: WebhookSecret,
    client: reqwest::Client,
}

impl fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSink")
            .field("host", &self.url.host_str())
            .finish_non_exhaustive()
    }
}

impl WebhookSink {
    /// A sink whose every attempt ends within `timeout`. Redirects are not followed: the
    /// specification counts a 3xx as a failure, to be fixed by updating the URL.
    pub fn new(
        url: &str,
        secret: WebhookSecret,
        timeout: Duration,
    ) -> Result<Self, WebhookConfigError> {
        let url = Url::parse(url)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && url.has_host())
            .ok_or_else(|| WebhookConfigError::Url(redacted_url(url)))?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| WebhookConfigError::Client(error.to_string()))?;
        Ok(Self {
            url,
            secret,
            client,
        })
    }
}

/// A URL for messages: its path and query may hold a token, so only scheme and host are told.
fn redacted_url(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(url) => format!("{}://{}/…", url.scheme(), url.host_str().unwrap_or("")),
        Err(error) => format!("unparsable ({error})"),
    }
}

#[async_trait]
impl Sink for WebhookSink {
    fn name(&self) -> &'static str {
        "webhook"
    }

    async fn deliver(&self, delivery: &Delivery<'_>) -> Result<(), DeliveryError> {
        // The id is one of the signed content's full-stop delimited parts.
        if delivery.event_id.is_empty() || delivery.event_id.contains('.') {
            return Err(DeliveryError::Permanent(format!(
                "event id {:?} cannot be signed: it must be non-empty and without '.'",
                delivery.event_id
            )));
        }
        let timestamp = delivery.attempted_at.timestamp();
        let signature = self
            .secret
            .signature(delivery.event_id, timestamp, delivery.payload);
        let response = self
            .client
            .post(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header("webhook-id", delivery.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(delivery.payload.to_owned())
            .send()
            .await
            .map_err(|error| {
                let error = error.without_url();
                if error.is_builder() {
                    DeliveryError::Permanent(format!("the request cannot be built: {error}"))
                } else if error.is_timeout() {
                    DeliveryError::Retryable(format!("no answer in time: {error}"))
                } else {
                    DeliveryError::Retryable(format!("the receiver cannot be reached: {error}"))
                }
            })?;
        classify(response.status())
    }
}

/// A 2xx delivered; 410 Gone means the receiver wants no more events; any other answer may
/// change (a rotating secret, a deploy, a rate limit), so it is worth another attempt.
fn classify(status: StatusCode) -> Result<(), DeliveryError> {
    if status.is_success() {
        Ok(())
    } else if status == StatusCode::GONE {
        Err(DeliveryError::Permanent(format!(
            "the receiver answered {status}: it takes no more events"
        )))
    } else {
        Err(DeliveryError::Retryable(format!(
            "the receiver answered {status}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks reference library's own test secret.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn signs_as_the_reference_library_does() {
        let secret = WebhookSecret::parse(SECRET).unwrap();
        let signature = secret.signature(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            r#"{"test": 2432232314}"#,
        );
        // Computed by the reference Python library, standardwebhooks 1.3.0:
        // Webhook(SECRET).sign("msg_p5jXN8AQM9LWM0D4loKWxJek",
        //     datetime.fromtimestamp(1614265330, timezone.utc), '{"test": 2432232314}')
        assert_eq!(signature, REFERENCE_SIGNATURE);
    }

    const REFERENCE_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn a_secret_must_be_a_whsec_of_24_to_64_bytes() {
        assert_eq!(
            WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err(),
            WebhookConfigError::SecretPrefix
        );
        assert_eq!(
            WebhookSecret::parse("whsec_not base64!").unwrap_err(),
            WebhookConfigError::SecretEncoding
        );
        assert_eq!(
            WebhookSecret::parse("whsec_c2hvcnQ=").unwrap_err(),
            WebhookConfigError::SecretLength(5)
        );
        let too_long = format!("whsec_{}", STANDARD.encode([7u8; 65]));
        assert_eq!(
            WebhookSecret::parse(&too_long).unwrap_err(),
            WebhookConfigError::SecretLength(65)
        );
        let unpadded = format!("whsec_{}", STANDARD.encode([7u8; 25]).trim_end_matches('='));
        assert!(WebhookSecret::parse(&unpadded).is_ok());
    }

    #[test]
    fn neither_debug_nor_errors_show_the_secret() {
        let secret = WebhookSecret::parse(SECRET).unwrap();
        assert!(!format!("{secret:?}").contains("MfKQ9r8"));
        let wrong = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLa!!";
        let message = WebhookSecret::parse(wrong).unwrap_err().to_string();
        assert!(!message.contains("MfKQ9r8"), "{message}");
    }

    #[test]
    fn only_http_urls_are_accepted_and_their_path_is_not_repeated() {
        let secret = || WebhookSecret::parse(SECRET).unwrap();
        let timeout = Duration::from_secs(1);
        let error =
            WebhookSink::new("ftp://example.com/hook/s3cr3t", secret(), timeout).unwrap_err();
        assert!(matches!(error, WebhookConfigError::Url(_)));
        assert!(!error.to_string().contains("s3cr3t"), "{error}");
        assert!(WebhookSink::new("not a url", secret(), timeout).is_err());
        assert!(WebhookSink::new("https://example.com/hook", secret(), timeout).is_ok());
    }

    #[test]
    fn a_2xx_delivers_410_stops_and_every_other_answer_is_retried() {
        assert!(classify(StatusCode::NO_CONTENT).is_ok());
        assert!(matches!(
            classify(StatusCode::GONE),
            Err(DeliveryError::Permanent(_))
        ));
        for status in [
            StatusCode::MOVED_PERMANENTLY,
            StatusCode::BAD_REQUEST,
            StatusCode::NOT_FOUND,
            StatusCode::REQUEST_TIMEOUT,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::INTERNAL_SERVER_ERROR,
        ] {
            assert!(
                matches!(classify(status), Err(DeliveryError::Retryable(_))),
                "{status}"
            );
        }
    }
}
