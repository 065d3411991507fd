//! One small collection (or one document) held whole in memory and kept current by
//! Firestore's `Listen` stream, so that reading one of its documents costs no call at all; and
//! how fresh that copy is. Followed alone, a document can also say when it changed.
//!
//! The documents a stream sends are a consistent image of the collection only once a target
//! change with a `read_time` says so: a `CURRENT` or `NO_CHANGE` for the whole stream or for
//! the collection's target, once that target is `CURRENT`. Until then they are kept aside, and
//! applied together at that point, so that a reader never sees part of a change.
//!
//! Firestore says nothing on a stream whose documents do not change, so an idle copy could not
//! tell that it is still current. When `refresh_every` passes without a consistent point, the
//! mirror adds a probe: a second target, on one document that does not exist, removed again
//! once it is current. Adding a target brings the whole stream to a new consistent point, and
//! that point dates the collection too. A probe is billed like a query that finds nothing: one
//! read.
//!
//! A stream that fails or ends is opened again after a growing pause, resuming from the last
//! consistent point's resume token. When Firestore resets or removes the target, when its
//! existence filter disagrees with the documents held, or after a failure that resuming cannot
//! mend, the collection is loaded again from scratch.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use firestore::gcloud_sdk::GoogleAuthMiddleware;
use firestore::gcloud_sdk::google::firestore::v1::firestore_client::FirestoreClient;
use firestore::gcloud_sdk::google::firestore::v1::listen_response::ResponseType;
use firestore::gcloud_sdk::google::firestore::v1::target_change::TargetChangeType;
use firestore::gcloud_sdk::google::firestore::v1::{
    Document, ListenRequest, ListenResponse, StructuredQuery, Target, TargetChange, listen_request,
    structured_query, target,
};
use firestore::gcloud_sdk::tonic::Status;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::client::{describe, read_failure};
use super::counters::FirestoreCounters;

/// The collection's target on every stream.
const COLLECTION_TARGET: i32 = 1;

/// Probes take the ids after the collection's, a new one each: an id is not free again until
/// Firestore has acknowledged its removal.
const FIRST_PROBE_TARGET: i32 = 2;

/// How long Firestore may take to open the stream or to answer a probe before the stream is
/// taken for dead: a connection can fall silent without failing.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The probe's document, which nothing writes: a listen on a missing document delivers none.
const PROBE_DOCUMENT: &str = "collection_mirror_probes/absent";

/// What the mirror can say of a document.
#[derive(Debug, Clone, PartialEq)]
pub enum Freshness {
    /// The document as Firestore had it at a consistent point recent enough, or `None` when
    /// the collection had no such document then.
    Fresh(Option<Document>),
    /// The copy cannot be known to be recent enough: read the document from Firestore.
    Stale,
}

/// The collection as of its last consistent point.
#[derive(Default)]
struct View {
    /// By document id.
    documents: HashMap<String, Document>,
    /// When the last consistent point was received, on the local monotonic clock. The
    /// documents are as they were at that point's `read_time`, a little before it was sent:
    /// an age measured from receipt leaves out the time the message took to arrive.
    consistent_at: Option<Instant>,
}

fn read(view: &RwLock<View>) -> RwLockReadGuard<'_, View> {
    // The view is changed only as a whole consistent point, under the lock, so a poisoned
    // lock still holds the last one.
    view.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(view: &RwLock<View>) -> RwLockWriteGuard<'_, View> {
    view.write().unwrap_or_else(PoisonError::into_inner)
}

/// All the documents of one collection, kept current in the background until dropped.
pub struct CollectionMirror {
    view: Arc<RwLock<View>>,
    task: JoinHandle<()>,
}

impl CollectionMirror {
    /// Starts following `collection` of `database` (`projects/{project}/databases/{database}`)
    /// on a task of its own, adding a probe whenever `refresh_every` passes without a
    /// consistent point; the documents and probes it receives are counted in `counters`.
    /// Must be called within a Tokio runtime.
    pub fn start(
        client: FirestoreClient<GoogleAuthMiddleware>,
        database: String,
        collection: &'static str,
        refresh_every: Duration,
        counters: Arc<FirestoreCounters>,
    ) -> Self {
        Self::follow(
            client,
            database,
            collection,
            None,
            refresh_every,
            counters,
            None,
        )
    }

