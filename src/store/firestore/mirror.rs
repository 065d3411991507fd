//! One small collection held whole in memory, kept current by Firestore's `Listen` stream.
//!
//! The documents a stream sends are a consistent image of the collection only once a target
//! change with a `read_time` says so: a `CURRENT` or `NO_CHANGE` for the whole stream or for
//! the collection's target, once that target is `CURRENT`. Until then they are kept aside, and
//! applied together at that point, so that a reader never sees part of a change. When
//! Firestore resets or removes the target, or its existence filter disagrees with the
//! documents held, the collection is loaded again from scratch.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use firestore::gcloud_sdk::google::firestore::v1::listen_response::ResponseType;
use firestore::gcloud_sdk::google::firestore::v1::target_change::TargetChangeType;
use firestore::gcloud_sdk::google::firestore::v1::{Document, ListenResponse, TargetChange};
use tokio::time::Instant;

use super::counters::FirestoreCounters;

/// The collection's target on every stream.
const COLLECTION_TARGET: i32 = 1;

/// Probes take the ids after the collection's, a new one each: an id is not free again until
/// Firestore has acknowledged its removal.
const FIRST_PROBE_TARGET: i32 = 2;

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
}
