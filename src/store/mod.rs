//! The storage adapters of the domain's [`UsageStore`](crate::usage::UsageStore) port: the
//! embedded SQLite file and Firestore. Each reads a record's snapshot, runs the domain's plan
//! on it and applies the writes in its own way; neither holds a rule of its own.

mod firestore;
mod instrumented;
pub mod queries;
mod sqlite;

pub use self::firestore::{
    DAY_FIELDS as FIRESTORE_DAY_FIELDS, FirestoreSettings, FirestoreStore,
    MONTH_FIELDS as FIRESTORE_MONTH_FIELDS, OperationCounts,
    conditional_update as firestore_conditional_update,
    unchanged_since_read as firestore_unchanged_since_read,
};
pub use instrumented::Instrumented;
pub use sqlite::SqliteStore;
