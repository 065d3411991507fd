//! The command line and the configuration it carries, parsed and validated once at start-up.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::http::HeaderValue;
use chrono_tz::Tz;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::lifecycle::{ArchiveArgs, CleanupArgs, ExportArgs, ImportArgs, RebuildArgs, VerifyArgs};
use crate::notify::NotifyArgs;
use crate::server::ConnectionSettings;
use crate::store::{StoreKind, StoreSettings, parse_project_id};
use crate::usage::{
    Enforcement, Limits, OnStoreUnavailable, Policy, ReservationRules, Share, UserId, UserType,
};

/// Google's JWK set for Firebase ID tokens.
pub const GOOGLE_JWKS_URL: &str =
    "https://www.googleapis.com/service_accounts/v1/jwk/securetoken@system.gserviceaccount.com";

/// Enforces and tracks per-user daily LLM token limits.
#[derive(Debug, Parser)]
#[command(name = "token-limits", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// With no subcommand, the service runs as with `serve`.
    #[command(flatten)]
    pub serve: Config,
}

impl Cli {
    /// Parses `args` and the environment. An empty variable counts as unset, as firebase-admin
    /// treats it: a `FIREBASE_AUTH_EMULATOR_HOST=` left in a deployment must not switch
    /// anything on.
    pub fn try_parse_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = ignore_empty_env(Self::command()).try_get_matches_from(args)?;
        Self::from_arg_matches(&matches)
    }
}

fn ignore_empty_env(command: clap::Command) -> clap::Command {
    command
        .mut_args(|arg| {
            let empty = arg
                .get_env()
                .and_then(std::env::var_os)
                .is_some_and(|value| value.is_empty());
            if empty { arg.env(None::<&str>) } else { arg }
        })
        .mut_subcommands(ignore_empty_env)
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (the default).
    Serve(Box<Config>),
    /// Print an unsigned emulator ID token for the configured `demo-` project, for local use.
    DevToken(DevTokenArgs),
    #[command(flatten)]
    Lifecycle(LifecycleCommand),
}

/// The lifecycle commands: each takes the store's settings and its own arguments.
#[derive(Debug, Subcommand)]
pub enum LifecycleCommand {
    /// Check every document: schema, ids, month aggregates, days against their months.
    Verify {
        #[command(flatten)]
        store: StoreSettings,
        #[command(flatten)]
        args: VerifyArgs,
    },
    /// Recompute month documents from the day documents, showing the differences.
    RebuildHistory {
        #[command(flatten)]
        store: StoreSettings,
        #[command(flatten)]
        args: RebuildArgs,
    },
    /// Delete day documents past their retention once their months hold them, and expired
    /// idempotency records.
    Cleanup {
        #[command(flatten)]
        store: StoreSettings,
        #[command(flatten)]
        args: CleanupArgs,
    },
    /// Move month documents past their retention to gzip NDJSON files with a manifest, in a
    /// directory or a Cloud Storage bucket, then delete them.
    Archive {
        #[command(flatten)]
        store: StoreSettings,
        #[command(flatten)]
        args: ArchiveArgs,
    },
    /// Write both collections to an NDJSON file.
    Export {
        #[command(flatten)]
        store: StoreSettings,
        #[command(flatten)]
        args: ExportArgs,
    },
    /// Read an NDJSON file into the store: every line checked first, none overwriting newer
    /// data.
    Import {
        #[command(flatten)]
        store: StoreSettings,
        #[command(flatten)]
        args: ImportArgs,
    },
}

impl LifecycleCommand {
    pub fn store(&self) -> &StoreSettings {
        match self {
            Self::Verify { store, .. }
            | Self::RebuildHistory { store, .. }
            | Self::Cleanup { store, .. }
            | Self::Archive { store, .. }
            | Self::Export { store, .. }
            | Self::Import { store, .. } => store,
        }
    }
}