    /// [`Self::start`] on the one document `id` of `collection`, calling `on_change` at each
    /// consistent point that changed it (the first included when it exists).
    pub fn start_document(
        client: FirestoreClient<GoogleAuthMiddleware>,
        database: String,
        (collection, id): (&'static str, &str),
        refresh_every: Duration,
        counters: Arc<FirestoreCounters>,
        on_change: Box<dyn Fn() + Send + Sync>,
    ) -> Self {
        let document = format!("{database}/documents/{collection}/{id}");
        Self::follow(
            client,
            database,
            collection,
            Some(document),
            refresh_every,
            counters,
            Some(on_change),
        )
    }

    fn follow(
        client: FirestoreClient<GoogleAuthMiddleware>,
        database: String,
        collection: &'static str,
        document: Option<String>,
        refresh_every: Duration,
        counters: Arc<FirestoreCounters>,
        on_change: Option<Box<dyn Fn() + Send + Sync>>,
    ) -> Self {
        let view = Arc::new(RwLock::new(View::default()));
        let listener = Listener {
            client,
            changes: Changes::new(format!("{database}/documents/{collection}/")),
            probe_document: format!("{database}/documents/{PROBE_DOCUMENT}"),
            database,
            collection,
            document,
            refresh_every,
            view: Arc::clone(&view),
            counters,
            on_change,
        };
        let task = tokio::spawn(listener.run());
        Self { view, task }
    }

    /// The document `id` when the copy was consistent with Firestore no longer than
    /// `max_staleness` ago, else [`Freshness::Stale`].
    pub fn get(&self, id: &str, max_staleness: Duration) -> Freshness {
        let view = read(&self.view);
        match view.consistent_at {
            Some(at) if at.elapsed() <= max_staleness => {
                Freshness::Fresh(view.documents.get(id).cloned())
            }
            _ => Freshness::Stale,
        }
    }

    /// Whether the copy has been consistent with Firestore at least once.
    pub fn ready(&self) -> bool {
        read(&self.view).consistent_at.is_some()
    }
}

impl Drop for CollectionMirror {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a message of the stream means for the copy.
#[derive(Debug, PartialEq)]
enum Step {
    Continue,
    /// The changes held back were applied: the copy is consistent as of now.
    Consistent,
    /// The stream can no longer be followed, for this reason.
    Restart(String),
}

/// What the stream has said since the last consistent point, and where to resume it.
struct Changes {
    /// `{database}/documents/{collection}/`: a document's name is this and its id.
    prefix: String,
    /// The last consistent point's, if a resumed stream may start from it.
    resume_token: Option<Vec<u8>>,
    /// Whether the collection's target is current on this stream: only then can a read time
    /// make a consistent point.
    current: bool,
    /// Documents changed (`Some`) or gone (`None`) since the last consistent point, by id.
    pending: HashMap<String, Option<Document>>,
    /// Documents delivered since the target was added or reset.
    delivered: u64,
}

impl Changes {
    fn new(prefix: String) -> Self {
        Self {
            prefix,
            resume_token: None,
            current: false,
            pending: HashMap::new(),
            delivered: 0,
        }
    }

    /// A new stream begins. Resumed, it sends the changes since the resume token; from
    /// scratch, it sends every document, so any held that it does not send are gone.
    fn opened(&mut self, view: &RwLock<View>) {
        self.current = false;
        self.delivered = 0;
        self.pending.clear();
        if self.resume_token.is_none() {
            self.mark_all_gone(view);
        }
    }

    fn mark_all_gone(&mut self, view: &RwLock<View>) {
        self.pending = read(view)
            .documents
            .keys()
            .map(|id| (id.clone(), None))
            .collect();
    }

    fn forget_resume_token(&mut self) {
        self.resume_token = None;
    }

    fn handle(
        &mut self,
        response: ListenResponse,
        view: &RwLock<View>,
        counters: &FirestoreCounters,
    ) -> Step {
        match response.response_type {
            Some(ResponseType::TargetChange(change)) => {
                self.on_target_change(change, view, counters)
            }
            Some(ResponseType::DocumentChange(change)) => {
                if let Some(document) = change.document {
                    if change.target_ids.contains(&COLLECTION_TARGET) {
                        counters.reads(1);
                        self.delivered += 1;
                        let name = document.name.clone();
                        self.hold(&name, Some(document));
                    } else if change.removed_target_ids.contains(&COLLECTION_TARGET) {
                        self.hold(&document.name, None);
                    }
                }
                Step::Continue
            }
            Some(ResponseType::DocumentDelete(delete)) => {
                if concerns_collection(&delete.removed_target_ids) {
                    self.hold(&delete.document, None);
                }
                Step::Continue
            }
            Some(ResponseType::DocumentRemove(remove)) => {
                if concerns_collection(&remove.removed_target_ids) {
                    self.hold(&remove.document, None);
                }
                Step::Continue
            }
            Some(ResponseType::Filter(filter)) if filter.target_id == COLLECTION_TARGET => {
                let held = self.count_held(view);
                if usize::try_from(filter.count).is_ok_and(|count| count == held) {
                    Step::Continue
                } else {
                    self.forget_resume_token();
                    Step::Restart(format!(
                        "Firestore counts {} documents where the mirror holds {held}",
                        filter.count
                    ))
                }
            }
            Some(ResponseType::Filter(_)) | None => Step::Continue,
        }
    }

