//! `firestore.indexes.json` against every query the service and the schema issue.
//!
//! The Firestore emulator answers any query without an index; production refuses one that
//! needs a composite index it lacks. So each query in `store::queries` is checked here against
//! the declared indexes, using Firestore's rule for when a composite index is needed:
//!
//! - equality filters only, or a single `orderBy` with no filter: single-field indexes serve
//!   it (several equalities are served by merging them), so no composite index is needed; one
//!   that matches is used if declared, but it is optional;
//! - an `orderBy` together with an equality filter or a second `orderBy`: a composite index is
//!   needed whose fields are the equality fields (in any order, any direction) followed by the
//!   `orderBy` fields, in order, in the same direction. `__name__`, which Firestore appends to
//!   every index, is ignored;
//! - a range filter (`above`, whatever its bound) on the first `orderBy` field: served by the
//!   same index as the order alone.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;
use token_limits::store::queries::{self, Direction, QueryShape};

use Direction::{Ascending, Descending};

/// One composite index as declared.
#[derive(Debug, Clone, PartialEq)]
struct Index {
    collection: String,
    /// In declared order, `__name__` left out; `None` for an `arrayConfig` field, which no
    /// equality or order can use.
    fields: Vec<(String, Option<Direction>)>,
}

impl Index {
    fn new(collection: &str, fields: &[(&str, Direction)]) -> Index {
        Index {
            collection: collection.to_owned(),
            fields: fields
                .iter()
                .map(|(path, direction)| (path.to_string(), Some(*direction)))
                .collect(),
        }
    }
}

/// One `fieldOverrides` entry: a field's single-field index settings.
#[derive(Debug)]
struct FieldOverride {
    collection: String,
    field: String,
    ttl: bool,
    /// No single-field index at all: no query may rely on single-field indexes for it.
    unindexed: bool,
}

fn needs_composite_index(query: &QueryShape) -> bool {
    !query.order.is_empty() && query.equality.len() + query.order.len() > 1
}

fn serves(index: &Index, query: &QueryShape) -> bool {
    if index.collection != query.collection
        || index.fields.len() != query.equality.len() + query.order.len()
    {
        return false;
    }
    let (equality_part, order_part) = index.fields.split_at(query.equality.len());
    let equality_fields: BTreeSet<&str> = equality_part
        .iter()
        .filter(|(_, direction)| direction.is_some())
        .map(|(path, _)| path.as_str())
        .collect();
    let wanted_equality: BTreeSet<&str> = query.equality.iter().copied().collect();
    equality_fields.len() == query.equality.len()
        && equality_fields == wanted_equality
        && order_part.iter().zip(query.order).all(
            |((path, direction), (wanted_path, wanted_direction))| {
                path == wanted_path && *direction == Some(*wanted_direction)
            },
        )
}

fn indexes_json() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("firestore.indexes.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn direction(order: &str) -> Option<Direction> {
    match order {
        "ASCENDING" => Some(Ascending),
        "DESCENDING" => Some(Descending),
        _ => None,
    }
}

fn non_empty_str<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object
        .get(key)
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty())
}

/// Checks one `{fieldPath, order | arrayConfig}` entry of a composite index; the field, or a
/// description of what is wrong with it.
fn index_field(field: &Value) -> Result<(String, Option<Direction>), String> {
    let path = non_empty_str(field, "fieldPath").ok_or("a field without a fieldPath")?;
    match (field.get("order"), field.get("arrayConfig")) {
        (Some(order), None) => order
            .as_str()
            .and_then(direction)
            .map(|direction| (path.to_owned(), Some(direction)))
            .ok_or_else(|| format!("field {path}: order must be ASCENDING or DESCENDING")),
        (None, Some(config)) if config == "CONTAINS" => Ok((path.to_owned(), None)),
        _ => Err(format!(
            "field {path}: needs exactly one of order or arrayConfig CONTAINS"
        )),
    }
}

