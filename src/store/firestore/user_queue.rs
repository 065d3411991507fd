//! One record at a time per user within an instance. Requests for one user from one instance
//! would only collide with each other in Firestore, each collision costing a read and a
//! failed commit; queued here, they contend only with other instances.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OwnedMutexGuard;

#[derive(Default)]
pub struct UserQueue {
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The user's turn; the next request for the user goes when it is dropped.
pub struct Turn<'a> {
    queue: &'a UserQueue,
    user: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl UserQueue {
    pub async fn turn(&self, user: &str) -> Turn<'_> {
        let lock = self.entries().entry(user.to_owned()).or_default().clone();
        Turn {
            queue: self,
            user: user.to_owned(),
            guard: Some(lock.lock_owned().await),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        self.turns.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut entries = self.queue.entries();
        // Only the map holds it: nobody waits, so forget the user.
        if entries
            .get(&self.user)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            entries.remove(&self.user);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn one_user_goes_one_at_a_time_and_others_do_not_wait() {
        let queue = Arc::new(UserQueue::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let most_inside = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (queue, inside, most_inside) = (queue.clone(), inside.clone(), most_inside.clone());
            tasks.spawn(async move {
                let _turn = queue.turn("alice").await;
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most_inside.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
            });
        }
        let alice = queue.turn("alice");
        // Another user is served while alice's requests queue.
        tokio::time::timeout(Duration::from_millis(20), queue.turn("bob"))
            .await
            .unwrap();
        drop(alice.await);
        tasks.join_all().await;
        assert_eq!(most_inside.load(Ordering::SeqCst), 1);
        assert!(queue.entries().is_empty(), "finished users are forgotten");
    }
}