    fn on_target_change(
        &mut self,
        change: TargetChange,
        view: &RwLock<View>,
        counters: &FirestoreCounters,
    ) -> Step {
        if !concerns_collection(&change.target_ids) {
            return Step::Continue;
        }
        match TargetChangeType::try_from(change.target_change_type) {
            Ok(TargetChangeType::Add) => {
                self.delivered = 0;
                Step::Continue
            }
            Ok(TargetChangeType::Remove) => {
                self.forget_resume_token();
                let cause = change
                    .cause
                    .map_or_else(|| "no cause".to_owned(), |cause| cause.message);
                Step::Restart(format!(
                    "Firestore removed the collection's target ({cause})"
                ))
            }
            Ok(TargetChangeType::Reset) => {
                tracing::debug!(prefix = %self.prefix, "Firestore reset the collection's target");
                self.forget_resume_token();
                self.current = false;
                self.delivered = 0;
                self.mark_all_gone(view);
                Step::Continue
            }
            Ok(TargetChangeType::Current) => {
                if !self.current && self.delivered == 0 {
                    // A target's first answer is billed like a query: one read at least.
                    counters.reads(1);
                }
                self.current = true;
                self.consistent_if_dated(change, view)
            }
            Ok(TargetChangeType::NoChange) => self.consistent_if_dated(change, view),
            Err(_) => {
                tracing::warn!(
                    change_type = change.target_change_type,
                    "unknown target change type from Firestore; ignored"
                );
                Step::Continue
            }
        }
    }

    fn consistent_if_dated(&mut self, change: TargetChange, view: &RwLock<View>) -> Step {
        if !self.current || change.read_time.is_none() {
            return Step::Continue;
        }
        let mut view = write(view);
        for (id, document) in self.pending.drain() {
            match document {
                Some(document) => view.documents.insert(id, document),
                None => view.documents.remove(&id),
            };
        }
        view.consistent_at = Some(Instant::now());
        if !change.resume_token.is_empty() {
            self.resume_token = Some(change.resume_token);
        }
        Step::Consistent
    }

    /// Holds back a change of the document named `name` until the next consistent point.
    fn hold(&mut self, name: &str, document: Option<Document>) {
        match name
            .strip_prefix(&self.prefix)
            .filter(|id| !id.is_empty() && !id.contains('/'))
        {
            Some(id) => {
                self.pending.insert(id.to_owned(), document);
            }
            None => tracing::warn!(
                name,
                prefix = %self.prefix,
                "a document outside the collection came on its target; ignored"
            ),
        }
    }

    /// The documents held once the changes held back are applied.
    fn count_held(&self, view: &RwLock<View>) -> usize {
        let view = read(view);
        let mut count = view.documents.len();
        for (id, document) in &self.pending {
            match (view.documents.contains_key(id), document.is_some()) {
                (false, true) => count += 1,
                (true, false) => count -= 1,
                _ => {}
            }
        }
        count
    }
}

/// Whether a message naming these targets is about the collection's: none named means all.
fn concerns_collection(target_ids: &[i32]) -> bool {
    target_ids.is_empty() || target_ids.contains(&COLLECTION_TARGET)
}

/// The background side of a [`CollectionMirror`].
struct Listener {
    client: FirestoreClient<GoogleAuthMiddleware>,
    database: String,
    collection: &'static str,
    /// The full name of the one document followed, when not the whole collection.
    document: Option<String>,
    /// Called at each consistent point that changed the copy.
    on_change: Option<Box<dyn Fn() + Send + Sync>>,
    probe_document: String,
    refresh_every: Duration,
    changes: Changes,
    view: Arc<RwLock<View>>,
    counters: Arc<FirestoreCounters>,
}

/// Why a stream was given up, and whether it reached a consistent point first.
struct Ended {
    reason: String,
    consistent: bool,
}

/// The state of one open stream.
struct OpenStream {
    requests: mpsc::UnboundedSender<ListenRequest>,
    next_probe: i32,
    /// The probe waiting for its answer, and when it was sent.
    probe: Option<(i32, Instant)>,
    /// Since when the stream has had no consistent point nor probe answer.
    quiet_since: Instant,
    consistent: bool,
}

impl OpenStream {
    fn ended(&self, reason: impl Into<String>) -> Ended {
        Ended {
            reason: reason.into(),
            consistent: self.consistent,
        }
    }
}

impl Listener {
    async fn run(mut self) {
        let mut pauses = reconnect_pauses();
        loop {
            let ended = self.follow_one_stream().await;
            if ended.consistent {
                pauses = reconnect_pauses();
            }
            let pause = pauses.next().unwrap_or(MAX_RECONNECT_PAUSE);
            tracing::warn!(
                collection = self.collection,
                reason = %ended.reason,
                ?pause,
                "the collection mirror's listen stream ended; it is opened again after a pause"
            );
            tokio::time::sleep(pause).await;
        }
    }