/// Everything `serve` needs; each flag also reads the environment variable it names.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Port to listen on (Cloud Run sets it).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,

    /// Address to listen on [default: 0.0.0.0, or 127.0.0.1 in emulator mode].
    #[arg(long, env = "HOST")]
    pub host: Option<IpAddr>,

    #[command(flatten)]
    pub store: StoreSettings,

    /// Where the token signing keys (a JWK set) come from.
    #[arg(long, env = "FIREBASE_JWKS_URL", default_value = GOOGLE_JWKS_URL, value_parser = parse_http_url)]
    pub firebase_jwks_url: String,

    /// Set when the Firebase Auth emulator issues the tokens: they are accepted unsigned.
    #[arg(long, env = "FIREBASE_AUTH_EMULATOR_HOST")]
    pub firebase_auth_emulator_host: Option<String>,

    #[command(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    pub notify: NotifyArgs,

    /// The IANA time zone in which a day starts and ends.
    #[arg(long, env = "RESET_TIMEZONE", default_value = "UTC")]
    pub reset_timezone: Tz,

    /// The most tokens one `POST /usage` may ask for.
    #[arg(long, env = "MAX_TOKENS_PER_REQUEST", default_value_t = 1_000_000, value_parser = clap::value_parser!(i64).range(1..))]
    pub max_tokens_per_request: i64,

    /// Seconds a reservation holds its tokens when the client does not say.
    #[arg(long, env = "RESERVATION_DEFAULT_TTL_SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub reservation_default_ttl_secs: u64,

    /// The longest `ttlSeconds` a client may ask for: also the longest a leaked hold can keep
    /// a user's tokens.
    #[arg(long, env = "RESERVATION_MAX_TTL_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub reservation_max_ttl_secs: u64,

    /// Seconds after a reservation expires during which its commit is still recorded (its
    /// hold no longer counts).
    #[arg(long, env = "RESERVATION_COMMIT_GRACE_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub reservation_commit_grace_secs: u64,

    /// Comma-separated origins allowed to call from a browser (the admin dashboard).
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub cors_allowed_origins: Vec<HeaderValue>,

    /// Log lines as `json` or `text`; `RUST_LOG` filters them.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// The custom claim that names the caller's user type.
    #[arg(long, env = "USER_TYPE_CLAIM", default_value = "userType")]
    pub user_type_claim: String,

    /// Seconds a user's plan, looked up when an admin acts for them, is remembered.
    #[arg(long, env = "USER_TYPE_CACHE_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub user_type_cache_secs: u64,

    /// Seconds a request may take, from its arrival to its answer. Writes may begin in the
    /// first three quarters; the last quarter is for their outcome to arrive.
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_timeout_secs: u64,

    /// Seconds a client has to send a request head, from the moment the connection is ready
    /// for one (so also the longest a kept-alive connection may stay idle).
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_read_timeout_secs: u64,

    /// Connections open at once; more clients wait until one closes.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,

    /// Seconds the requests in flight may take to finish after SIGTERM or SIGINT (Cloud Run
    /// kills the instance 10 s after SIGTERM).
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub shutdown_grace_secs: u64,

    /// MiB of day and month documents each instance keeps, so that a user's next record
    /// commits without reading first (1 call to Firestore instead of 2); 0 reads every time.
    #[arg(long, env = "FIRESTORE_CACHE_MIB", default_value_t = 32, value_parser = clap::value_parser!(u64).range(0..=4096))]
    pub firestore_cache_mib: u64,

    /// When set, `GET /metrics` requires `Authorization: Bearer <this>`. Outside emulator mode
    /// the service refuses to start without it unless METRICS_PUBLIC is true.
    #[arg(long, env = "METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// `true` serves `GET /metrics` to anyone outside emulator mode, without METRICS_TOKEN.
    #[arg(long, env = "METRICS_PUBLIC", action = clap::ArgAction::Set, default_value_t = false)]
    pub metrics_public: bool,

    /// Serves `GET /metrics` on this address of its own instead of the service's port, for a
    /// scraper beside the service (Cloud Run's Prometheus sidecar: `127.0.0.1:9464`). Without
    /// METRICS_TOKEN it must be a loopback address.
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    #[command(flatten)]
    pub dashboard: DashboardArgs,

    /// The least time between two key fetches caused by an unknown key id.
    #[arg(skip = Duration::from_secs(60))]
    pub jwks_refetch_cooldown: Duration,

    /// `host:port` of a Firebase Auth emulator that user lookups go to while signed tokens are
    /// still required: what tests need, and no setting of its own (with
    /// `FIREBASE_AUTH_EMULATOR_HOST` set, lookups go there anyway).
    #[arg(skip)]
    pub auth_emulator_for_lookups: Option<String>,

    /// Seconds a usage event stream lasts before it ends and the client reconnects: under the
    /// proxy's request timeout (Cloud Run's is at most 3600 s).
    #[arg(long, env = "STREAM_MAX_SECS", default_value_t = 3300, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub stream_max_secs: u64,

    /// Usage event streams open at once on an instance; more are refused 503.
    #[arg(long, env = "MAX_STREAMS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub max_streams: u64,

    /// Seconds between the comment lines that keep an idle event stream open through proxies.
    #[arg(long, env = "STREAM_HEARTBEAT_SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub stream_heartbeat_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Args)]