fn composite_index(index: &Value) -> Result<Index, String> {
    let collection = non_empty_str(index, "collectionGroup").ok_or("no collectionGroup")?;
    if index.get("queryScope").and_then(Value::as_str) != Some("COLLECTION") {
        return Err(format!("{collection}: queryScope must be COLLECTION"));
    }
    let fields = index
        .get("fields")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{collection}: no fields array"))?
        .iter()
        .map(index_field)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|problem| format!("{collection}: {problem}"))?;
    let fields: Vec<_> = fields
        .into_iter()
        .filter(|(path, _)| path != "__name__")
        .collect();
    // Firestore refuses a one-field composite index: single-field indexes are configured
    // through fieldOverrides.
    if fields.len() < 2 {
        return Err(format!(
            "{collection}: a composite index needs two fields or more"
        ));
    }
    Ok(Index {
        collection: collection.to_owned(),
        fields,
    })
}

fn field_override(entry: &Value) -> Result<FieldOverride, String> {
    let collection = non_empty_str(entry, "collectionGroup").ok_or("no collectionGroup")?;
    let field = non_empty_str(entry, "fieldPath")
        .ok_or_else(|| format!("{collection}: an override without a fieldPath"))?;
    let at = format!("{collection}.{field}");
    let indexes = entry
        .get("indexes")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{at}: no indexes array"))?;
    for index in indexes {
        let scope_ok = matches!(
            index.get("queryScope").and_then(Value::as_str),
            Some("COLLECTION" | "COLLECTION_GROUP")
        );
        let mode_ok = index
            .get("order")
            .and_then(Value::as_str)
            .and_then(direction)
            .is_some()
            || index.get("arrayConfig").and_then(Value::as_str) == Some("CONTAINS");
        if !scope_ok || !mode_ok {
            return Err(format!(
                "{at}: each index needs a queryScope and an order or arrayConfig"
            ));
        }
    }
    let ttl = match entry.get("ttl") {
        None => false,
        Some(Value::Bool(ttl)) => *ttl,
        Some(_) => return Err(format!("{at}: ttl must be true or false")),
    };
    Ok(FieldOverride {
        collection: collection.to_owned(),
        field: field.to_owned(),
        ttl,
        unindexed: indexes.is_empty(),
    })
}

/// The declared file, checked for the shape `firebase deploy --only firestore:indexes` takes.
struct Declared {
    indexes: Vec<Index>,
    overrides: Vec<FieldOverride>,
}

fn declared() -> Declared {
    let json = indexes_json();
    let mut problems = Vec::new();
    match json.as_object() {
        None => problems.push("the top level is not an object".to_owned()),
        Some(top) => problems.extend(
            top.keys()
                .filter(|key| !["indexes", "fieldOverrides"].contains(&key.as_str()))
                .map(|key| format!("unknown top-level key {key}")),
        ),
    }
    let mut indexes = Vec::new();
    match json.get("indexes").and_then(Value::as_array) {
        None => problems.push("no indexes array".to_owned()),
        Some(entries) => {
            for entry in entries {
                match composite_index(entry) {
                    Ok(index) if indexes.contains(&index) => {
                        problems.push(format!("index declared twice: {index:?}"))
                    }
                    Ok(index) => indexes.push(index),
                    Err(problem) => problems.push(problem),
                }
            }
        }
    }
    let mut overrides = Vec::new();
    match json.get("fieldOverrides") {
        None => {}
        Some(Value::Array(entries)) => {
            for entry in entries {
                match field_override(entry) {
                    Ok(field_override) => overrides.push(field_override),
                    Err(problem) => problems.push(problem),
                }
            }
        }
        Some(_) => problems.push("fieldOverrides is not an array".to_owned()),
    }
    assert!(
        problems.is_empty(),
        "firestore.indexes.json is malformed:\n  {}",
        problems.join("\n  ")
    );
    Declared { indexes, overrides }
}