    /// Opens a stream and follows it until it fails, ends, or can no longer be followed.
    async fn follow_one_stream(&mut self) -> Ended {
        let (requests, mut outgoing) = mpsc::unbounded_channel();
        let mut stream = OpenStream {
            requests,
            next_probe: FIRST_PROBE_TARGET,
            probe: None,
            quiet_since: Instant::now(),
            consistent: false,
        };
        self.changes.opened(&self.view);
        // The receiver is alive until the stream is dropped, so the send cannot fail.
        let _ = stream.requests.send(self.add_collection_target());
        self.counters.rpc();
        let opening = self
            .client
            .listen(futures_util::stream::poll_fn(move |context| {
                outgoing.poll_recv(context)
            }));
        let mut responses = match tokio::time::timeout(ANSWER_TIMEOUT, opening).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => return stream.ended(self.failure(status)),
            Err(_) => return stream.ended("Firestore did not open the stream in time"),
        };
        loop {
            // None when the wait is too long for the clock: then nothing is due.
            let wake = match stream.probe {
                Some((_, sent)) => sent.checked_add(ANSWER_TIMEOUT),
                None => stream.quiet_since.checked_add(self.refresh_every),
            };
            tokio::select! {
                message = responses.next() => {
                    let response = match message {
                        Some(Ok(response)) => response,
                        Some(Err(status)) => return stream.ended(self.failure(status)),
                        None => return stream.ended("Firestore ended the stream"),
                    };
                    if let Err(reason) = self.on_probe_answer(&response, &mut stream) {
                        return stream.ended(reason);
                    }
                    let changing = !self.changes.pending.is_empty();
                    match self.changes.handle(response, &self.view, &self.counters) {
                        Step::Continue => {}
                        Step::Consistent => {
                            if let Some(on_change) = self.on_change.as_ref().filter(|_| changing) {
                                on_change();
                            }
                            stream.consistent = true;
                            stream.quiet_since = Instant::now();
                        }
                        Step::Restart(reason) => return stream.ended(reason),
                    }
                }
                () = sleep_until(wake) => {
                    if stream.probe.is_some() {
                        return stream.ended("Firestore did not answer a probe in time");
                    }
                    if let Err(reason) = self.probe(&mut stream) {
                        return stream.ended(reason);
                    }
                }
            }
        }
    }

    /// The target of what is followed: the collection's query, or its one document.
    fn add_collection_target(&self) -> ListenRequest {
        let target_type = match &self.document {
            Some(document) => target::TargetType::Documents(target::DocumentsTarget {
                documents: vec![document.clone()],
            }),
            None => target::TargetType::Query(target::QueryTarget {
                parent: format!("{}/documents", self.database),
                query_type: Some(target::query_target::QueryType::StructuredQuery(
                    StructuredQuery {
                        from: vec![structured_query::CollectionSelector {
                            collection_id: self.collection.to_owned(),
                            all_descendants: false,
                        }],
                        ..Default::default()
                    },
                )),
            }),
        };
        self.add_target(Target {
            target_id: COLLECTION_TARGET,
            target_type: Some(target_type),
            resume_type: self
                .changes
                .resume_token
                .clone()
                .map(target::ResumeType::ResumeToken),
            ..Default::default()
        })
    }

    fn add_target(&self, target: Target) -> ListenRequest {
        self.request(listen_request::TargetChange::AddTarget(target))
    }

    fn request(&self, change: listen_request::TargetChange) -> ListenRequest {
        ListenRequest {
            database: self.database.clone(),
            target_change: Some(change),
            ..Default::default()
        }
    }

    /// Adds a probe target, so that the stream comes to a new consistent point.
    fn probe(&self, stream: &mut OpenStream) -> Result<(), String> {
        let id = stream.next_probe;
        stream.next_probe = id
            .checked_add(1)
            .ok_or("the stream ran out of probe target ids")?;
        let target = Target {
            target_id: id,
            target_type: Some(target::TargetType::Documents(target::DocumentsTarget {
                documents: vec![self.probe_document.clone()],
            })),
            ..Default::default()
        };
        // The receiver lives as long as the stream.
        let _ = stream.requests.send(self.add_target(target));
        self.counters.reads(1);
        stream.probe = Some((id, Instant::now()));
        Ok(())
    }