pub struct DevTokenArgs {
    /// The uid the token names.
    #[arg(long)]
    pub uid: String,
    /// Adds the admin claim.
    #[arg(long)]
    pub admin: bool,
    /// Adds the user type claim.
    #[arg(long, value_parser = parse_user_type)]
    pub user_type: Option<UserType>,
    /// The project the token is for; it must be a `demo-` project.
    #[arg(long, env = "FIREBASE_PROJECT_ID", default_value = "demo-token-limits", value_parser = parse_project_id)]
    pub firebase_project_id: String,
    /// Set when the Firebase Auth emulator is in use; then any project will do.
    #[arg(long, env = "FIREBASE_AUTH_EMULATOR_HOST")]
    pub firebase_auth_emulator_host: Option<String>,
    #[arg(long, env = "USER_TYPE_CLAIM", default_value = "userType")]
    pub user_type_claim: String,
}

impl Config {
    /// Loopback in emulator mode unless `HOST` says otherwise, so that a forgotten variable on
    /// a shared network does not hand out admin tokens to anyone who can reach the port.
    pub fn listen_host(&self) -> IpAddr {
        self.host.unwrap_or(if self.emulator_mode() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        })
    }

    pub fn connections(&self) -> ConnectionSettings {
        ConnectionSettings {
            header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
        }
    }

    pub fn user_type_cache(&self) -> Duration {
        Duration::from_secs(self.user_type_cache_secs)
    }

    /// Unsigned emulator tokens are accepted: Firebase's offline `demo-` projects, or an
    /// Auth emulator in use.
    pub fn emulator_mode(&self) -> bool {
        emulator_mode(
            &self.store.firebase_project_id,
            &self.firebase_auth_emulator_host,
        )
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub fn firestore_project(&self) -> &str {
        self.store.firestore_project()
    }

    pub fn firestore_cache_bytes(&self) -> u64 {
        self.firestore_cache_mib << 20
    }

    pub fn reservation_rules(&self) -> ReservationRules {
        let seconds =
            |secs: u64| chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX));
        ReservationRules {
            default_ttl: seconds(self.reservation_default_ttl_secs),
            max_ttl: seconds(self.reservation_max_ttl_secs),
            commit_grace: seconds(self.reservation_commit_grace_secs),
        }
    }

    /// Checks what no single flag can: the combinations.
    pub fn validate(&self) -> Result<(), String> {
        let production_firestore =
            self.store.kind == StoreKind::Firestore && self.store.firestore_emulator_host.is_none();
        if self.emulator_mode() && production_firestore {
            return Err(format!(
                "FIREBASE_PROJECT_ID={} (or FIREBASE_AUTH_EMULATOR_HOST) accepts unsigned emulator \
                 tokens, which must never write to a production Firestore: set \
                 FIRESTORE_EMULATOR_HOST or a real FIREBASE_PROJECT_ID",
                self.store.firebase_project_id
            ));
        }
        if self.reservation_default_ttl_secs > self.reservation_max_ttl_secs {
            return Err(format!(
                "RESERVATION_DEFAULT_TTL_SECS ({}) cannot exceed RESERVATION_MAX_TTL_SECS ({})",
                self.reservation_default_ttl_secs, self.reservation_max_ttl_secs
            ));
        }
        self.validate_metrics_access()
    }

    /// `/metrics` hands out business figures: in production it is guarded by a token, or
    /// served on a loopback address of its own, unless the operator says it is meant to be open.
    fn validate_metrics_access(&self) -> Result<(), String> {
        if let Some(address) = self.metrics_addr {
            return match (self.metrics_public, self.metrics_token.is_some()) {
                (true, _) => Err(
                    "METRICS_PUBLIC=true opens GET /metrics on the service's port and METRICS_ADDR \
                     moves it to an address of its own: set only one of them"
                        .to_owned(),
                ),
                (false, false) if !address.ip().is_loopback() && !self.emulator_mode() => {
                    Err(format!(
                        "METRICS_ADDR={address} would serve GET /metrics to anyone who reaches \
                         it: use a loopback address (127.0.0.1:PORT) or set METRICS_TOKEN"
                    ))
                }
                _ => Ok(()),
            };
        }
        match (self.metrics_token.is_some(), self.metrics_public) {
            (true, true) => Err(
                "METRICS_TOKEN guards GET /metrics and METRICS_PUBLIC=true opens it to anyone: \
                 set only one of them"
                    .to_owned(),
            ),
            (false, false) if !self.emulator_mode() => Err(
                "GET /metrics would be open to anyone: set METRICS_ADDR=127.0.0.1:PORT for a \
                 scraper beside the service, METRICS_TOKEN to the bearer token scrapers send, \
                 or METRICS_PUBLIC=true if it is meant to be open"
                    .to_owned(),
            ),
            _ => Ok(()),
        }
    }
}

