//! Which store holds the documents and where: the flags that `serve` and every lifecycle
//! command share.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// Where the documents live: what `serve` and the lifecycle commands share.
#[derive(Debug, Clone, Args)]
pub struct StoreSettings {
    /// Where usage is stored.
    #[arg(long = "store", env = "STORE", value_name = "STORE", value_enum, default_value_t = StoreKind::Sqlite)]
    pub kind: StoreKind,

    /// The SQLite file of the embedded store.
    #[arg(long, env = "SQLITE_PATH", default_value = "token-limits.db")]
    pub sqlite_path: PathBuf,

    /// The Google Cloud project of the Firestore database [default: FIREBASE_PROJECT_ID].
    #[arg(long, env = "GOOGLE_CLOUD_PROJECT", value_parser = parse_project_id)]
    pub google_cloud_project: Option<String>,

    /// The Firestore database.
    #[arg(long, env = "FIRESTORE_DATABASE", default_value = "(default)")]
    pub firestore_database: String,

    /// `host:port` of a Firestore emulator to use instead of the real service.
    #[arg(long, env = "FIRESTORE_EMULATOR_HOST")]
    pub firestore_emulator_host: Option<String>,

    /// The Firebase project: its ID tokens are accepted, and its Firestore is used unless
    /// GOOGLE_CLOUD_PROJECT names another.
    #[arg(long, env = "FIREBASE_PROJECT_ID", default_value = "demo-token-limits", value_parser = parse_project_id)]
    pub firebase_project_id: String,
}

impl StoreSettings {
    pub fn firestore_project(&self) -> &str {
        self.google_cloud_project
            .as_deref()
            .unwrap_or(&self.firebase_project_id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// The embedded SQLite file.
    Sqlite,
    /// Google Cloud Firestore, shared by every instance.
    Firestore,
}

/// Firebase project ids: 6 to 30 lowercase letters, digits and hyphens.
pub fn parse_project_id(raw: &str) -> Result<String, String> {
    let valid_chars = raw
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if (6..=30).contains(&raw.len()) && valid_chars {
        Ok(raw.to_owned())
    } else {
        Err("a project id is 6 to 30 lowercase letters, digits and hyphens".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_ids_follow_firebase_rules() {
        assert!(parse_project_id("demo-token-limits").is_ok());
        for bad in [
            "",
            "short",
            "Upper-Case-Id",
            "has_underscore",
            &"a".repeat(31),
        ] {
            assert!(parse_project_id(bad).is_err(), "{bad} accepted");
        }
    }
}