    /// A probe is answered by its `CURRENT`; it is then removed. A probe Firestore refuses
    /// leaves the stream without a way to stay fresh.
    fn on_probe_answer(
        &self,
        response: &ListenResponse,
        stream: &mut OpenStream,
    ) -> Result<(), String> {
        let (Some(ResponseType::TargetChange(change)), Some((probe, _))) =
            (&response.response_type, stream.probe)
        else {
            return Ok(());
        };
        if !(change.target_ids.is_empty() || change.target_ids.contains(&probe)) {
            return Ok(());
        }
        match TargetChangeType::try_from(change.target_change_type) {
            Ok(TargetChangeType::Current) => {
                let remove = listen_request::TargetChange::RemoveTarget(probe);
                let _ = stream.requests.send(self.request(remove));
                stream.probe = None;
                stream.quiet_since = Instant::now();
                Ok(())
            }
            Ok(TargetChangeType::Remove) => match &change.cause {
                Some(cause) => Err(format!("Firestore refused a probe: {}", cause.message)),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// Why the stream failed; a failure that resuming cannot mend forgets the resume token.
    fn failure(&mut self, status: Status) -> String {
        let reason = describe(&status);
        if !read_failure(status).retryable() {
            self.changes.forget_resume_token();
        }
        reason
    }
}

/// Sleeps until `wake`, or for ever when it is `None`.
async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(wake) => tokio::time::sleep_until(wake).await,
        None => std::future::pending().await,
    }
}

const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(10);

/// The pauses before opening the stream again: short at first, growing while Firestore stays
/// out of reach, jittered so that the instances do not all come back at once.
fn reconnect_pauses() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(MAX_RECONNECT_PAUSE)
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
#[path = "../../../tests/support/emulator.rs"]
mod emulator_process;

#[cfg(test)]
mod tests {
    use super::*;

    mod protocol {
        //! The stream's messages as Firestore sends them, read without a server.

        use super::*;
        use firestore::gcloud_sdk::google::firestore::v1::{
            DocumentChange, DocumentDelete, ExistenceFilter, Value, value::ValueType,
        };
        use firestore::gcloud_sdk::prost_types::Timestamp;

        const PREFIX: &str = "projects/p/databases/(default)/documents/overrides/";

        fn document(id: &str, limit: i64) -> Document {
            Document {
                name: format!("{PREFIX}{id}"),
                fields: HashMap::from([(
                    "limit".to_owned(),
                    Value {
                        value_type: Some(ValueType::IntegerValue(limit)),
                    },
                )]),
                ..Default::default()
            }
        }

        fn changed(document: Document, target_ids: Vec<i32>) -> ListenResponse {
            ListenResponse {
                response_type: Some(ResponseType::DocumentChange(DocumentChange {
                    document: Some(document),
                    target_ids,
                    removed_target_ids: vec![],
                })),
            }
        }

        fn deleted(id: &str, removed_target_ids: Vec<i32>) -> ListenResponse {
            ListenResponse {
                response_type: Some(ResponseType::DocumentDelete(DocumentDelete {
                    document: format!("{PREFIX}{id}"),
                    removed_target_ids,
                    read_time: None,
                })),
            }
        }

        fn target_change(
            change_type: TargetChangeType,
            target_ids: Vec<i32>,
            dated: bool,
        ) -> ListenResponse {
            ListenResponse {
                response_type: Some(ResponseType::TargetChange(TargetChange {
                    target_change_type: change_type as i32,
                    target_ids,
                    cause: None,
                    resume_token: if dated { b"token".to_vec() } else { vec![] },
                    read_time: dated.then_some(Timestamp {
                        seconds: 1,
                        nanos: 0,
                    }),
                })),
            }
        }

        /// What Firestore sends once a target has sent its documents: `CURRENT`, then the
        /// whole stream's consistent point.
        fn current_then_consistent() -> [ListenResponse; 2] {
            [
                target_change(TargetChangeType::Current, vec![COLLECTION_TARGET], false),
                target_change(TargetChangeType::NoChange, vec![], true),
            ]
        }

        struct Follower {
            changes: Changes,
            view: RwLock<View>,
            counters: FirestoreCounters,
        }

        impl Follower {
            fn new() -> Self {
                let mut follower = Self {
                    changes: Changes::new(PREFIX.to_owned()),
                    view: RwLock::default(),
                    counters: FirestoreCounters::default(),
                };
                follower.changes.opened(&follower.view);
                follower
            }

            fn receive(&mut self, responses: impl IntoIterator<Item = ListenResponse>) -> Step {
                let mut last = Step::Continue;
                for response in responses {
                    last = self.changes.handle(response, &self.view, &self.counters);
                }
                last
            }

            /// The ids held and whether a consistent point was reached.
            fn held(&self) -> (Vec<String>, bool) {
                let view = read(&self.view);
                let mut ids: Vec<_> = view.documents.keys().cloned().collect();
                ids.sort();
                (ids, view.consistent_at.is_some())
            }

