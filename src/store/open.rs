//! The one place that opens the store the settings name: `serve` records usage in it and the
//! lifecycle commands maintain its documents, each through its own port.

use std::sync::Arc;

use super::instrumented::Instrumented;
use super::settings::{StoreKind, StoreSettings};
use super::{FirestoreSettings, FirestoreStore, SqliteStore};
use crate::lifecycle::DocumentStore;
use crate::usage::{Outbox, StoreError, UsageStore};

/// An adapter of every port.
trait Adapter: UsageStore + DocumentStore + Outbox {}

impl<S: UsageStore + DocumentStore + Outbox> Adapter for S {}

/// What `serve` opens: the store it records in, measured, and the outbox of that store.
pub struct ServingStore {
    pub usage: Arc<dyn UsageStore>,
    pub outbox: Arc<dyn Outbox>,
}

/// The store `serve` records in; `cache_bytes` of Firestore documents are kept.
pub async fn open_usage_store(
    settings: &StoreSettings,
    cache_bytes: u64,
) -> Result<ServingStore, StoreError> {
    let (store, name) = open(settings, cache_bytes).await?;
    Ok(ServingStore {
        outbox: store.clone(),
        usage: Arc::new(Instrumented::new(store, name)),
    })
}

/// The store the lifecycle commands maintain.
pub async fn open_document_store(
    settings: &StoreSettings,
) -> Result<Arc<dyn DocumentStore>, StoreError> {
    // Maintenance reads and writes whole collections once: nothing to reuse.
    let (store, _) = open(settings, 0).await?;
    Ok(store)
}

/// The store and its name in the `store` label of the metrics.
async fn open(
    settings: &StoreSettings,
    cache_bytes: u64,
) -> Result<(Arc<dyn Adapter>, &'static str), StoreError> {
    Ok(match settings.kind {
        StoreKind::Sqlite => (
            Arc::new(SqliteStore::open(&settings.sqlite_path)?),
            "sqlite",
        ),
        StoreKind::Firestore => (
            Arc::new(
                FirestoreStore::connect(FirestoreSettings {
                    project_id: settings.firestore_project().to_owned(),
                    database_id: settings.firestore_database.clone(),
                    emulator_host: settings.firestore_emulator_host.clone(),
                    cache_bytes,
                })
                .await?,
            ),
            "firestore",
        ),
    })
}
