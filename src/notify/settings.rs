//! The notification settings, read from flags or the environment, and the sinks they name.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::Sink;
use super::pubsub::{PubSubConfigError, PubSubSink, TopicName};
use super::webhook::{WebhookConfigError, WebhookSecret, WebhookSink};
use crate::usage::Share;

#[derive(Clone, Args)]
pub struct NotifyArgs {
    /// Where events are posted, signed per Standard Webhooks; needs NOTIFY_WEBHOOK_SECRET.
    #[arg(long, env = "NOTIFY_WEBHOOK_URL")]
    pub notify_webhook_url: Option<String>,

    /// The webhook's signing secret: `whsec_` and 24 to 64 bytes in base64.
    #[arg(long, env = "NOTIFY_WEBHOOK_SECRET", hide_env_values = true)]
    pub notify_webhook_secret: Option<String>,

    /// The Pub/Sub topic events are published to: projects/PROJECT/topics/TOPIC.
    #[arg(long, env = "NOTIFY_PUBSUB_TOPIC")]
    pub notify_pubsub_topic: Option<String>,

    /// `host:port` of a Pub/Sub emulator: publish there, unauthenticated.
    #[arg(long, env = "PUBSUB_EMULATOR_HOST")]
    pub pubsub_emulator_host: Option<String>,

    /// The shares of a user's limit whose crossing is told, comma-separated, each in (0, 1].
    #[arg(
        long,
        env = "NOTIFY_THRESHOLDS",
        value_delimiter = ',',
        default_value = "0.8,1"
    )]
    pub notify_thresholds: Vec<Share>,

    /// How long an event is retried before it is kept as failed ("24h", "90m", "30s").
    #[arg(long, env = "NOTIFY_RETRY_FOR", default_value = "24h", value_parser = parse_positive_duration)]
    pub notify_retry_for: Duration,

    /// The longest one delivery attempt may take (Standard Webhooks recommends 15 to 30 s).
    #[arg(long, env = "NOTIFY_ATTEMPT_TIMEOUT", default_value = "15s", value_parser = parse_positive_duration)]
    pub notify_attempt_timeout: Duration,
}

impl fmt::Debug for NotifyArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotifyArgs")
            .field("notify_webhook_url", &self.notify_webhook_url.is_some())
            .field(
                "notify_webhook_secret",
                &self.notify_webhook_secret.as_ref().map(|_| "redacted"),
            )
            .field("notify_pubsub_topic", &self.notify_pubsub_topic)
            .field("pubsub_emulator_host", &self.pubsub_emulator_host)
            .field("notify_thresholds", &self.notify_thresholds)
            .field("notify_retry_for", &self.notify_retry_for)
            .field("notify_attempt_timeout", &self.notify_attempt_timeout)
            .finish()
    }
}

