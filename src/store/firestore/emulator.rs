//! Credentials for the Firestore emulator: the conventional `Bearer owner` token, which the
//! emulator treats like server credentials (security rules do not apply), and no Google
//! credentials looked up.

use axum::http::{Extensions, HeaderMap, HeaderValue, header};
use firestore::gcloud_sdk::google_cloud_auth::credentials::{
    CacheableResource, CredentialsProvider, EntityTag,
};
use firestore::gcloud_sdk::google_cloud_auth::errors::CredentialsError;

#[derive(Debug)]
pub struct EmulatorCredentials {
    entity_tag: EntityTag,
}

impl EmulatorCredentials {
    pub fn new() -> Self {
        Self {
            entity_tag: EntityTag::new(),
        }
    }
}

impl CredentialsProvider for EmulatorCredentials {
    async fn headers(
        &self,
        extensions: Extensions,
    ) -> Result<CacheableResource<HeaderMap>, CredentialsError> {
        if extensions.get::<EntityTag>() == Some(&self.entity_tag) {
            return Ok(CacheableResource::NotModified);
        }
        let headers = HeaderMap::from_iter([(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer owner"),
        )]);
        Ok(CacheableResource::New {
            entity_tag: self.entity_tag.clone(),
            data: headers,
        })
    }

    async fn universe_domain(&self) -> Option<String> {
        None
    }
}