#[test]
fn the_index_file_is_well_formed() {
    let declared = declared();
    assert!(!declared.indexes.is_empty());
}

#[test]
fn every_query_that_needs_a_composite_index_has_one() {
    let declared = declared();
    let missing: Vec<String> = queries::ALL
        .iter()
        .filter(|query| needs_composite_index(query))
        .filter(|query| !declared.indexes.iter().any(|index| serves(index, query)))
        .map(|query| {
            let equality = query.equality.join(", ");
            let order: Vec<String> = query
                .order
                .iter()
                .map(|(path, direction)| format!("{path} {direction:?}"))
                .collect();
            format!(
                "{} on {}: equality [{equality}] then [{}]",
                query.name,
                query.collection,
                order.join(", ")
            )
        })
        .collect();
    assert!(
        missing.is_empty(),
        "queries without a composite index in firestore.indexes.json:\n  {}",
        missing.join("\n  ")
    );
}

/// A range filter is served by the index of the order only when its field is ordered first
/// (Firestore's rule for a range without its own index); the checks above rely on that.
#[test]
fn every_range_filter_is_on_the_first_order_field() {
    for query in queries::ALL {
        if let Some(field) = query.above.map(|above| above.field) {
            assert_eq!(
                query.order.first().map(|(path, _)| *path),
                Some(field),
                "{}: the range on {field} must be its first order",
                query.name
            );
        }
    }
}

#[test]
fn no_query_served_by_single_field_indexes_uses_an_exempted_field() {
    let declared = declared();
    for query in queries::ALL {
        if declared.indexes.iter().any(|index| serves(index, query)) {
            continue;
        }
        let fields = query
            .equality
            .iter()
            .copied()
            .chain(query.order.iter().map(|(path, _)| *path));
        for field in fields {
            let exempted = declared
                .overrides
                .iter()
                .any(|o| o.unindexed && o.collection == query.collection && o.field == field);
            assert!(
                !exempted,
                "{} needs the single-field index on {}.{field}, which fieldOverrides removes",
                query.name, query.collection
            );
        }
    }
}

#[test]
fn the_schemas_eight_composite_indexes_are_declared() {
    let daily = queries::DAILY_COLLECTION;
    let history = queries::HISTORY_COLLECTION;
    let schema = [
        Index::new(daily, &[("userId", Ascending), ("date", Descending)]),
        Index::new(daily, &[("userId", Ascending), ("lastUpdated", Descending)]),
        Index::new(daily, &[("userType", Ascending), ("date", Descending)]),
        Index::new(daily, &[("date", Ascending), ("tokensUsed", Descending)]),
        Index::new(
            history,
            &[
                ("userId", Ascending),
                ("year", Descending),
                ("month", Descending),
            ],
        ),
        Index::new(
            history,
            &[
                ("userType", Ascending),
                ("year", Descending),
                ("month", Descending),
            ],
        ),
        Index::new(
            history,
            &[
                ("year", Descending),
                ("month", Descending),
                ("totalMonthlyTokens", Descending),
            ],
        ),
        Index::new(history, &[("userId", Ascending), ("updatedAt", Descending)]),
    ];
    let declared = declared();
    for index in &schema {
        assert!(
            declared.indexes.contains(index),
            "the schema's index is missing: {index:?}"
        );
    }
}

#[test]
fn the_idempotency_expiry_is_a_ttl_field_without_indexes() {
    let declared = declared();
    let expiry = declared
        .overrides
        .iter()
        .find(|o| o.collection == "idempotency_keys" && o.field == "expiresAt");
    assert!(
        expiry.is_some_and(|o| o.ttl && o.unindexed),
        "idempotency_keys.expiresAt needs a fieldOverrides entry with \"ttl\": true and no indexes"
    );
}

