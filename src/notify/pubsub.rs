//! The Pub/Sub sink: each event published to one topic as one message, its payload as the data
//! and its id and type as the attributes `eventId` and `eventType`, through Pub/Sub's gRPC API.
//! With `PUBSUB_EMULATOR_HOST` set, it speaks plain HTTP/2 to the emulator, unauthenticated.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use gcloud_sdk::google::pubsub::v1::publisher_client::PublisherClient;
use gcloud_sdk::google::pubsub::v1::{PublishRequest, PubsubMessage};
use gcloud_sdk::google_cloud_auth::credentials::{
    CacheableResource, Credentials, CredentialsProvider, EntityTag,
};
use gcloud_sdk::google_cloud_auth::errors::CredentialsError;
use gcloud_sdk::tonic::{self, Code, Status};
use gcloud_sdk::{GoogleApi, GoogleAuthMiddleware, HeaderMap};

use super::{Delivery, DeliveryError, Sink};

const PUBSUB_API_URL: &str = "https://pubsub.googleapis.com";

/// A topic's full name, `projects/{project}/topics/{topic}`, checked against Pub/Sub's naming
/// rules so that a typo stops the start instead of failing every delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicName(String);

/// What is wrong with the Pub/Sub sink's configuration.
#[derive(Debug, thiserror::Error)]
pub enum PubSubConfigError {
    #[error(
        "NOTIFY_PUBSUB_TOPIC {0:?} is not a topic name like projects/my-project/topics/my-topic: \
         {1}"
    )]
    Topic(String, &'static str),
    #[error("cannot create the Pub/Sub client: {0}")]
    Client(String),
}

impl TopicName {
    pub fn parse(raw: &str) -> Result<Self, PubSubConfigError> {
        let invalid = |why| PubSubConfigError::Topic(raw.to_owned(), why);
        let mut parts = raw.split('/');
        let (Some("projects"), Some(project), Some("topics"), Some(topic), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(invalid("expected four parts separated by '/'"));
        };
        // Project ids are lowercase letters, digits and hyphens; older ones may carry a
        // domain (`example.com:my-project`).
        let project_char =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.:".contains(c);
        if project.is_empty() || !project.chars().all(project_char) {
            return Err(invalid(
                "the project id has characters Pub/Sub does not allow",
            ));
        }
        // Topic ids: 3 to 255 characters, starting with a letter, not with "goog".
        let topic_char = |c: char| c.is_ascii_alphanumeric() || "-_.~+%".contains(c);
        if !(3..=255).contains(&topic.len())
            || !topic.starts_with(|c: char| c.is_ascii_alphabetic())
            || !topic.chars().all(topic_char)
            || topic.to_ascii_lowercase().starts_with("goog")
        {
            return Err(invalid(
                "a topic id has 3 to 255 letters, digits or -_.~+%, starts with a letter and \
                 not with \"goog\"",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Publishes each event to one topic.
pub struct PubSubSink {
    topic: TopicName,
    publisher: GoogleApi<PublisherClient<GoogleAuthMiddleware>>,
    timeout: Duration,
}

impl fmt::Debug for PubSubSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubSubSink")
            .field("topic", &self.topic)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PubSubSink {
    /// Connects now, so that an unreachable Pub/Sub or missing credentials stop the start with
    /// a message; every attempt then ends within `timeout`. `emulator_host` is the emulator's
    /// `host:port`; `None` means the real service with Application Default Credentials.
    pub async fn connect(
        topic: TopicName,
        emulator_host: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, PubSubConfigError> {
        let publisher = match emulator_host {
            Some(host) => {
                GoogleApi::from_function_with_credentials(
                    PublisherClient::new,
                    format!("http://{host}"),
                    None,
                    Credentials::from(EmulatorCredentials::new()),
                )
                .await
            }
            None => GoogleApi::from_function(PublisherClient::new, PUBSUB_API_URL, None).await,
        }
        .map_err(|error| PubSubConfigError::Client(error.to_string()))?;
        Ok(Self {
            topic,
            publisher,
            timeout,
        })
    }
}

#[async_trait]
impl Sink for PubSubSink {
    fn name(&self) -> &'static str {
        "pubsub"
    }

    async fn deliver(&self, delivery: &Delivery<'_>) -> Result<(), DeliveryError> {
        let message = PubsubMessage {
            data: delivery.payload.as_bytes().to_vec(),
            attributes: HashMap::from([
                ("eventId".to_owned(), delivery.event_id.to_owned()),
                ("eventType".to_owned(), delivery.event_type.to_owned()),
            ]),
            ..Default::default()
        };
        let mut request = tonic::Request::new(PublishRequest {
            topic: self.topic.as_str().to_owned(),
            messages: vec![message],
        });
        request.set_timeout(self.timeout);
        // The deadline travels to the server; the local bound also covers a connection that
        // hangs before the call reaches it.
        let mut publisher = self.publisher.get();
        match tokio::time::timeout(self.timeout, publisher.publish(request)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(classify(&status)),
            Err(_) => Err(DeliveryError::Retryable(format!(
                "Pub/Sub did not answer within {:?}",
                self.timeout
            ))),
        }
    }
}

/// A topic that does not exist or a request Pub/Sub calls malformed fails the same way every
/// time; anything else (outage, quota, a permission an admin can still grant) may pass later.
fn classify(status: &Status) -> DeliveryError {
    let message = format!("Pub/Sub {:?}: {}", status.code(), status.message());
    match status.code() {
        Code::NotFound | Code::InvalidArgument => DeliveryError::Permanent(message),
        _ => DeliveryError::Retryable(message),
    }
}

/// The emulator checks no credentials, and none should be looked up for it: no headers.
#[derive(Debug)]
struct EmulatorCredentials {
    entity_tag: EntityTag,
}

impl EmulatorCredentials {
    fn new() -> Self {
        Self {
            entity_tag: EntityTag::new(),
        }
    }
}

impl CredentialsProvider for EmulatorCredentials {
    async fn headers(
        &self,
        extensions: hyper::http::Extensions,
    ) -> Result<CacheableResource<HeaderMap>, CredentialsError> {
        if extensions.get::<EntityTag>() == Some(&self.entity_tag) {
            return Ok(CacheableResource::NotModified);
        }
        Ok(CacheableResource::New {
            entity_tag: self.entity_tag.clone(),
            data: HeaderMap::new(),
        })
    }

    async fn universe_domain(&self) -> Option<String> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_pubsubs_rules() {
        for good in [
            "projects/my-project/topics/token-limits",
            "projects/demo-1/topics/a.b_c~d+e%20",
            "projects/example.com:my-project/topics/Alerts",
        ] {
            assert!(TopicName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "my-topic",
            "projects/p/topics",
            "projects/p/topics/",
            "projects/p/subscriptions/abc",
            "projects/p/topics/abc/extra",
            "projects//topics/abc",
            "projects/My_Project/topics/abc",
            "projects/p/topics/ab",
            "projects/p/topics/1abc",
            "projects/p/topics/google-abc",
            "projects/p/topics/has space",
        ] {
            assert!(
                matches!(TopicName::parse(bad), Err(PubSubConfigError::Topic(..))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_missing_topic_or_bad_request_is_permanent_and_the_rest_retried() {
        for code in [Code::NotFound, Code::InvalidArgument] {
            assert!(matches!(
                classify(&Status::new(code, "x")),
                DeliveryError::Permanent(_)
            ));
        }
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::Internal,
        ] {
            assert!(matches!(
                classify(&Status::new(code, "x")),
                DeliveryError::Retryable(_)
            ));
        }
    }
}