/// Why the configured sinks cannot be made; each stops the start.
#[derive(Debug, thiserror::Error)]
pub enum NotifyConfigError {
    #[error("NOTIFY_WEBHOOK_URL and NOTIFY_WEBHOOK_SECRET go together: {0} is set alone")]
    HalfAWebhook(&'static str),
    #[error(transparent)]
    Webhook(#[from] WebhookConfigError),
    #[error(transparent)]
    PubSub(#[from] PubSubConfigError),
}

impl NotifyArgs {
    /// The configured sinks, none when nothing is configured. The Pub/Sub sink connects now.
    pub async fn sinks(&self) -> Result<Vec<Arc<dyn Sink>>, NotifyConfigError> {
        let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
        match (
            non_empty(&self.notify_webhook_url),
            non_empty(&self.notify_webhook_secret),
        ) {
            (Some(url), Some(secret)) => {
                let secret = WebhookSecret::parse(secret)?;
                let sink = WebhookSink::new(url, secret, self.notify_attempt_timeout)?;
                sinks.push(Arc::new(sink));
            }
            (Some(_), None) => return Err(NotifyConfigError::HalfAWebhook("NOTIFY_WEBHOOK_URL")),
            (None, Some(_)) => {
                return Err(NotifyConfigError::HalfAWebhook("NOTIFY_WEBHOOK_SECRET"));
            }
            (None, None) => {}
        }
        if let Some(topic) = non_empty(&self.notify_pubsub_topic) {
            let topic = TopicName::parse(topic)?;
            let emulator = non_empty(&self.pubsub_emulator_host);
            let sink = PubSubSink::connect(topic, emulator, self.notify_attempt_timeout).await?;
            sinks.push(Arc::new(sink));
        }
        Ok(sinks)
    }
}

/// A variable set to "" in a deployment means unset.
fn non_empty(value: &Option<String>) -> Option<&str> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

fn parse_positive_duration(raw: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(raw)
        .map_err(|error| format!("{error} (write e.g. \"24h\", \"90m\" or \"30s\")"))?;
    if duration.is_zero() {
        return Err("must be longer than zero".to_owned());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        notify: NotifyArgs,
    }

    fn parse(args: &[&str]) -> Result<NotifyArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("token-limits").chain(args.iter().copied()))
            .map(|cli| cli.notify)
    }

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn defaults_are_80_and_100_percent_retried_for_a_day() {
        let args = parse(&[]).unwrap();
        let expected: Vec<Share> = vec!["0.8".parse().unwrap(), "1".parse().unwrap()];
        assert_eq!(args.notify_thresholds, expected);
        assert_eq!(args.notify_retry_for, Duration::from_secs(24 * 3600));
        assert_eq!(args.notify_attempt_timeout, Duration::from_secs(15));
    }

    #[test]
    fn thresholds_and_durations_are_checked() {
        let args = parse(&[
            "--notify-thresholds",
            "0.5,0.9,1",
            "--notify-retry-for",
            "90m",
        ])
        .unwrap();
        assert_eq!(args.notify_thresholds.len(), 3);
        assert_eq!(args.notify_retry_for, Duration::from_secs(90 * 60));
        assert_eq!(
            parse(&["--notify-retry-for", "30s"])
                .unwrap()
                .notify_retry_for,
            Duration::from_secs(30)
        );
        for bad in [
            ["--notify-thresholds", "0.8,1.5"],
            ["--notify-thresholds", "0"],
            ["--notify-thresholds", "80%"],
            ["--notify-retry-for", "0s"],
            ["--notify-retry-for", "a day"],
            ["--notify-attempt-timeout", "0s"],
        ] {
            assert!(parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn no_sink_is_configured_by_default() {
        assert!(parse(&[]).unwrap().sinks().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_webhook_needs_both_its_url_and_its_secret() {
        let url_only = parse(&["--notify-webhook-url", "https://example.com/hook"]).unwrap();
        assert!(matches!(
            url_only.sinks().await,
            Err(NotifyConfigError::HalfAWebhook("NOTIFY_WEBHOOK_URL"))
        ));
        let secret_only = parse(&["--notify-webhook-secret", SECRET]).unwrap();
        assert!(matches!(
            secret_only.sinks().await,
            Err(NotifyConfigError::HalfAWebhook("NOTIFY_WEBHOOK_SECRET"))
        ));
        let both = parse(&[
            "--notify-webhook-url",
            "https://example.com/hook",
            "--notify-webhook-secret",
            SECRET,
        ])
        .unwrap();
        let sinks = both.sinks().await.unwrap();
        assert_eq!(
            sinks.iter().map(|sink| sink.name()).collect::<Vec<_>>(),
            ["webhook"]
        );
    }

    #[tokio::test]
    async fn a_malformed_secret_or_topic_stops_the_start() {
        let bad_secret = parse(&[
            "--notify-webhook-url",
            "https://example.com/hook",
            "--notify-webhook-secret",
            "whsec_c2hvcnQ=",
        ])
        .unwrap();
        assert!(matches!(
            bad_secret.sinks().await,
            Err(NotifyConfigError::Webhook(
                WebhookConfigError::SecretLength(5)
            ))
        ));
        let bad_topic = parse(&["--notify-pubsub-topic", "my-topic"]).unwrap();
        assert!(matches!(
            bad_topic.sinks().await,
            Err(NotifyConfigError::PubSub(PubSubConfigError::Topic(..)))
        ));
    }

    #[test]
    fn debug_hides_the_secret() {
        let args = parse(&["--notify-webhook-secret", SECRET]).unwrap();
        assert!(!format!("{args:?}").contains("MfKQ9r8"));
    }
}