#[test]
fn every_query_is_declared_once_in_all() {
    let names: Vec<&str> = queries::ALL.iter().map(|query| query.name).collect();
    let distinct: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        names.len(),
        "a query is listed twice in ALL"
    );
    let listed: BTreeSet<&str> = queries::SERVICE
        .iter()
        .chain(queries::SCHEMA_PATTERNS)
        .chain(queries::MAINTENANCE)
        .map(|query| query.name)
        .collect();
    assert_eq!(
        listed, distinct,
        "ALL must be SERVICE, SCHEMA_PATTERNS and MAINTENANCE, each query once"
    );
}

#[test]
fn firebase_json_deploys_the_rules_and_the_indexes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("firebase.json");
    let text = std::fs::read_to_string(&path).expect("firebase.json at the top level");
    let config: Value = serde_json::from_str(&text).expect("firebase.json is JSON");
    assert_eq!(config["firestore"]["rules"], "firestore.rules");
    assert_eq!(config["firestore"]["indexes"], "firestore.indexes.json");
}

mod rule {
    use super::*;

    const fn shape(
        equality: &'static [&'static str],
        order: &'static [(&'static str, Direction)],
    ) -> QueryShape {
        QueryShape {
            name: "hand-made",
            collection: "c",
            equality,
            above: None,
            order,
        }
    }

    #[test]
    fn single_field_indexes_serve_equalities_alone_or_one_order_alone() {
        assert!(!needs_composite_index(&shape(&["a"], &[])));
        assert!(!needs_composite_index(&shape(&["a", "b", "c"], &[])));
        assert!(!needs_composite_index(&shape(&[], &[("a", Descending)])));
    }

    #[test]
    fn an_order_with_an_equality_or_a_second_order_needs_a_composite_index() {
        assert!(needs_composite_index(&shape(&["a"], &[("b", Descending)])));
        assert!(needs_composite_index(&shape(
            &[],
            &[("a", Descending), ("b", Ascending)]
        )));
    }
}

mod matcher {
    use super::*;

    /// Equality on `date`, `userType`; then `tokensUsed` descending, `userId` ascending.
    const QUERY: QueryShape = queries::DAILY_REPORT_BY_TYPE;

    fn index(fields: &[(&str, Direction)]) -> Index {
        Index::new(QUERY.collection, fields)
    }

    #[test]
    fn accepts_the_exact_index() {
        let exact = index(&[
            ("date", Ascending),
            ("userType", Ascending),
            ("tokensUsed", Descending),
            ("userId", Ascending),
        ]);
        assert!(serves(&exact, &QUERY));
    }

    #[test]
    fn accepts_equality_fields_in_any_order_and_direction() {
        let reordered = index(&[
            ("userType", Descending),
            ("date", Ascending),
            ("tokensUsed", Descending),
            ("userId", Ascending),
        ]);
        assert!(serves(&reordered, &QUERY));
    }

    #[test]
    fn rejects_an_order_field_in_the_wrong_direction() {
        let ascending_tokens = index(&[
            ("date", Ascending),
            ("userType", Ascending),
            ("tokensUsed", Ascending),
            ("userId", Ascending),
        ]);
        assert!(!serves(&ascending_tokens, &QUERY));
    }

    #[test]
    fn rejects_order_fields_in_the_wrong_order() {
        let swapped = index(&[
            ("date", Ascending),
            ("userType", Ascending),
            ("userId", Ascending),
            ("tokensUsed", Descending),
        ]);
        assert!(!serves(&swapped, &QUERY));
    }

    #[test]
    fn rejects_an_order_field_among_the_equality_fields() {
        let order_first = index(&[
            ("tokensUsed", Descending),
            ("date", Ascending),
            ("userType", Ascending),
            ("userId", Ascending),
        ]);
        assert!(!serves(&order_first, &QUERY));
    }