impl DevTokenArgs {
    pub fn emulator_mode(&self) -> bool {
        emulator_mode(&self.firebase_project_id, &self.firebase_auth_emulator_host)
    }
}

fn emulator_mode(project_id: &str, auth_emulator_host: &Option<String>) -> bool {
    project_id.starts_with("demo-") || auth_emulator_host.is_some()
}

fn parse_user_type(raw: &str) -> Result<UserType, String> {
    UserType::parse(raw).ok_or_else(|| format!("a user type is one of {}", UserType::names()))
}

fn parse_http_url(raw: &str) -> Result<String, String> {
    let parsed: axum::http::Uri = raw.parse().map_err(|e| format!("not a URL: {e}"))?;
    match (parsed.scheme_str(), parsed.host()) {
        (Some("http" | "https"), Some(_)) => Ok(raw.to_owned()),
        _ => Err("expected an http:// or https:// URL".to_owned()),
    }
}

/// A browser origin: `scheme://host[:port]`, nothing after it.
fn parse_origin(raw: &str) -> Result<HeaderValue, String> {
    let raw = raw.trim();
    let parsed: axum::http::Uri = raw.parse().map_err(|e| format!("not an origin: {e}"))?;
    let bare = parsed
        .path_and_query()
        .is_none_or(|p| p.as_str().is_empty() || p == "/")
        && !raw.ends_with('/');
    match (parsed.scheme_str(), parsed.host()) {
        (Some("http" | "https"), Some(_)) if bare => {
            HeaderValue::from_str(raw).map_err(|e| e.to_string())
        }
        _ => Err("an origin is scheme://host[:port], e.g. https://admin.example.com".to_owned()),
    }
}

/// The daily limit of each user type, each one a flag and an environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct LimitArgs {
    /// Daily token limit of `trial` users.
    #[arg(id = "daily_limit_trial", long = "daily-limit-trial", env = "DAILY_LIMIT_TRIAL", value_name = "DAILY_LIMIT_TRIAL",
        default_value_t = 10_000, value_parser = clap::value_parser!(i64).range(0..))]
    pub trial: i64,

    /// Daily token limit of `subscribed` users.
    #[arg(id = "daily_limit_subscribed", long = "daily-limit-subscribed", env = "DAILY_LIMIT_SUBSCRIBED", value_name = "DAILY_LIMIT_SUBSCRIBED",
        default_value_t = 100_000, value_parser = clap::value_parser!(i64).range(0..))]
    pub subscribed: i64,

    /// Monthly token cap of `trial` users, counted over the calendar month in
    /// `RESET_TIMEZONE`; unset, no monthly cap.
    #[arg(long = "monthly-limit-trial", env = "MONTHLY_LIMIT_TRIAL", value_name = "MONTHLY_LIMIT_TRIAL",
        value_parser = clap::value_parser!(i64).range(0..))]
    pub monthly_trial: Option<i64>,

    /// Monthly token cap of `subscribed` users; unset, no monthly cap.
    #[arg(long = "monthly-limit-subscribed", env = "MONTHLY_LIMIT_SUBSCRIBED", value_name = "MONTHLY_LIMIT_SUBSCRIBED",
        value_parser = clap::value_parser!(i64).range(0..))]
    pub monthly_subscribed: Option<i64>,

    /// How limits are applied: `enforce` refuses what is over, `shadow` records everything
    /// and flags what `enforce` would refuse, `off` refuses and counts nothing.
    #[arg(long, env = "ENFORCEMENT", default_value = "enforce")]
    pub enforcement: Enforcement,

    /// The mode for `trial` users, in place of `ENFORCEMENT`.
    #[arg(long, env = "ENFORCEMENT_TRIAL")]
    pub enforcement_trial: Option<Enforcement>,

    /// The mode for `subscribed` users, in place of `ENFORCEMENT`.
    #[arg(long, env = "ENFORCEMENT_SUBSCRIBED")]
    pub enforcement_subscribed: Option<Enforcement>,

    /// From what share of the binding limit (used and held tokens) answers carry
    /// `"warning": "approaching_limit"`: above 0, at most 1, up to four decimals.
    #[arg(long, env = "SOFT_LIMIT_FRACTION", default_value = "0.8")]
    pub soft_limit_fraction: Share,

    /// What `POST /usage` answers while the store is unreachable or past the request's
    /// deadline: `deny` (503) or `allow` (200 without counting, flagged `degraded`).
    #[arg(long, env = "ON_STORE_UNAVAILABLE", default_value = "deny")]
    pub on_store_unavailable: OnStoreUnavailable,

    /// How many days ahead a per-user override may expire (and does, when `expiresAt` is not
    /// given).
    #[arg(long, env = "OVERRIDE_MAX_DAYS", default_value_t = 90, value_parser = clap::value_parser!(u16).range(1..=3650))]
    pub override_max_days: u16,

    /// Comma-separated uids of callers whose records for other users are not audited: the
    /// chat backend's, whose every message would otherwise add an audit write.
    #[arg(long, env = "UNAUDITED_RECORDERS", value_delimiter = ',', value_parser = |raw: &str| UserId::parse(raw.trim()).map_err(|e| e.to_string()))]
    pub unaudited_recorders: Vec<UserId>,
}

