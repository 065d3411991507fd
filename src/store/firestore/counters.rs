//! Counts of Firestore operations, so that the cost of a request can be measured, and the same
//! counts as Prometheus metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::{
    FIRESTORE_CACHED_COMMITS, FIRESTORE_READS, FIRESTORE_RPCS, FIRESTORE_WRITES,
    STORE_LOST_ANSWERS, STORE_RETRIES, STORE_UNKNOWN_OUTCOMES,
};

/// Cumulative counts since start-up.
#[derive(Debug, Default)]
pub struct FirestoreCounters {
    rpcs: AtomicU64,
    document_reads: AtomicU64,
    document_writes: AtomicU64,
    commit_attempts: AtomicU64,
    contention_retries: AtomicU64,
    transient_retries: AtomicU64,
    lost_answers: AtomicU64,
    cached_commits: AtomicU64,
    stale_cached_commits: AtomicU64,
}

/// A snapshot of [`FirestoreCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OperationCounts {
    /// Calls to Firestore.
    pub rpcs: u64,
    /// Documents read (billed reads), found or not.
    pub document_reads: u64,
    /// Documents written by successful commits.
    pub document_writes: u64,
    /// Commits sent, successful or not.
    pub commit_attempts: u64,
    /// Attempts repeated because another writer changed a document first.
    pub contention_retries: u64,
    /// Attempts repeated after a transient failure (unavailable, deadline, throttled).
    pub transient_retries: u64,
    /// Commits whose answer was lost, so that the day had to be read back.
    pub lost_answers: u64,
    /// Commits sent straight from cached documents, without a read first.
    pub cached_commits: u64,
    /// Of those, the ones refused because a document had changed since it was cached.
    pub stale_cached_commits: u64,
}

impl FirestoreCounters {
    pub fn rpc(&self) {
        self.rpcs.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(FIRESTORE_RPCS).increment(1);
    }

    pub fn reads(&self, documents: u64) {
        self.document_reads.fetch_add(documents, Ordering::Relaxed);
        metrics::counter!(FIRESTORE_READS).increment(documents);
    }

    pub fn commit_attempt(&self) {
        self.rpc();
        self.commit_attempts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn committed(&self, documents: u64) {
        self.document_writes.fetch_add(documents, Ordering::Relaxed);
        metrics::counter!(FIRESTORE_WRITES).increment(documents);
    }

    pub fn contention_retry(&self) {
        self.contention_retries.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(STORE_RETRIES, "reason" => "contention").increment(1);
    }

    pub fn transient_retry(&self) {
        self.transient_retries.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(STORE_RETRIES, "reason" => "transient").increment(1);
    }

    pub fn lost_answer(&self) {
        self.lost_answers.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(STORE_LOST_ANSWERS).increment(1);
    }

    pub fn cached_commit(&self) {
        self.cached_commits.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(FIRESTORE_CACHED_COMMITS, "result" => "sent").increment(1);
    }

    pub fn stale_cached_commit(&self) {
        self.stale_cached_commits.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(FIRESTORE_CACHED_COMMITS, "result" => "stale").increment(1);
    }

    /// Not kept among the counts: it is the 503 a client sees, counted once per request.
    pub fn unknown_outcome(&self) {
        metrics::counter!(STORE_UNKNOWN_OUTCOMES).increment(1);
    }

    pub fn snapshot(&self) -> OperationCounts {
        OperationCounts {
            rpcs: self.rpcs.load(Ordering::Relaxed),
            document_reads: self.document_reads.load(Ordering::Relaxed),
            document_writes: self.document_writes.load(Ordering::Relaxed),
            commit_attempts: self.commit_attempts.load(Ordering::Relaxed),
            contention_retries: self.contention_retries.load(Ordering::Relaxed),
            transient_retries: self.transient_retries.load(Ordering::Relaxed),
            lost_answers: self.lost_answers.load(Ordering::Relaxed),
            cached_commits: self.cached_commits.load(Ordering::Relaxed),
            stale_cached_commits: self.stale_cached_commits.load(Ordering::Relaxed),
        }
    }
}

impl std::ops::Add for OperationCounts {
    type Output = Self;

    /// The operations of two instances together.
    fn add(self, other: Self) -> Self {
        Self {
            rpcs: self.rpcs + other.rpcs,
            document_reads: self.document_reads + other.document_reads,
            document_writes: self.document_writes + other.document_writes,
            commit_attempts: self.commit_attempts + other.commit_attempts,
            contention_retries: self.contention_retries + other.contention_retries,
            transient_retries: self.transient_retries + other.transient_retries,
            lost_answers: self.lost_answers + other.lost_answers,
            cached_commits: self.cached_commits + other.cached_commits,
            stale_cached_commits: self.stale_cached_commits + other.stale_cached_commits,
        }
    }
}

impl std::ops::Sub for OperationCounts {
    type Output = Self;

    /// The operations between two snapshots.
    fn sub(self, earlier: Self) -> Self {
        Self {
            rpcs: self.rpcs - earlier.rpcs,
            document_reads: self.document_reads - earlier.document_reads,
            document_writes: self.document_writes - earlier.document_writes,
            commit_attempts: self.commit_attempts - earlier.commit_attempts,
            contention_retries: self.contention_retries - earlier.contention_retries,
            transient_retries: self.transient_retries - earlier.transient_retries,
            lost_answers: self.lost_answers - earlier.lost_answers,
            cached_commits: self.cached_commits - earlier.cached_commits,
            stale_cached_commits: self.stale_cached_commits - earlier.stale_cached_commits,
        }
    }
}
