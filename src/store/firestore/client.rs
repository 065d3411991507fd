//! The calls to Firestore: each bounded in time, counted, and its failure sorted by what a
//! retry can do.

use std::collections::HashMap;
use std::time::Duration;

use firestore::gcloud_sdk::GoogleAuthMiddleware;
use firestore::gcloud_sdk::google::firestore::v1::firestore_client::FirestoreClient;
use firestore::gcloud_sdk::google::firestore::v1::{
    BatchGetDocumentsRequest, CommitRequest, Document, GetDocumentRequest, RunQueryRequest,
    StructuredQuery, TransactionOptions, Write, WriteResult, batch_get_documents_request,
    batch_get_documents_response, run_query_request, transaction_options,
};
use firestore::gcloud_sdk::tonic::{self, Code, Status};

use super::FirestoreStore;
use super::codec;
use crate::usage::StoreError;

/// The longest one call to Firestore may take.
pub(super) const MAX_RPC_TIMEOUT: Duration = Duration::from_secs(2);

/// The least time worth giving a call: with less left, the call is not made.
pub(super) const MIN_RPC_TIMEOUT: Duration = Duration::from_millis(5);

/// Where a read looks. Several reads in one read-only transaction see one snapshot: the first
/// begins it, the others name it.
pub(super) enum Snapshot {
    Begin,
    Of(Vec<u8>),
}

impl Snapshot {
    /// The request's consistency selector, made by its type's two variants for this choice.
    pub(super) fn selector<S>(
        &self,
        begin: impl FnOnce(TransactionOptions) -> S,
        of: impl FnOnce(Vec<u8>) -> S,
    ) -> S {
        match self {
            Self::Begin => begin(TransactionOptions {
                mode: Some(transaction_options::Mode::ReadOnly(
                    transaction_options::ReadOnly::default(),
                )),
            }),
            Self::Of(transaction) => of(transaction.clone()),
        }
    }

    /// The transaction that holds this snapshot: the one named, or the one a read began.
    pub(super) fn held(self, begun: Option<Vec<u8>>) -> Result<Vec<u8>, StoreError> {
        match self {
            Self::Of(transaction) => Ok(transaction),
            Self::Begin => begun.ok_or_else(|| {
                StoreError::Internal("a read came without the transaction it began".to_owned())
            }),
        }
    }
}

/// Why one attempt of a record did not finish.
#[derive(Debug)]
pub(super) enum AttemptError {
    /// Another writer changed a document since it was read: nothing was written; try again.
    Contention,
    /// The request's time for writes ended before the commit could be sent: nothing was
    /// written.
    TooLate,
    /// Firestore could not answer now and nothing was written: try again.
    Transient(Status),
    /// The commit may or may not have been applied, and reading back could not tell:
    /// retrying could count twice.
    Ambiguous(String),
    /// Retrying will not help.
    Permanent(StoreError),
}

impl AttemptError {
    pub(super) fn retryable(&self) -> bool {
        matches!(self, Self::Contention | Self::Transient(_))
    }

    pub(super) fn into_store_error(self) -> StoreError {
        match self {
            Self::Contention => StoreError::Unavailable("contention: out of retries".to_owned()),
            Self::TooLate => StoreError::Unavailable(
                "the request's deadline came before its write could begin".to_owned(),
            ),
            Self::Transient(status) => StoreError::Unavailable(describe(&status)),
            Self::Ambiguous(detail) => StoreError::OutcomeUnknown(detail),
            Self::Permanent(error) => error,
        }
    }
}

impl From<codec::DecodeError> for AttemptError {
    fn from(error: codec::DecodeError) -> Self {
        Self::Permanent(error.into())
    }
}

impl From<codec::DecodeError> for StoreError {
    fn from(error: codec::DecodeError) -> Self {
        Self::Corrupt(error.to_string())
    }
}

/// Sorts a failed read (safe to repeat) by whether repeating can help.
pub(super) fn read_failure(status: Status) -> AttemptError {
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Cancelled
        | Code::Internal
        | Code::Unknown => AttemptError::Transient(status),
        _ => AttemptError::Permanent(permanent_error(&status)),
    }
}

/// How a commit failed: a failed precondition or an abort wrote nothing; a lost answer may
/// have written everything.
pub(super) enum CommitFailure {
    Refused(AttemptError),
    AnswerLost(Status),
}

pub(super) fn commit_failure(status: Status) -> CommitFailure {
    match status.code() {
        Code::FailedPrecondition | Code::Aborted | Code::AlreadyExists => {
            CommitFailure::Refused(AttemptError::Contention)
        }
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Cancelled
        | Code::Internal
        | Code::Unknown => CommitFailure::AnswerLost(status),
        _ => CommitFailure::Refused(AttemptError::Permanent(permanent_error(&status))),
    }
}

/// Credentials or permission problems are an outage to clients (503), not a bug (500).
fn permanent_error(status: &Status) -> StoreError {
    match status.code() {
        Code::PermissionDenied | Code::Unauthenticated => StoreError::Unavailable(describe(status)),
        _ => StoreError::Internal(describe(status)),
    }
}

pub(super) fn describe(status: &Status) -> String {
    format!("firestore {:?}: {}", status.code(), status.message())
}