    #[test]
    fn rejects_a_missing_or_an_extra_field() {
        let without_user_type = index(&[
            ("date", Ascending),
            ("tokensUsed", Descending),
            ("userId", Ascending),
        ]);
        assert!(!serves(&without_user_type, &QUERY));
        let with_extra = index(&[
            ("date", Ascending),
            ("userType", Ascending),
            ("tokensUsed", Descending),
            ("userId", Ascending),
            ("lastUpdated", Ascending),
        ]);
        assert!(!serves(&with_extra, &QUERY));
    }

    #[test]
    fn rejects_another_collection() {
        let mut elsewhere = index(&[
            ("date", Ascending),
            ("userType", Ascending),
            ("tokensUsed", Descending),
            ("userId", Ascending),
        ]);
        elsewhere.collection = queries::HISTORY_COLLECTION.to_owned();
        assert!(!serves(&elsewhere, &QUERY));
    }

    #[test]
    fn rejects_an_array_field_in_place_of_an_equality() {
        let mut array_config = index(&[
            ("date", Ascending),
            ("userType", Ascending),
            ("tokensUsed", Descending),
            ("userId", Ascending),
        ]);
        array_config.fields[1].1 = None;
        assert!(!serves(&array_config, &QUERY));
    }

    #[test]
    fn finds_a_missing_index_in_a_hand_made_list() {
        let indexes = [
            index(&[("date", Ascending), ("tokensUsed", Descending)]),
            index(&[
                ("date", Ascending),
                ("userType", Ascending),
                ("tokensUsed", Descending),
                ("userId", Descending),
            ]),
        ];
        assert!(!indexes.iter().any(|candidate| serves(candidate, &QUERY)));
        assert!(
            indexes
                .iter()
                .any(|candidate| serves(candidate, &queries::SCHEMA_DAILY_BY_TOKENS))
        );
    }
}

mod structure {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_a_well_formed_index() {
        let parsed = composite_index(&json!({
            "collectionGroup": "c",
            "queryScope": "COLLECTION",
            "fields": [
                {"fieldPath": "a", "order": "ASCENDING"},
                {"fieldPath": "b", "order": "DESCENDING"},
                {"fieldPath": "__name__", "order": "DESCENDING"}
            ]
        }));
        assert_eq!(
            parsed,
            Ok(Index::new("c", &[("a", Ascending), ("b", Descending)]))
        );
    }

    #[test]
    fn rejects_malformed_indexes() {
        let field_a = json!({"fieldPath": "a", "order": "ASCENDING"});
        let malformed = [
            json!({"queryScope": "COLLECTION", "fields": [field_a, field_a]}),
            json!({"collectionGroup": "c", "fields": [field_a, field_a]}),
            json!({"collectionGroup": "c", "queryScope": "COLLECTION"}),
            json!({"collectionGroup": "c", "queryScope": "COLLECTION", "fields": [field_a]}),
            json!({"collectionGroup": "c", "queryScope": "COLLECTION",
                   "fields": [field_a, {"fieldPath": "b", "order": "DESC"}]}),
            json!({"collectionGroup": "c", "queryScope": "COLLECTION",
                   "fields": [field_a, {"order": "ASCENDING"}]}),
            json!({"collectionGroup": "c", "queryScope": "COLLECTION",
                   "fields": [field_a, {"fieldPath": "b"}]}),
        ];
        for index in &malformed {
            assert!(composite_index(index).is_err(), "accepted {index}");
        }
    }

    #[test]
    fn rejects_malformed_field_overrides() {
        let malformed = [
            json!({"fieldPath": "f", "indexes": []}),
            json!({"collectionGroup": "c", "indexes": []}),
            json!({"collectionGroup": "c", "fieldPath": "f"}),
            json!({"collectionGroup": "c", "fieldPath": "f", "ttl": "yes", "indexes": []}),
            json!({"collectionGroup": "c", "fieldPath": "f", "indexes": [{"order": "ASCENDING"}]}),
        ];
        for entry in &malformed {
            assert!(field_override(entry).is_err(), "accepted {entry}");
        }
    }
}
