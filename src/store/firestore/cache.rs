//! The day and month documents this instance read or wrote last, each with the update time it
//! had then. A record whose documents are all here commits straight away, every write on the
//! condition that its document still has that update time: a copy another instance has since
//! changed costs one refused commit and a fresh read, never a wrong count. Answers to reads
//! (`GET /usage/today`, reports) never come from here.

use std::mem::size_of;
use std::sync::Arc;

use firestore::gcloud_sdk::prost_types::Timestamp;
use moka::future::Cache;

use crate::usage::{Marks, MonthlyUsage, ReservationEntry, StoredDay};

#[derive(Debug, Clone)]
pub enum CachedDocument {
    Day(StoredDay),
    /// The month, and the events it raised.
    Month(MonthlyUsage, Marks),
}

/// A document as stored at `update_time`.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub update_time: Timestamp,
    pub document: CachedDocument,
}

/// Bounded by an estimate of the memory its entries hold; least recently used go first.
pub struct DocumentCache {
    /// `None` when caching is off: every record reads first.
    documents: Option<Cache<String, Arc<Versioned>>>,
}

impl DocumentCache {
    /// A cache of about `bytes` of documents; 0 turns caching off.
    pub fn with_capacity(bytes: u64) -> Self {
        let documents = (bytes > 0).then(|| {
            Cache::builder()
                .max_capacity(bytes)
                .weigher(|name: &String, entry: &Arc<Versioned>| weight(name, entry))
                .build()
        });
        Self { documents }
    }

    pub async fn get(&self, name: &str) -> Option<Arc<Versioned>> {
        self.documents.as_ref()?.get(name).await
    }

    pub async fn put_day(&self, name: &str, update_time: Timestamp, day: StoredDay) {
        self.put(name, update_time, CachedDocument::Day(day)).await;
    }

    pub async fn put_month(
        &self,
        name: &str,
        update_time: Timestamp,
        month: MonthlyUsage,
        notified: Marks,
    ) {
        self.put(name, update_time, CachedDocument::Month(month, notified))
            .await;
    }

    async fn put(&self, name: &str, update_time: Timestamp, document: CachedDocument) {
        if let Some(documents) = &self.documents {
            let entry = Versioned {
                update_time,
                document,
            };
            documents.insert(name.to_owned(), Arc::new(entry)).await;
        }
    }

    pub async fn forget(&self, names: &[&str]) {
        if let Some(documents) = &self.documents {
            for name in names {
                documents.invalidate(*name).await;
            }
        }
    }
}

/// About the bytes an entry holds: its name, its structs, and the maps' entries (with the
/// nodes and strings that hold them).
fn weight(name: &str, entry: &Versioned) -> u32 {
    const ENTRY_OVERHEAD: usize = 64;
    let document = match &entry.document {
        CachedDocument::Day(day) => {
            day.reservations.len() * (size_of::<ReservationEntry>() + 40 + ENTRY_OVERHEAD)
        }
        CachedDocument::Month(month, _) => {
            month.daily_usage.len() * (size_of::<(String, i64)>() + ENTRY_OVERHEAD)
        }
    };
    let total = ENTRY_OVERHEAD + 2 * name.len() + size_of::<Versioned>() + document;
    u32::try_from(total).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn month_with_days(days: usize) -> MonthlyUsage {
        MonthlyUsage {
            user_id: crate::usage::UserId::parse("alice").unwrap(),
            year: 2026,
            month: 11,
            daily_usage: (1..=days).map(|day| (format!("{day:02}"), 10)).collect(),
            total_monthly_tokens: 10 * days as i64,
            average_daily_usage: 10.0,
            peak_usage_date: "01".to_owned(),
            peak_usage_tokens: 10,
            user_type: crate::usage::UserType::Trial,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        }
    }

    fn weight_of_month(days: usize) -> u32 {
        let entry = Versioned {
            update_time: Timestamp::default(),
            document: CachedDocument::Month(month_with_days(days), Marks::default()),
        };
        weight("m", &entry)
    }

    #[test]
    fn a_fuller_month_weighs_more() {
        assert!(weight_of_month(30) > weight_of_month(1) + 30 * 64);
    }

    #[tokio::test]
    async fn holds_documents_until_forgotten_and_nothing_when_off() {
        let cache = DocumentCache::with_capacity(1 << 20);
        cache
            .put_month(
                "m",
                Timestamp::default(),
                month_with_days(3),
                Marks::default(),
            )
            .await;
        assert!(cache.get("m").await.is_some());
        cache.forget(&["m", "absent"]).await;
        assert!(cache.get("m").await.is_none());

        let off = DocumentCache::with_capacity(0);
        off.put_month(
            "m",
            Timestamp::default(),
            month_with_days(3),
            Marks::default(),
        )
        .await;
        assert!(off.get("m").await.is_none());
    }

    #[tokio::test]
    async fn stays_within_its_bound() {
        let cache = DocumentCache::with_capacity(64 * 1024);
        for user in 0..2_000 {
            let name = format!("user-{user}");
            cache
                .put_month(
                    &name,
                    Timestamp::default(),
                    month_with_days(31),
                    Marks::default(),
                )
                .await;
        }
        let documents = cache.documents.as_ref().unwrap();
        documents.run_pending_tasks().await;
        assert!(documents.weighted_size() <= 64 * 1024);
        assert!(documents.entry_count() < 2_000);
    }
}