impl From<&LimitArgs> for Limits {
    fn from(args: &LimitArgs) -> Self {
        let policy = |daily_limit, monthly_limit, mode: Option<Enforcement>| Policy {
            daily_limit,
            monthly_limit,
            enforcement: mode.unwrap_or(args.enforcement),
        };
        Self {
            trial: policy(args.trial, args.monthly_trial, args.enforcement_trial),
            subscribed: policy(
                args.subscribed,
                args.monthly_subscribed,
                args.enforcement_subscribed,
            ),
        }
    }
}

/// The Firebase web app that signs admins in to `/dashboard`: public values, served to the
/// page.
#[derive(Debug, Clone, Args)]
pub struct DashboardArgs {
    /// The web app's API key (Firebase console, project settings); unset, the dashboard
    /// offers no sign-in form.
    #[arg(long, env = "FIREBASE_WEB_API_KEY", value_parser = parse_web_api_key)]
    pub firebase_web_api_key: Option<String>,

    /// The web app's auth domain [default: FIREBASE_PROJECT_ID.firebaseapp.com].
    #[arg(long, env = "FIREBASE_AUTH_DOMAIN", value_parser = parse_auth_domain)]
    pub firebase_auth_domain: Option<String>,
}

fn parse_web_api_key(raw: &str) -> Result<String, String> {
    let valid = raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if (1..=100).contains(&raw.len()) && valid {
        Ok(raw.to_owned())
    } else {
        Err("an API key is 1 to 100 letters, digits, '-' and '_'".to_owned())
    }
}

