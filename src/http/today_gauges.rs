//! Today's figures for `/metrics`, counted from the store at most once per interval however
//! often it is scraped: each count is a query per user type, billed reads on Firestore.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// How long today's figures are served as last counted: a scraper that comes every 30 s or
/// less often (the Cloud Run sidecar's default is 60 s) gets a fresh count each time, faster
/// ones share it.
pub const TODAY_GAUGES_INTERVAL: Duration = Duration::from_secs(30);

pub struct TodayGauges {
    interval: Duration,
    /// When the figures were last counted. Held while counting, so that scrapes arriving
    /// meanwhile wait for that count and share it.
    last_counted: Mutex<Option<Instant>>,
}

impl TodayGauges {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_counted: Mutex::new(None),
        }
    }

    /// Runs `count` unless the figures were counted less than the interval ago. A count that
    /// failed is not repeated before the interval is out either, so that a store in trouble is
    /// not asked at every scrape.
    pub async fn refresh<F, E>(&self, count: impl FnOnce() -> F) -> Result<(), E>
    where
        F: Future<Output = Result<(), E>>,
    {
        let mut last_counted = self.last_counted.lock().await;
        if last_counted.is_some_and(|at| at.elapsed() < self.interval) {
            return Ok(());
        }
        *last_counted = Some(Instant::now());
        count().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A count that takes a while, and how many were made.
    #[derive(Default)]
    struct Counts(AtomicUsize);

    impl Counts {
        async fn count(&self) -> Result<(), ()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(())
        }

        fn made(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn scrapes_within_the_interval_cost_one_count() {
        let gauges = TodayGauges::new(Duration::from_secs(60));
        let counts = Counts::default();
        for _ in 0..50 {
            gauges.refresh(|| counts.count()).await.unwrap();
        }
        assert_eq!(counts.made(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_scrapes_share_one_count() {
        let gauges = Arc::new(TodayGauges::new(Duration::from_secs(60)));
        let counts = Arc::new(Counts::default());
        let mut scrapes = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (gauges, counts) = (gauges.clone(), counts.clone());
            scrapes.spawn(async move { gauges.refresh(|| counts.count()).await });
        }
        for scraped in scrapes.join_all().await {
            scraped.unwrap();
        }
        assert_eq!(counts.made(), 1);
    }

    #[tokio::test]
    async fn the_figures_are_counted_again_once_the_interval_is_out() {
        let interval = Duration::from_millis(100);
        let gauges = TodayGauges::new(interval);
        let counts = Counts::default();
        gauges.refresh(|| counts.count()).await.unwrap();
        tokio::time::sleep(interval).await;
        gauges.refresh(|| counts.count()).await.unwrap();
        assert_eq!(counts.made(), 2);
    }

    #[tokio::test]
    async fn a_failed_count_waits_for_the_interval_too() {
        let gauges = TodayGauges::new(Duration::from_secs(60));
        let attempts = AtomicUsize::new(0);
        let failing = || async {
            attempts.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>("store unavailable")
        };
        assert!(gauges.refresh(failing).await.is_err());
        assert!(gauges.refresh(failing).await.is_ok());
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
    }
}