            /// A first load of `ids`, consistent.
            fn loaded(ids: &[&str]) -> Self {
                let mut follower = Self::new();
                for id in ids {
                    follower.receive([changed(document(id, 1), vec![COLLECTION_TARGET])]);
                }
                follower.receive(current_then_consistent());
                follower
            }
        }

        fn ids(ids: &[&str]) -> Vec<String> {
            ids.iter().map(|id| id.to_string()).collect()
        }

        #[test]
        fn documents_are_held_back_until_a_consistent_point() {
            let mut follower = Follower::new();
            follower.receive([
                target_change(TargetChangeType::Add, vec![COLLECTION_TARGET], false),
                changed(document("alice", 1), vec![COLLECTION_TARGET]),
                target_change(TargetChangeType::Current, vec![COLLECTION_TARGET], false),
            ]);
            assert_eq!(follower.held(), (vec![], false));

            let step = follower.receive([target_change(TargetChangeType::NoChange, vec![], true)]);
            assert_eq!(step, Step::Consistent);
            assert_eq!(follower.held(), (ids(&["alice"]), true));
            assert_eq!(
                follower.changes.resume_token.as_deref(),
                Some(&b"token"[..])
            );
        }

        #[test]
        fn a_read_time_before_the_target_is_current_is_no_consistent_point() {
            let mut follower = Follower::new();
            let step = follower.receive([
                changed(document("alice", 1), vec![COLLECTION_TARGET]),
                target_change(TargetChangeType::NoChange, vec![], true),
            ]);
            assert_eq!(step, Step::Continue);
            assert_eq!(follower.held(), (vec![], false));
        }

        #[test]
        fn a_current_target_with_its_own_read_time_is_a_consistent_point() {
            let mut follower = Follower::new();
            follower.receive([changed(document("alice", 1), vec![COLLECTION_TARGET])]);
            let step = follower.receive([target_change(
                TargetChangeType::Current,
                vec![COLLECTION_TARGET],
                true,
            )]);
            assert_eq!(step, Step::Consistent);
            assert_eq!(follower.held(), (ids(&["alice"]), true));
        }

        #[test]
        fn changes_and_deletes_apply_at_the_next_consistent_point() {
            let mut follower = Follower::loaded(&["alice", "bob"]);
            follower.receive([
                changed(document("alice", 2), vec![COLLECTION_TARGET]),
                deleted("bob", vec![COLLECTION_TARGET]),
                changed(document("carol", 3), vec![COLLECTION_TARGET]),
            ]);
            assert_eq!(follower.held().0, ids(&["alice", "bob"]));

            follower.receive([target_change(TargetChangeType::NoChange, vec![], true)]);
            assert_eq!(follower.held().0, ids(&["alice", "carol"]));
            let alice = read(&follower.view).documents["alice"].clone();
            assert_eq!(alice, document("alice", 2));
        }

        #[test]
        fn a_reset_drops_the_documents_firestore_does_not_send_again() {
            let mut follower = Follower::loaded(&["alice", "bob"]);
            follower.receive([
                target_change(TargetChangeType::Reset, vec![COLLECTION_TARGET], true),
                changed(document("bob", 1), vec![COLLECTION_TARGET]),
            ]);
            assert_eq!(follower.changes.resume_token, None);
            // Not current again until the reset target says so.
            follower.receive([target_change(TargetChangeType::NoChange, vec![], true)]);
            assert_eq!(follower.held().0, ids(&["alice", "bob"]));

            follower.receive(current_then_consistent());
            assert_eq!(follower.held().0, ids(&["bob"]));
        }

        #[test]
        fn a_stream_opened_from_scratch_replaces_the_collection() {
            let mut follower = Follower::loaded(&["alice", "bob"]);
            follower.changes.forget_resume_token();
            follower.changes.opened(&follower.view);
            follower.receive([changed(document("carol", 1), vec![COLLECTION_TARGET])]);
            follower.receive(current_then_consistent());
            assert_eq!(follower.held().0, ids(&["carol"]));
        }

        #[test]
        fn a_resumed_stream_keeps_the_collection_and_adds_its_changes() {
            let mut follower = Follower::loaded(&["alice", "bob"]);
            follower.receive([changed(document("dave", 1), vec![COLLECTION_TARGET])]);
            // The stream breaks before a consistent point: the resumed one sends it again.
            follower.changes.opened(&follower.view);
            follower.receive([changed(document("carol", 1), vec![COLLECTION_TARGET])]);
            follower.receive(current_then_consistent());
            assert_eq!(follower.held().0, ids(&["alice", "bob", "carol"]));
        }

