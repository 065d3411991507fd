//! The Firebase Auth user directory: a user's custom claims, read with the Auth admin API
//! (Identity Toolkit `accounts:lookup`), so that a backend acting for a user is held to that
//! user's plan. Answers are cached per user for a short time, and one lookup serves every
//! request for the same user that arrives while it runs.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use firestore::gcloud_sdk::google_cloud_auth::credentials::{
    AccessTokenCredentials, Builder as CredentialsBuilder,
};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::metrics::DIRECTORY_LOOKUPS;
use crate::usage::{DirectoryError, UserDirectory, UserId, UserType};

const IDENTITY_TOOLKIT: &str = "https://identitytoolkit.googleapis.com";
/// What the Auth admin API accepts; `roles/firebaseauth.viewer` grants the lookup.
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Enough users that a busy instance rarely looks one up twice within the cache time.
const CACHED_USERS: u64 = 100_000;

#[derive(Debug, Clone)]
pub struct DirectorySettings {
    pub project_id: String,
    /// `host:port` of the Firebase Auth emulator; `None` means Google's service with
    /// Application Default Credentials.
    pub emulator_host: Option<String>,
    /// The custom claim that names the user type.
    pub user_type_claim: String,
    /// How long a user's plan is remembered.
    pub cache_for: Duration,
    /// The longest one lookup may take.
    pub timeout: Duration,
}

pub struct IdentityToolkitDirectory {
    client: reqwest::Client,
    lookup_url: String,
    /// `None` for the emulator, which takes the conventional `Bearer owner`.
    credentials: Option<AccessTokenCredentials>,
    user_type_claim: String,
    cache: moka::future::Cache<UserId, UserType>,
}

#[derive(Deserialize)]
struct LookupAnswer {
    /// Absent when no account has the uid.
    #[serde(default)]
    users: Vec<Account>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Account {
    /// The custom claims as a JSON object in a string; absent when none are set.
    custom_attributes: Option<String>,
}

impl IdentityToolkitDirectory {
    pub fn new(settings: DirectorySettings) -> Result<Self, DirectoryError> {
        let unavailable = |e: &dyn std::fmt::Display| DirectoryError::Unavailable(e.to_string());
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .build()
            .map_err(|e| unavailable(&e))?;
        let (base, credentials) = match &settings.emulator_host {
            Some(host) => (
                format!("http://{host}/identitytoolkit.googleapis.com"),
                None,
            ),
            None => {
                let credentials = CredentialsBuilder::default()
                    .with_scopes([SCOPE])
                    .build_access_token_credentials()
                    .map_err(|e| unavailable(&e))?;
                (IDENTITY_TOOLKIT.to_owned(), Some(credentials))
            }
        };
        Ok(Self {
            client,
            lookup_url: format!("{base}/v1/projects/{}/accounts:lookup", settings.project_id),
            credentials,
            user_type_claim: settings.user_type_claim,
            cache: moka::future::Cache::builder()
                .max_capacity(CACHED_USERS)
                .time_to_live(settings.cache_for)
                .build(),
        })
    }

    async fn look_up(&self, user_id: &UserId) -> Result<UserType, DirectoryError> {
        let found = self.request_user_type(user_id).await;
        let result = if found.is_ok() { "ok" } else { "error" };
        metrics::counter!(DIRECTORY_LOOKUPS, "result" => result).increment(1);
        found
    }

    async fn request_user_type(&self, user_id: &UserId) -> Result<UserType, DirectoryError> {
        let unavailable = |e: &dyn std::fmt::Display| DirectoryError::Unavailable(e.to_string());
        let bearer = match &self.credentials {
            Some(credentials) => {
                credentials
                    .access_token()
                    .await
                    .map_err(|e| unavailable(&e))?
                    .token
            }
            None => "owner".to_owned(),
        };
        let answer: LookupAnswer = self
            .client
            .post(&self.lookup_url)
            .bearer_auth(bearer)
            .json(&serde_json::json!({ "localId": [user_id.as_str()] }))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| unavailable(&e))?
            .json()
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(self.user_type_of(answer.users.first()))
    }

    /// Like a token's claim: no account, no claims, or an unknown type mean the default.
    fn user_type_of(&self, account: Option<&Account>) -> UserType {
        let claims: Option<Map<String, Value>> = account
            .and_then(|account| account.custom_attributes.as_deref())
            .and_then(|raw| serde_json::from_str(raw).ok());
        UserType::from_claim(
            claims
                .as_ref()
                .and_then(|claims| claims.get(&self.user_type_claim))
                .and_then(Value::as_str),
        )
    }
}

#[async_trait]
impl UserDirectory for IdentityToolkitDirectory {
    async fn user_type(&self, user_id: &UserId) -> Result<UserType, DirectoryError> {
        self.cache
            .try_get_with_by_ref(user_id, self.look_up(user_id))
            .await
            .map_err(|error: Arc<DirectoryError>| DirectoryError::Unavailable(error.to_string()))
    }
}
