//! The storage adapters of the domain's [`UsageStore`](crate::usage::UsageStore) port and of
//! the maintenance [`DocumentStore`](crate::lifecycle::DocumentStore) port: the embedded SQLite
//! file and Firestore. Each reads a record's snapshot, runs the domain's plan on it and applies
//! the writes in its own way; neither holds a rule of its own. Which one runs is decided here
//! too, from [`StoreSettings`], by [`open_usage_store`] and [`open_document_store`].

mod firestore;
mod instrumented;
mod open;
pub mod queries;
mod settings;
mod sqlite;

pub use self::firestore::{
    DAY_FIELDS as FIRESTORE_DAY_FIELDS, FirestoreSettings, FirestoreStore,
    MONTH_FIELDS as FIRESTORE_MONTH_FIELDS, OperationCounts,
    conditional_update as firestore_conditional_update,
    unchanged_since_read as firestore_unchanged_since_read,
};
pub use open::{ServingStore, open_document_store, open_usage_store};
pub use settings::{StoreKind, StoreSettings, parse_project_id};
pub use sqlite::SqliteStore;