        #[test]
        fn other_targets_documents_are_not_the_collections() {
            let mut follower = Follower::loaded(&["alice"]);
            follower.receive([
                changed(document("bob", 1), vec![FIRST_PROBE_TARGET]),
                deleted("alice", vec![FIRST_PROBE_TARGET]),
                target_change(TargetChangeType::Current, vec![FIRST_PROBE_TARGET], true),
                target_change(TargetChangeType::NoChange, vec![], true),
            ]);
            assert_eq!(follower.held().0, ids(&["alice"]));
        }

        #[test]
        fn an_existence_filter_that_disagrees_reloads_from_scratch() {
            let mut follower = Follower::loaded(&["alice", "bob"]);
            let filter = |count| ListenResponse {
                response_type: Some(ResponseType::Filter(ExistenceFilter {
                    target_id: COLLECTION_TARGET,
                    count,
                    unchanged_names: None,
                })),
            };
            follower.receive([deleted("bob", vec![COLLECTION_TARGET])]);
            assert_eq!(follower.receive([filter(1)]), Step::Continue);
            assert!(follower.changes.resume_token.is_some());

            let step = follower.receive([filter(2)]);
            assert!(matches!(step, Step::Restart(_)), "{step:?}");
            assert_eq!(follower.changes.resume_token, None);
        }

        #[test]
        fn the_removal_of_the_collections_target_reloads_from_scratch() {
            let mut follower = Follower::loaded(&["alice"]);
            let step = follower.receive([target_change(
                TargetChangeType::Remove,
                vec![COLLECTION_TARGET],
                false,
            )]);
            assert!(matches!(step, Step::Restart(_)), "{step:?}");
            assert_eq!(follower.changes.resume_token, None);
        }

        #[test]
        fn each_document_delivered_is_a_billed_read_and_an_empty_answer_one() {
            let follower = Follower::loaded(&["alice", "bob"]);
            assert_eq!(follower.counters.snapshot().document_reads, 2);
            let empty = Follower::loaded(&[]);
            assert_eq!(empty.counters.snapshot().document_reads, 1);
        }
    }

    mod against_the_emulator {
        //! The mirror on a real stream, with documents written over the emulator's REST API.

        use super::super::emulator_process::{self, Emulator};
        use super::*;
        use crate::store::{FirestoreSettings, FirestoreStore};
        use firestore::gcloud_sdk::google::firestore::v1::value::ValueType;
        use serde_json::json;

        const COLLECTION: &str = "token_limit_overrides";

        /// Far longer than any answer takes, so that a wait ends only on a fault.
        const PATIENCE: Duration = Duration::from_secs(60);

        struct Fixture {
            mirror: CollectionMirror,
            counters: Arc<FirestoreCounters>,
        }

        async fn start(emulator: &Emulator, project: &str, refresh_every: Duration) -> Fixture {
            let store = FirestoreStore::connect(FirestoreSettings {
                project_id: project.to_owned(),
                database_id: "(default)".to_owned(),
                emulator_host: Some(emulator.host()),
                cache_bytes: 0,
            })
            .await
            .unwrap();
            let counters = Arc::new(FirestoreCounters::default());
            let mirror = CollectionMirror::start(
                store.client(),
                store.database.clone(),
                COLLECTION,
                refresh_every,
                Arc::clone(&counters),
            );
            Fixture { mirror, counters }
        }

        /// A mirror of a collection with no document yet, on the shared emulator, in a
        /// project of its own named after `label`.
        async fn ready_on_an_empty_collection(label: &str) -> (&'static Emulator, String, Fixture) {
            let emulator = emulator_process::shared().await;
            let project = emulator_process::unique_project(label);
            let fixture = start(emulator, &project, Duration::from_secs(1)).await;
            wait_until("the first consistent point", || fixture.mirror.ready()).await;
            (emulator, project, fixture)
        }

        async fn put(emulator: &Emulator, project: &str, id: &str, limit: i64) {
            let response = reqwest::Client::new()
                .patch(emulator.document_url(project, &format!("{COLLECTION}/{id}")))
                .bearer_auth("owner")
                .json(&json!({ "fields": { "limit": { "integerValue": limit.to_string() } } }))
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success(), "{response:?}");
        }

        async fn delete(emulator: &Emulator, project: &str, id: &str) {
            let response = reqwest::Client::new()
                .delete(emulator.document_url(project, &format!("{COLLECTION}/{id}")))
                .bearer_auth("owner")
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success(), "{response:?}");
        }

        /// The `limit` of the document as the mirror has it: `Some(None)` for a fresh absence,
        /// `None` when stale.
        fn limit(
            mirror: &CollectionMirror,
            id: &str,
            max_staleness: Duration,
        ) -> Option<Option<i64>> {
            match mirror.get(id, max_staleness) {
                Freshness::Stale => None,
                Freshness::Fresh(document) => {
                    Some(
                        document.map(|document| match document.fields["limit"].value_type {
                            Some(ValueType::IntegerValue(limit)) => limit,
                            ref other => panic!("limit is {other:?}"),
                        }),
                    )
                }
            }
        }

