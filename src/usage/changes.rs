//! Notices that a user's day changed: what a live view of the day waits on before it reads the
//! day again. A notice carries nothing but "changed", so a burst of them costs one read, and a
//! watcher never holds more than one unread.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use chrono::NaiveDate;
use tokio::sync::watch;

use super::{DailyUsage, Recorded, StoreError, UserId};

/// The changes of one user's day, from the moment of subscribing.
pub struct DayChanges {
    receiver: watch::Receiver<()>,
    /// Keeps the day's watch (and any listener feeding it) alive while this is held.
    _watch: Arc<UserWatch>,
}

impl DayChanges {
    /// Resolves once the day changed after the last notice seen; `false` when no notice can
    /// come any more.
    pub async fn changed(&mut self) -> bool {
        self.receiver.changed().await.is_ok()
    }
}

/// What a source of notices for one user holds: it notifies through it while anyone watches.
#[derive(Clone)]
pub struct DayNotifier(watch::Sender<()>);

impl DayNotifier {
    pub fn notify(&self) {
        self.0.send_replace(());
    }
}

/// A day watched: its document's id, `{userId}_{date}`.
type DayKey = String;

/// One user's day's watchers: shared by all of them, gone with the last.
struct UserWatch {
    key: DayKey,
    sender: watch::Sender<()>,
    users: Weak<Mutex<HashMap<DayKey, Weak<UserWatch>>>>,
    /// Whatever feeds this user's notices besides this instance's own writes (a listener on
    /// the store); dropped, and so ended, with the last watcher.
    _feed: Option<Box<dyn Send + Sync>>,
}

impl Drop for UserWatch {
    fn drop(&mut self) {
        let Some(users) = self.users.upgrade() else {
            return;
        };
        let mut users = users.lock().unwrap_or_else(PoisonError::into_inner);
        // A new watcher may already have replaced this one under the same user.
        if users
            .get(&self.key)
            .is_some_and(|entry| entry.strong_count() == 0)
        {
            users.remove(&self.key);
        }
    }
}

/// Who watches which user's day on this instance: at most one watch per day, whatever the
/// number of watchers, and none for a day nobody watches.
#[derive(Clone, Default)]
pub struct DayChangeHub {
    users: Arc<Mutex<HashMap<DayKey, Weak<UserWatch>>>>,
}

impl DayChangeHub {
    /// The changes of `user_id`'s day `date`, notified by [`Self::notify`] alone.
    pub fn subscribe(&self, user_id: &UserId, date: NaiveDate) -> DayChanges {
        self.subscribe_fed(user_id, date, |_| None)
    }

    /// The changes of `user_id`'s day `date`; its first watcher starts `feed` with the day's
    /// notifier, and the feed it returns is dropped with the last watcher.
    pub fn subscribe_fed(
        &self,
        user_id: &UserId,
        date: NaiveDate,
        feed: impl FnOnce(DayNotifier) -> Option<Box<dyn Send + Sync>>,
    ) -> DayChanges {
        let key = DailyUsage::document_id(user_id, date);
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        let watch = match users.get(&key).and_then(Weak::upgrade) {
            Some(watch) => watch,
            None => {
                let sender = watch::Sender::new(());
                let watch = Arc::new(UserWatch {
                    key: key.clone(),
                    _feed: feed(DayNotifier(sender.clone())),
                    sender,
                    users: Arc::downgrade(&self.users),
                });
                users.insert(key, Arc::downgrade(&watch));
                watch
            }
        };
        DayChanges {
            receiver: watch.sender.subscribe(),
            _watch: watch,
        }
    }

    /// Awaits a store's `record` of `user_id`'s day `date` and, when it wrote the day, tells
    /// the day's watchers: a refusal or a replay changes nothing worth reading again.
    pub async fn after_record(
        &self,
        user_id: UserId,
        date: NaiveDate,
        record: impl Future<Output = Result<Recorded, StoreError>>,
    ) -> Result<Recorded, StoreError> {
        let recorded = record.await;
        if recorded.as_ref().is_ok_and(Recorded::wrote_day) {
            self.notify(&user_id, date);
        }
        recorded
    }

    /// Tells the watchers of `user_id`'s day `date`, if any, that it changed.
    pub fn notify(&self, user_id: &UserId, date: NaiveDate) {
        let watch = self
            .users
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&DailyUsage::document_id(user_id, date))
            .and_then(Weak::upgrade);
        if let Some(watch) = watch {
            watch.sender.send_replace(());
        }
    }

    /// How many days are watched now.
    pub fn watched_days(&self) -> usize {
        self.users
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    fn day() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 12, 4).unwrap()
    }

    #[tokio::test]
    async fn a_notice_reaches_every_watcher_of_the_day_and_no_other() {
        let hub = DayChangeHub::default();
        let mut first = hub.subscribe(&user("a"), day());
        let mut second = hub.subscribe(&user("a"), day());
        let other = hub.subscribe(&user("b"), day());
        hub.notify(&user("a"), day());
        assert!(first.changed().await);
        assert!(second.changed().await);
        assert!(!other.receiver.has_changed().unwrap());
        let yesterday = hub.subscribe(&user("a"), day().pred_opt().unwrap());
        hub.notify(&user("a"), day());
        assert!(!yesterday.receiver.has_changed().unwrap());
    }

    #[tokio::test]
    async fn a_burst_of_notices_is_one_unread_change() {
        let hub = DayChangeHub::default();
        let mut changes = hub.subscribe(&user("a"), day());
        for _ in 0..100 {
            hub.notify(&user("a"), day());
        }
        assert!(changes.changed().await);
        assert!(!changes.receiver.has_changed().unwrap());
    }

    #[test]
    fn one_feed_per_user_ended_with_the_last_watcher() {
        let hub = DayChangeHub::default();
        let started = Arc::new(());
        let start = |_| Some(Box::new(started.clone()) as Box<dyn Send + Sync>);
        let first = hub.subscribe_fed(&user("a"), day(), start);
        let second = hub.subscribe_fed(&user("a"), day(), start);
        assert_eq!(Arc::strong_count(&started), 2, "one feed for both watchers");
        drop(first);
        assert_eq!(hub.watched_days(), 1);
        drop(second);
        assert_eq!(
            Arc::strong_count(&started),
            1,
            "the feed ended with the last watcher"
        );
        assert_eq!(hub.watched_days(), 0);
    }
}