impl FirestoreStore {
    pub(super) fn client(&self) -> FirestoreClient<GoogleAuthMiddleware> {
        self.db.client().get()
    }

    pub(super) fn document_name(&self, collection: &str, id: &str) -> String {
        format!("{}/documents/{collection}/{id}", self.database)
    }

    /// A call that may take at most `timeout`, so that a slow Firestore is answered in time.
    pub(super) fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout.clamp(MIN_RPC_TIMEOUT, MAX_RPC_TIMEOUT));
        request
    }

    /// Reads the named documents within `timeout`; missing ones are absent.
    pub(super) async fn batch_get(
        &self,
        names: &[&str],
        timeout: Duration,
    ) -> Result<HashMap<String, Document>, Status> {
        self.batch_get_in(names, timeout, None).await
    }

    /// [`Self::batch_get`] in the read-only `transaction`, when given, so that it sees that
    /// transaction's snapshot.
    pub(super) async fn batch_get_in(
        &self,
        names: &[&str],
        timeout: Duration,
        transaction: Option<&[u8]>,
    ) -> Result<HashMap<String, Document>, Status> {
        self.counters.rpc();
        self.counters.reads(names.len() as u64);
        let request = BatchGetDocumentsRequest {
            database: self.database.clone(),
            documents: names.iter().map(|name| name.to_string()).collect(),
            consistency_selector: transaction.map(|transaction| {
                batch_get_documents_request::ConsistencySelector::Transaction(transaction.to_vec())
            }),
            ..Default::default()
        };
        let mut stream = self
            .client()
            .batch_get_documents(Self::request(request, timeout))
            .await?
            .into_inner();
        let mut found = HashMap::new();
        while let Some(response) = stream.message().await? {
            if let Some(batch_get_documents_response::Result::Found(document)) = response.result {
                found.insert(document.name.clone(), document);
            }
        }
        Ok(found)
    }

    /// Applies all `writes` or none, within `timeout`; the results are in the order of the
    /// writes.
    pub(super) async fn commit(
        &self,
        writes: Vec<Write>,
        timeout: Duration,
    ) -> Result<Vec<WriteResult>, Status> {
        self.counters.commit_attempt();
        let count = writes.len() as u64;
        let request = CommitRequest {
            database: self.database.clone(),
            writes,
            ..Default::default()
        };
        let response = self
            .client()
            .commit(Self::request(request, timeout))
            .await?;
        self.counters.committed(count);
        Ok(response.into_inner().write_results)
    }

    /// One document by name; `None` when it does not exist.
    pub(super) async fn get(&self, name: String) -> Result<Option<Document>, StoreError> {
        self.get_within(name, MAX_RPC_TIMEOUT)
            .await
            .map_err(AttemptError::into_store_error)
    }

    /// One document by name within `timeout`, failing as a retryable attempt may.
    pub(super) async fn get_within(
        &self,
        name: String,
        timeout: Duration,
    ) -> Result<Option<Document>, AttemptError> {
        self.counters.rpc();
        self.counters.reads(1);
        let request = GetDocumentRequest {
            name,
            ..Default::default()
        };
        match self
            .client()
            .get_document(Self::request(request, timeout))
            .await
        {
            Ok(response) => Ok(Some(response.into_inner())),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(read_failure(status)),
        }
    }

    /// Runs one query, now.
    pub(super) async fn run_query(
        &self,
        query: StructuredQuery,
    ) -> Result<Vec<Document>, StoreError> {
        self.query_at(query, None)
            .await
            .map(|(documents, _)| documents)
    }

    /// Runs one query in the read-only `snapshot`; returns the transaction that holds it,
    /// for the reads that must see the same snapshot.
    pub(super) async fn run_query_in(
        &self,
        query: StructuredQuery,
        snapshot: Snapshot,
    ) -> Result<(Vec<Document>, Vec<u8>), StoreError> {
        let selector = snapshot.selector(
            run_query_request::ConsistencySelector::NewTransaction,
            run_query_request::ConsistencySelector::Transaction,
        );
        let (documents, begun) = self.query_at(query, Some(selector)).await?;
        Ok((documents, snapshot.held(begun)?))
    }

    async fn query_at(
        &self,
        query: StructuredQuery,
        consistency_selector: Option<run_query_request::ConsistencySelector>,
    ) -> Result<(Vec<Document>, Option<Vec<u8>>), StoreError> {
        self.counters.rpc();
        let request = RunQueryRequest {
            parent: format!("{}/documents", self.database),
            query_type: Some(run_query_request::QueryType::StructuredQuery(query)),
            consistency_selector,
            ..Default::default()
        };
        let read = async {
            let mut stream = self
                .client()
                .run_query(Self::request(request, MAX_RPC_TIMEOUT))
                .await?
                .into_inner();
            let (mut documents, mut begun) = (Vec::new(), None);
            while let Some(response) = stream.message().await? {
                if !response.transaction.is_empty() {
                    begun = Some(response.transaction);
                }
                documents.extend(response.document);
            }
            Ok::<_, Status>((documents, begun))
        };
        let (documents, begun) = read
            .await
            .map_err(|status| read_failure(status).into_store_error())?;
        // A query is billed one read per document, and at least one.
        self.counters.reads(documents.len().max(1) as u64);
        Ok((documents, begun))
    }
}