        async fn wait_until(what: &str, condition: impl Fn() -> bool) {
            let started = Instant::now();
            while !condition() {
                assert!(
                    started.elapsed() < PATIENCE,
                    "waited {PATIENCE:?} for {what}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        #[tokio::test]
        async fn the_collection_as_it_was_before_the_start_is_loaded_and_its_reads_counted() {
            let emulator = emulator_process::shared().await;
            let project = emulator_process::unique_project("mirror-load");
            put(emulator, &project, "alice", 1000).await;
            put(emulator, &project, "bob", 2000).await;
            let other = reqwest::Client::new()
                .patch(emulator.document_url(&project, "elsewhere/carol"))
                .bearer_auth("owner")
                .json(&json!({ "fields": {} }))
                .send()
                .await
                .unwrap();
            assert!(other.status().is_success());

            // Never a probe, so the reads counted are the load's; and a wait too long for
            // the clock is no fault.
            let fixture = start(emulator, &project, Duration::MAX).await;
            wait_until("the first consistent point", || fixture.mirror.ready()).await;

            let fresh = |id| limit(&fixture.mirror, id, PATIENCE);
            assert_eq!(fresh("alice"), Some(Some(1000)));
            assert_eq!(fresh("bob"), Some(Some(2000)));
            assert_eq!(fresh("carol"), Some(None));
            let counts = fixture.counters.snapshot();
            assert_eq!((counts.rpcs, counts.document_reads), (1, 2));
        }

        #[tokio::test]
        async fn documents_created_updated_and_deleted_after_the_start_are_followed() {
            let (emulator, project, fixture) = ready_on_an_empty_collection("mirror-follow").await;
            let alice = || limit(&fixture.mirror, "alice", Duration::from_secs(5));
            assert_eq!(alice(), Some(None));

            put(emulator, &project, "alice", 1000).await;
            wait_until("the new document", || alice() == Some(Some(1000))).await;
            put(emulator, &project, "alice", 3000).await;
            wait_until("the update", || alice() == Some(Some(3000))).await;
            delete(emulator, &project, "alice").await;
            wait_until("the delete", || alice() == Some(None)).await;
        }

        #[tokio::test]
        async fn an_idle_mirror_stays_fresh_by_probing() {
            let emulator = emulator_process::shared().await;
            let project = emulator_process::unique_project("mirror-idle");
            put(emulator, &project, "alice", 1000).await;
            let max_staleness = Duration::from_secs(3);
            let fixture = start(emulator, &project, Duration::from_millis(500)).await;
            wait_until("the first consistent point", || fixture.mirror.ready()).await;
            let loaded = fixture.counters.snapshot();

            // Nothing changes for three times the staleness allowed.
            tokio::time::sleep(3 * max_staleness).await;
            assert_eq!(
                limit(&fixture.mirror, "alice", max_staleness),
                Some(Some(1000))
            );
            let probes = fixture.counters.snapshot() - loaded;
            assert_eq!(probes.rpcs, 0, "one stream throughout");
            assert!(probes.document_reads > 0, "each probe is a billed read");
        }

        #[tokio::test]
        async fn an_outage_turns_the_mirror_stale_and_the_return_fresh_with_firestores_content() {
            let port = emulator_process::free_port();
            let mut emulator = Emulator::start_on(port).await;
            let project = emulator_process::unique_project("mirror-outage");
            put(&emulator, &project, "alice", 1000).await;
            let max_staleness = Duration::from_secs(2);
            let fixture = start(&emulator, &project, Duration::from_millis(500)).await;
            let alice = || limit(&fixture.mirror, "alice", max_staleness);
            wait_until("alice", || alice() == Some(Some(1000))).await;

            emulator.stop();
            wait_until("staleness", || alice().is_none()).await;

            // A new emulator starts empty: what the mirror then shows is what it holds.
            let emulator = Emulator::start_on(port).await;
            put(&emulator, &project, "bob", 2000).await;
            let bob = || limit(&fixture.mirror, "bob", max_staleness);
            wait_until("bob", || bob() == Some(Some(2000))).await;
            assert_eq!(alice(), Some(None));
        }

        #[tokio::test]
        async fn dropping_the_mirror_ends_its_task() {
            let (_, _, fixture) = ready_on_an_empty_collection("mirror-drop").await;
            let view = Arc::downgrade(&fixture.mirror.view);

            drop(fixture);
            wait_until("the task to end", || view.upgrade().is_none()).await;
        }
    }
}