fn parse_auth_domain(raw: &str) -> Result<String, String> {
    let valid = raw
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:".contains(&b));
    if (1..=253).contains(&raw.len()) && valid {
        Ok(raw.to_owned())
    } else {
        Err("an auth domain is a host name, e.g. my-app.firebaseapp.com".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn origins_must_be_bare() {
        assert!(parse_origin("https://admin.example.com").is_ok());
        assert!(parse_origin("http://localhost:3000").is_ok());
        for bad in [
            "admin.example.com",
            "https://a.example.com/",
            "https://a.example.com/x",
            "ftp://a.b",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad} accepted");
        }
    }

    fn serve(args: &[&str]) -> Config {
        let mut argv = vec!["token-limits", "serve"];
        argv.extend(args);
        match Cli::try_parse_args(argv).unwrap().command {
            Some(Command::Serve(config)) => *config,
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_type_takes_its_own_mode_cap_and_limit_or_the_common_mode() {
        let config = serve(&[
            "--enforcement=shadow",
            "--enforcement-subscribed=enforce",
            "--monthly-limit-trial=300000",
            "--daily-limit-subscribed=5",
        ]);
        let limits = Limits::from(&config.limits);
        assert_eq!(
            limits.trial,
            Policy {
                daily_limit: 10_000,
                monthly_limit: Some(300_000),
                enforcement: Enforcement::Shadow,
            }
        );
        assert_eq!(limits.subscribed, Policy::daily(5));
        let defaults = serve(&[]);
        assert_eq!(
            Limits::from(&defaults.limits),
            Limits::daily(10_000, 100_000)
        );
        assert_eq!(defaults.limits.soft_limit_fraction, Share::default());
        assert_eq!(
            defaults.limits.on_store_unavailable,
            OnStoreUnavailable::Deny
        );
    }

    #[test]
    fn steering_settings_outside_their_sets_are_refused() {
        for bad in [
            "--enforcement=audit",
            "--enforcement-trial=Shadow",
            "--soft-limit-fraction=1.5",
            "--soft-limit-fraction=0",
            "--on-store-unavailable=maybe",
            "--monthly-limit-trial=-1",
        ] {
            let argv = ["token-limits", "serve", bad];
            assert!(Cli::try_parse_args(argv).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn emulator_tokens_never_meet_a_production_firestore() {
        let refused = serve(&["--store=firestore"]);
        assert!(
            refused
                .validate()
                .unwrap_err()
                .contains("FIRESTORE_EMULATOR_HOST")
        );
        assert!(
            serve(&[
                "--store=firestore",
                "--firestore-emulator-host=127.0.0.1:8686"
            ])
            .validate()
            .is_ok()
        );
        assert!(
            serve(&[
                "--store=firestore",
                "--firebase-project-id=my-real-app",
                "--metrics-token=s3cret"
            ])
            .validate()
            .is_ok()
        );
        assert!(serve(&["--store=sqlite"]).validate().is_ok());
    }

    #[test]
    fn production_guards_the_metrics_unless_told_they_are_public() {
        let production = "--firebase-project-id=my-real-app";
        let refused = serve(&[production]).validate().unwrap_err();
        assert!(
            refused.contains("METRICS_TOKEN") && refused.contains("METRICS_PUBLIC"),
            "{refused}"
        );
        assert!(
            serve(&[production, "--metrics-token=s3cret"])
                .validate()
                .is_ok()
        );
        assert!(
            serve(&[production, "--metrics-public=true"])
                .validate()
                .is_ok()
        );
        assert!(
            serve(&[production, "--metrics-public=false"])
                .validate()
                .is_err()
        );
        // Local runs (a demo- project) need neither.
        assert!(serve(&[]).validate().is_ok());
        let both = serve(&["--metrics-token=s3cret", "--metrics-public=true"])
            .validate()
            .unwrap_err();
        assert!(
            both.contains("METRICS_TOKEN") && both.contains("METRICS_PUBLIC"),
            "{both}"
        );
    }

    #[test]
    fn metrics_on_an_address_of_their_own_are_kept_to_loopback_without_a_token() {
        let production = "--firebase-project-id=my-real-app";
        let loopback = "--metrics-addr=127.0.0.1:9464";
        assert!(serve(&[production, loopback]).validate().is_ok());
        let anyone = serve(&[production, "--metrics-addr=0.0.0.0:9464"])
            .validate()
            .unwrap_err();
        assert!(anyone.contains("METRICS_ADDR=0.0.0.0:9464"), "{anyone}");
        let guarded = serve(&[
            production,
            "--metrics-addr=0.0.0.0:9464",
            "--metrics-token=t",
        ]);
        assert!(guarded.validate().is_ok());
        let both = serve(&[production, loopback, "--metrics-public=true"])
            .validate()
            .unwrap_err();
        assert!(both.contains("METRICS_ADDR"), "{both}");
    }

    #[test]
    fn the_firestore_project_defaults_to_the_firebase_project() {
        assert_eq!(
            serve(&["--firebase-project-id=my-real-app"]).firestore_project(),
            "my-real-app"
        );
        let explicit = serve(&[
            "--firebase-project-id=my-real-app",
            "--google-cloud-project=gcp-project-1",
        ]);
        assert_eq!(explicit.firestore_project(), "gcp-project-1");
    }

    #[test]
    fn emulator_mode_listens_on_loopback_unless_told_otherwise() {
        assert_eq!(serve(&[]).listen_host(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(
            serve(&["--firebase-project-id=my-real-app"]).listen_host(),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        );
        assert_eq!(
            serve(&["--host=0.0.0.0"]).listen_host(),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        );
    }

    #[test]
    fn demo_projects_and_the_auth_emulator_mean_emulator_mode() {
        assert!(emulator_mode("demo-x", &None));
        assert!(!emulator_mode("prod-project", &None));
        assert!(emulator_mode(
            "prod-project",
            &Some("127.0.0.1:9099".to_owned())
        ));
    }
}
