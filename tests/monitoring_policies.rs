//! The Cloud Monitoring alert policies in `deploy/monitoring/`, checked without the Monitoring
//! API, which CI cannot reach.
//!
//! Each file must deserialize into the documented fields of the `AlertPolicy` REST resource
//! (https://cloud.google.com/monitoring/api/ref_v3/rest/v3/projects.alertPolicies, whose
//! messages are `google/monitoring/v3/alert.proto` and `common.proto` in googleapis), with no
//! field the model lacks, and its closed sets (comparisons, aligners, reducers, combiners,
//! severities) spelled as the API spells them. Each condition must then name a Firestore metric
//! from the table below, on a monitored resource it is written for, with labels it has, aligned
//! and reduced in ways its kind and value type allow (the rules `common.proto` gives for each
//! `Aligner` and `Reducer`), and compare a number with the threshold.
//!
//! Only what the policies here use is modelled: threshold conditions, one aggregation per
//! filter, the settings of `documentation` and `alertStrategy` they set. A file that uses any
//! other documented field (an absence or MQL condition, forecast options, a chain of
//! aggregations) fails here until the model learns it, rather than passing unchecked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AlertPolicy {
    display_name: String,
    documentation: Documentation,
    #[serde(default)]
    user_labels: BTreeMap<String, String>,
    conditions: Vec<Condition>,
    combiner: Combiner,
    enabled: Option<bool>,
    #[serde(default)]
    notification_channels: Vec<String>,
    alert_strategy: Option<AlertStrategy>,
    severity: Option<Severity>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Documentation {
    content: String,
    mime_type: String,
    subject: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Condition {
    display_name: String,
    condition_threshold: MetricThreshold,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MetricThreshold {
    filter: String,
    #[serde(default)]
    aggregations: Vec<Aggregation>,
    denominator_filter: Option<String>,
    #[serde(default)]
    denominator_aggregations: Vec<Aggregation>,
    comparison: Comparison,
    threshold_value: f64,
    duration: Seconds,
    trigger: Option<Trigger>,
    evaluation_missing_data: Option<EvaluationMissingData>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Aggregation {
    alignment_period: Option<Seconds>,
    per_series_aligner: Option<Aligner>,
    cross_series_reducer: Option<Reducer>,
    #[serde(default)]
    group_by_fields: Vec<String>,
}

/// One of the two, as the resource's `oneof type` says.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Trigger {
    count: Option<i32>,
    percent: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AlertStrategy {
    auto_close: Option<Seconds>,
}

/// A `google.protobuf.Duration` in its JSON form, whole seconds only: `"300s"`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "String")]
struct Seconds(u64);

impl TryFrom<String> for Seconds {
    type Error = String;

    fn try_from(text: String) -> Result<Seconds, String> {
        text.strip_suffix('s')
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse().ok())
            .map(Seconds)
            .ok_or_else(|| format!("{text:?} is not a duration in whole seconds like \"300s\""))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
enum Comparison {
    #[serde(rename = "COMPARISON_UNSPECIFIED")]
    Unspecified,
    #[serde(rename = "COMPARISON_GT")]
    Gt,
    #[serde(rename = "COMPARISON_GE")]
    Ge,
    #[serde(rename = "COMPARISON_LT")]
    Lt,
    #[serde(rename = "COMPARISON_LE")]
    Le,
    #[serde(rename = "COMPARISON_EQ")]
    Eq,
    #[serde(rename = "COMPARISON_NE")]
    Ne,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
enum Aligner {
    #[serde(rename = "ALIGN_NONE")]
    None,
    #[serde(rename = "ALIGN_DELTA")]
    Delta,
    #[serde(rename = "ALIGN_RATE")]
    Rate,
    #[serde(rename = "ALIGN_INTERPOLATE")]
    Interpolate,
    #[serde(rename = "ALIGN_NEXT_OLDER")]
    NextOlder,
    #[serde(rename = "ALIGN_MIN")]
    Min,
    #[serde(rename = "ALIGN_MAX")]
    Max,
    #[serde(rename = "ALIGN_MEAN")]
    Mean,
    #[serde(rename = "ALIGN_COUNT")]
    Count,
    #[serde(rename = "ALIGN_SUM")]
    Sum,
    #[serde(rename = "ALIGN_STDDEV")]
    Stddev,
    #[serde(rename = "ALIGN_COUNT_TRUE")]
    CountTrue,
    #[serde(rename = "ALIGN_COUNT_FALSE")]
    CountFalse,
    #[serde(rename = "ALIGN_FRACTION_TRUE")]
    FractionTrue,
    #[serde(rename = "ALIGN_PERCENTILE_99")]
    Percentile99,
    #[serde(rename = "ALIGN_PERCENTILE_95")]
    Percentile95,
    #[serde(rename = "ALIGN_PERCENTILE_50")]
    Percentile50,
    #[serde(rename = "ALIGN_PERCENTILE_05")]
    Percentile05,
    #[serde(rename = "ALIGN_PERCENT_CHANGE")]
    PercentChange,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
enum Reducer {
    #[serde(rename = "REDUCE_NONE")]
    None,
    #[serde(rename = "REDUCE_MEAN")]
    Mean,
    #[serde(rename = "REDUCE_MIN")]
    Min,
    #[serde(rename = "REDUCE_MAX")]
    Max,
    #[serde(rename = "REDUCE_SUM")]
    Sum,
    #[serde(rename = "REDUCE_STDDEV")]
    Stddev,
    #[serde(rename = "REDUCE_COUNT")]
    Count,
    #[serde(rename = "REDUCE_COUNT_TRUE")]
    CountTrue,
    #[serde(rename = "REDUCE_COUNT_FALSE")]
    CountFalse,
    #[serde(rename = "REDUCE_FRACTION_TRUE")]
    FractionTrue,
    #[serde(rename = "REDUCE_PERCENTILE_99")]
    Percentile99,
    #[serde(rename = "REDUCE_PERCENTILE_95")]
    Percentile95,
    #[serde(rename = "REDUCE_PERCENTILE_50")]
    Percentile50,
    #[serde(rename = "REDUCE_PERCENTILE_05")]
    Percentile05,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum Combiner {
    CombineUnspecified,
    And,
    Or,
    AndWithMatchingResource,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum Severity {
    #[serde(rename = "SEVERITY_UNSPECIFIED")]
    Unspecified,
    Critical,
    Error,
    Warning,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
enum EvaluationMissingData {
    #[serde(rename = "EVALUATION_MISSING_DATA_UNSPECIFIED")]
    Unspecified,
    #[serde(rename = "EVALUATION_MISSING_DATA_INACTIVE")]
    Inactive,
    #[serde(rename = "EVALUATION_MISSING_DATA_ACTIVE")]
    Active,
    #[serde(rename = "EVALUATION_MISSING_DATA_NO_OP")]
    NoOp,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Gauge,
    Delta,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ValueType {
    Int64,
    Double,
    Distribution,
}

impl ValueType {
    fn numeric(self) -> bool {
        matches!(self, ValueType::Int64 | ValueType::Double)
    }
}

/// A monitored resource a Firestore metric is written for, with its labels.
struct Resource {
    name: &'static str,
    labels: &'static [&'static str],
}

const DATABASE: Resource = Resource {
    name: "firestore.googleapis.com/Database",
    labels: &["project_id", "location", "database_id"],
};
const INSTANCE: Resource = Resource {
    name: "firestore_instance",
    labels: &["project_id"],
};
const DATASTORE_REQUEST: Resource = Resource {
    name: "datastore_request",
    labels: &["project_id"],
};

struct Metric {
    name: &'static str,
    kind: Kind,
    value_type: ValueType,
    labels: &'static [&'static str],
    resources: &'static [Resource],
}

/// The Firestore metrics a policy may name. Names and meaning from Firestore's monitoring page
/// (https://docs.cloud.google.com/firestore/native/docs/understand-performance-monitoring),
/// which recommends `firestore.googleapis.com/Database`, calls the connection metrics gauges and
/// the latencies distributions, and points to the full list
/// (https://cloud.google.com/monitoring/api/metrics_gcp_d_h#gcp-firestore). The resources of
/// the older metrics are those of Google's Firestore dashboard sample
/// (GoogleCloudPlatform/monitoring-dashboard-samples, dashboards/storage/firestore-monitoring.json).
const FIRESTORE_METRICS: &[Metric] = &[
    Metric {
        name: "firestore.googleapis.com/api/request_count",
        kind: Kind::Delta,
        value_type: ValueType::Int64,
        labels: &["api_method", "response_code"],
        resources: &[DATABASE, DATASTORE_REQUEST],
    },
    Metric {
        name: "firestore.googleapis.com/api/request_latencies",
        kind: Kind::Delta,
        value_type: ValueType::Distribution,
        labels: &["api_method"],
        resources: &[DATABASE],
    },
    Metric {
        name: "firestore.googleapis.com/document/read_ops_count",
        kind: Kind::Delta,
        value_type: ValueType::Int64,
        labels: &[],
        resources: &[DATABASE],
    },
    Metric {
        name: "firestore.googleapis.com/document/write_ops_count",
        kind: Kind::Delta,
        value_type: ValueType::Int64,
        labels: &[],
        resources: &[DATABASE],
    },
    Metric {
        name: "firestore.googleapis.com/document/delete_ops_count",
        kind: Kind::Delta,
        value_type: ValueType::Int64,
        labels: &[],
        resources: &[DATABASE],
    },
    Metric {
        name: "firestore.googleapis.com/document/read_count",
        kind: Kind::Delta,
        value_type: ValueType::Int64,
        labels: &[],
        resources: &[INSTANCE],
    },
    Metric {
        name: "firestore.googleapis.com/document/write_count",
        kind: Kind::Delta,
        value_type: ValueType::Int64,
        labels: &[],
        resources: &[INSTANCE],
    },
    Metric {
        name: "firestore.googleapis.com/document/delete_count",
        kind: Kind::Delta,
        value_type: ValueType::Int64,
        labels: &[],
        resources: &[INSTANCE],
    },
    Metric {
        name: "firestore.googleapis.com/network/active_connections",
        kind: Kind::Gauge,
        value_type: ValueType::Int64,
        labels: &[],
        resources: &[INSTANCE],
    },
    Metric {
        name: "firestore.googleapis.com/network/snapshot_listeners",
        kind: Kind::Gauge,
        value_type: ValueType::Int64,
        labels: &[],
        resources: &[INSTANCE],
    },
    Metric {
        name: "firestore.googleapis.com/rules/evaluation_count",
        kind: Kind::Delta,
        value_type: ValueType::Int64,
        labels: &["result"],
        resources: &[INSTANCE],
    },
];

/// Whether `aligner` may be applied to a series of this kind and value type (`common.proto`).
fn aligner_fits(aligner: Aligner, kind: Kind, value_type: ValueType) -> bool {
    match aligner {
        Aligner::None | Aligner::Sum => true,
        Aligner::Delta => kind == Kind::Delta,
        Aligner::Rate => kind == Kind::Delta && value_type.numeric(),
        Aligner::Interpolate => kind == Kind::Gauge && value_type.numeric(),
        Aligner::NextOlder => kind == Kind::Gauge,
        Aligner::Min
        | Aligner::Max
        | Aligner::Mean
        | Aligner::Stddev
        | Aligner::PercentChange
        | Aligner::Count => value_type.numeric(),
        Aligner::CountTrue | Aligner::CountFalse | Aligner::FractionTrue => false,
        Aligner::Percentile99
        | Aligner::Percentile95
        | Aligner::Percentile50
        | Aligner::Percentile05 => value_type == ValueType::Distribution,
    }
}

/// The value type of a series after `aligner` (`common.proto`).
fn aligned(aligner: Aligner, value_type: ValueType) -> ValueType {
    match aligner {
        Aligner::None
        | Aligner::Delta
        | Aligner::NextOlder
        | Aligner::Interpolate
        | Aligner::Min
        | Aligner::Max
        | Aligner::Sum => value_type,
        Aligner::Count | Aligner::CountTrue | Aligner::CountFalse => ValueType::Int64,
        Aligner::Mean
        | Aligner::Stddev
        | Aligner::Rate
        | Aligner::FractionTrue
        | Aligner::PercentChange
        | Aligner::Percentile99
        | Aligner::Percentile95
        | Aligner::Percentile50
        | Aligner::Percentile05 => ValueType::Double,
    }
}

/// Whether `reducer` may combine aligned series of this value type, and what it yields.
fn reduced(reducer: Reducer, value_type: ValueType) -> Option<ValueType> {
    match reducer {
        Reducer::None | Reducer::Sum => Some(value_type),
        Reducer::Min | Reducer::Max => value_type.numeric().then_some(value_type),
        Reducer::Mean
        | Reducer::Stddev
        | Reducer::Percentile99
        | Reducer::Percentile95
        | Reducer::Percentile50
        | Reducer::Percentile05 => Some(ValueType::Double),
        Reducer::Count => Some(ValueType::Int64),
        Reducer::CountTrue | Reducer::CountFalse | Reducer::FractionTrue => None,
    }
}

/// What follows each occurrence of `word` in `text` that is not the tail of a longer name.
fn after_each<'t>(text: &'t str, word: &str) -> Vec<&'t str> {
    text.match_indices(word)
        .filter(|(at, _)| {
            !text[..*at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        })
        .map(|(at, _)| &text[at + word.len()..])
        .collect()
}

/// The value of the one `key = "value"` selector in a filter, if there is exactly one.
fn selector<'f>(filter: &'f str, key: &str) -> Result<Option<&'f str>, String> {
    let mut values = Vec::new();
    for rest in after_each(filter, key) {
        let Some(rest) = rest.trim_start().strip_prefix('=') else {
            continue;
        };
        let value = rest
            .trim_start()
            .strip_prefix('"')
            .and_then(|quoted| quoted.split_once('"'))
            .map(|(value, _)| value)
            .ok_or_else(|| format!("{key} in {filter:?} is not followed by a quoted value"))?;
        values.push(value);
    }
    match values.as_slice() {
        [] => Ok(None),
        [value] => Ok(Some(value)),
        _ => Err(format!("{filter:?} names {key} more than once")),
    }
}

/// The label names a filter or a group-by field uses under `prefix` (`metric` or `resource`),
/// in either of the filter syntax's spellings (`metric.label.x`, `metric.labels.x`).
fn labels_named(text: &str, prefix: &str) -> Vec<String> {
    [format!("{prefix}.labels."), format!("{prefix}.label.")]
        .iter()
        .flat_map(|spelling| after_each(text, spelling))
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// Everything wrong with one filter and its aggregations; the value type it yields when right.
fn check_series(
    filter: &str,
    aggregations: &[Aggregation],
    resource_required: bool,
    problems: &mut Vec<String>,
) -> Option<ValueType> {
    let metric_type = match selector(filter, "metric.type") {
        Ok(Some(name)) => name,
        Ok(None) => {
            problems.push(format!("{filter:?} names no metric.type"));
            return None;
        }
        Err(problem) => {
            problems.push(problem);
            return None;
        }
    };
    let Some(metric) = FIRESTORE_METRICS.iter().find(|m| m.name == metric_type) else {
        problems.push(format!(
            "metric.type {metric_type:?} is not a Firestore metric this check knows"
        ));
        return None;
    };
    let resource = match selector(filter, "resource.type") {
        Ok(Some(name)) => match metric.resources.iter().find(|r| r.name == name) {
            Some(resource) => Some(resource),
            None => {
                problems.push(format!(
                    "{metric_type} is not written for resource.type {name:?}"
                ));
                return None;
            }
        },
        Ok(None) if resource_required => {
            problems.push(format!("{filter:?} names no resource.type"));
            return None;
        }
        Ok(None) => None,
        Err(problem) => {
            problems.push(problem);
            return None;
        }
    };
    let group_by: Vec<&str> = aggregations
        .iter()
        .flat_map(|a| a.group_by_fields.iter().map(String::as_str))
        .collect();
    for text in std::iter::once(filter).chain(group_by.iter().copied()) {
        for label in labels_named(text, "metric") {
            if !metric.labels.contains(&label.as_str()) {
                problems.push(format!("{metric_type} has no metric label {label:?}"));
            }
        }
        for label in labels_named(text, "resource") {
            let known = resource.is_some_and(|r| r.labels.contains(&label.as_str()));
            if !known {
                problems.push(format!(
                    "resource label {label:?} is not a label of the filter's resource.type"
                ));
            }
        }
    }
    let aggregation = match aggregations {
        [] => return Some(metric.value_type),
        [one] => one,
        _ => {
            problems.push(format!(
                "{metric_type}: a chain of aggregations is not modelled here"
            ));
            return None;
        }
    };
    let aligner = aggregation.per_series_aligner.unwrap_or(Aligner::None);
    let reducer = aggregation.cross_series_reducer.unwrap_or(Reducer::None);
    match aggregation.alignment_period {
        // At least a minute, and at most 25 hours in an alerting policy (common.proto).
        Some(Seconds(period)) if !(60..=90_000).contains(&period) => problems.push(format!(
            "{metric_type}: an alignmentPeriod of {period}s is outside 60s to 90000s"
        )),
        None if aligner != Aligner::None => problems.push(format!(
            "{metric_type}: the {aligner:?} aligner needs an alignmentPeriod"
        )),
        _ => {}
    }
    if reducer != Reducer::None && aligner == Aligner::None {
        problems.push(format!(
            "{metric_type}: the {reducer:?} reducer needs a per-series aligner other than ALIGN_NONE"
        ));
    }
    if !aligner_fits(aligner, metric.kind, metric.value_type) {
        problems.push(format!(
            "{metric_type} is a {:?} {:?} metric, which the {aligner:?} aligner does not apply to",
            metric.kind, metric.value_type
        ));
        return None;
    }
    let aligned_type = aligned(aligner, metric.value_type);
    let Some(result) = reduced(reducer, aligned_type) else {
        problems.push(format!(
            "{metric_type}: the {reducer:?} reducer does not apply to {aligned_type:?} series"
        ));
        return None;
    };
    Some(result)
}

fn check_threshold(name: &str, threshold: &MetricThreshold, problems: &mut Vec<String>) {
    let value_type = check_series(&threshold.filter, &threshold.aggregations, true, problems);
    if let Some(denominator) = &threshold.denominator_filter {
        check_series(
            denominator,
            &threshold.denominator_aggregations,
            false,
            problems,
        );
        let periods = |aggregations: &[Aggregation]| -> Vec<Option<Seconds>> {
            aggregations.iter().map(|a| a.alignment_period).collect()
        };
        let groups = |aggregations: &[Aggregation]| -> Vec<Vec<String>> {
            aggregations
                .iter()
                .map(|a| a.group_by_fields.clone())
                .collect()
        };
        if periods(&threshold.aggregations) != periods(&threshold.denominator_aggregations)
            || groups(&threshold.aggregations) != groups(&threshold.denominator_aggregations)
        {
            problems.push(format!(
                "{name}: a ratio's numerator and denominator must be aligned and grouped alike"
            ));
        }
        // A ratio is compared as a fraction: 1 % is 0.01, and a threshold of 1 or more could
        // never be crossed by a part of the whole.
        if !(threshold.threshold_value > 0.0 && threshold.threshold_value < 1.0) {
            problems.push(format!(
                "{name}: a ratio's threshold is a fraction between 0 and 1, not {}",
                threshold.threshold_value
            ));
        }
    } else if !threshold.denominator_aggregations.is_empty() {
        problems.push(format!(
            "{name}: denominatorAggregations without a denominatorFilter"
        ));
    }
    if value_type.is_some_and(|t| !t.numeric()) {
        problems.push(format!(
            "{name}: the series stays a distribution, which no threshold can be compared with"
        ));
    }
    // "Only COMPARISON_LT and COMPARISON_GT are supported currently."
    if !matches!(threshold.comparison, Comparison::Gt | Comparison::Lt) {
        problems.push(format!(
            "{name}: {:?} is not supported in a threshold",
            threshold.comparison
        ));
    }
    // "Currently, only values that are a multiple of a minute ... are supported."
    if !threshold.duration.0.is_multiple_of(60) {
        problems.push(format!(
            "{name}: a duration of {}s is not a whole number of minutes",
            threshold.duration.0
        ));
    }
    if let Some(trigger) = &threshold.trigger {
        match (trigger.count, trigger.percent) {
            (Some(count), None) if count >= 1 => {}
            (None, Some(percent)) if percent > 0.0 && percent <= 100.0 => {}
            _ => problems.push(format!(
                "{name}: a trigger is one count of at least 1 or one percent up to 100"
            )),
        }
    }
    if threshold.evaluation_missing_data == Some(EvaluationMissingData::Unspecified) {
        problems.push(format!("{name}: evaluationMissingData is left unspecified"));
    }
}

/// A label key or value as the resource allows: lowercase letters, digits, `_` and `-`, at
/// most 63 characters; a key begins with a letter.
fn user_label_ok(text: &str, key: bool) -> bool {
    text.len() <= 63
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && (!key || text.starts_with(|c: char| c.is_ascii_lowercase()))
}

/// Everything wrong with a policy that deserialized.
fn problems(policy: &AlertPolicy) -> Vec<String> {
    let mut problems = Vec::new();
    if policy.display_name.trim().is_empty() {
        problems.push("displayName is empty".to_owned());
    }
    let documentation = &policy.documentation;
    if documentation.mime_type != "text/markdown" {
        problems.push(format!(
            "documentation.mimeType {:?}: only \"text/markdown\" is supported",
            documentation.mime_type
        ));
    }
    if documentation.content.trim().is_empty() || documentation.content.chars().count() > 8192 {
        problems.push("documentation.content must say what to do, in 1 to 8,192 characters".into());
    }
    if documentation
        .subject
        .as_ref()
        .is_some_and(|subject| subject.trim().is_empty())
    {
        problems.push("documentation.subject is empty".to_owned());
    }
    for (key, value) in &policy.user_labels {
        if !user_label_ok(key, true) || !user_label_ok(value, false) {
            problems.push(format!(
                "userLabels {key:?}: {value:?} is not a valid label"
            ));
        }
    }
    if !(1..=6).contains(&policy.conditions.len()) {
        problems.push(format!(
            "a policy has 1 to 6 conditions, not {}",
            policy.conditions.len()
        ));
    }
    if policy.conditions.len() > 1 && policy.combiner == Combiner::CombineUnspecified {
        problems.push("several conditions need a combiner".to_owned());
    }
    for condition in &policy.conditions {
        if condition.display_name.trim().is_empty() {
            problems.push("a condition's displayName is empty".to_owned());
        }
        check_threshold(
            &condition.display_name,
            &condition.condition_threshold,
            &mut problems,
        );
    }
    if policy.enabled == Some(false) {
        problems.push("the policy is disabled".to_owned());
    }
    if !policy.notification_channels.is_empty() {
        problems.push(
            "notificationChannels are a project's: they are given when creating the policy"
                .to_owned(),
        );
    }
    // A rule of this project, not of the API: an incident closes on its own once its data
    // stops (a database deleted, a metric no longer written), instead of waiting for someone.
    if policy
        .alert_strategy
        .as_ref()
        .and_then(|strategy| strategy.auto_close)
        .is_none_or(|Seconds(close)| close == 0)
    {
        problems.push("alertStrategy.autoClose is not set".to_owned());
    }
    if policy.severity == Some(Severity::Unspecified) {
        problems.push("severity is left unspecified".to_owned());
    }
    problems
}

/// A policy's JSON, deserialized and checked: every problem found, or none.
fn verdict(json: &Value) -> Result<(), String> {
    let policy = AlertPolicy::deserialize(json).map_err(|error| error.to_string())?;
    match problems(&policy).as_slice() {
        [] => Ok(()),
        found => Err(found.join("; ")),
    }
}

fn policy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring")
}

fn policy_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(policy_dir())
        .expect("deploy/monitoring is readable")
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    files
}

fn load(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("a policy file is readable");
    serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("{} is not JSON: {error}", path.display()))
}

/// A policy from deploy/monitoring/, which passes the check as it is.
fn valid_policy(file: &str) -> Value {
    let policy = load(&policy_dir().join(file));
    assert_eq!(verdict(&policy), Ok(()), "{file} as stored");
    policy
}

/// The first condition's `conditionThreshold` of a policy, to alter.
fn threshold(policy: &mut Value) -> &mut Value {
    &mut policy["conditions"][0]["conditionThreshold"]
}

/// The first condition's filter with `from` written as `to`.
fn rewrite_filter(policy: &mut Value, from: &str, to: &str) {
    let filter = threshold(policy)["filter"].as_str().unwrap().to_owned();
    assert!(filter.contains(from), "{filter:?} has no {from:?}");
    threshold(policy)["filter"] = filter.replace(from, to).into();
}

/// That the check refuses `policy`, and why.
fn assert_refused(policy: &Value, reason: &str) {
    match verdict(policy) {
        Ok(()) => panic!("accepted, though {reason}"),
        Err(refusal) => assert!(refusal.contains(reason), "{refusal}"),
    }
}

#[test]
fn every_file_in_deploy_monitoring_is_a_valid_firestore_alert_policy() {
    let files = policy_files();
    assert!(!files.is_empty(), "deploy/monitoring holds no policy");
    for path in &files {
        assert_eq!(
            path.extension().and_then(|e| e.to_str()),
            Some("json"),
            "{} is not a policy's JSON, and would go unchecked",
            path.display()
        );
        if let Err(problems) = verdict(&load(path)) {
            panic!("{}: {problems}", path.display());
        }
    }
}

#[test]
fn the_deploy_guide_creates_every_policy() {
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/README.md"))
        .expect("deploy/README.md is readable");
    for path in policy_files() {
        let name = format!(
            "deploy/monitoring/{}",
            path.file_name().unwrap().to_string_lossy()
        );
        assert!(
            guide.contains(&name),
            "deploy/README.md does not create {name}"
        );
    }
}

#[test]
fn an_unknown_field_is_refused() {
    let mut policy = valid_policy("firestore-rules-denials.json");
    threshold(&mut policy)["thresholdValues"] = 20.into();

    assert_refused(&policy, "unknown field `thresholdValues`");
}

#[test]
fn a_misspelt_metric_type_is_refused() {
    let mut policy = valid_policy("firestore-rules-denials.json");
    rewrite_filter(
        &mut policy,
        "firestore.googleapis.com/rules/evaluation_count",
        "firestore.googleapis.com/rules/evaluations_count",
    );

    assert_refused(
        &policy,
        "\"firestore.googleapis.com/rules/evaluations_count\" is not a Firestore metric",
    );
}

#[test]
fn a_percentile_aligner_on_a_count_metric_is_refused() {
    let mut policy = valid_policy("firestore-errors.json");
    threshold(&mut policy)["aggregations"][0]["perSeriesAligner"] = "ALIGN_PERCENTILE_99".into();

    assert_refused(
        &policy,
        "api/request_count is a Delta Int64 metric, which the Percentile99 aligner does not apply to",
    );
}

#[test]
fn a_rate_of_a_distribution_is_refused() {
    let mut policy = valid_policy("firestore-latency.json");
    threshold(&mut policy)["aggregations"][0]["perSeriesAligner"] = "ALIGN_RATE".into();

    assert_refused(
        &policy,
        "Delta Distribution metric, which the Rate aligner does not apply to",
    );
}

#[test]
fn a_distribution_compared_with_a_threshold_is_refused() {
    let mut policy = valid_policy("firestore-latency.json");
    threshold(&mut policy)["aggregations"][0]["crossSeriesReducer"] = "REDUCE_SUM".into();

    assert_refused(&policy, "stays a distribution");
}

#[test]
fn a_resource_the_metric_is_not_written_for_is_refused() {
    let mut policy = valid_policy("firestore-rules-denials.json");
    rewrite_filter(&mut policy, "\"firestore_instance\"", "\"gce_instance\"");

    assert_refused(&policy, "is not written for resource.type \"gce_instance\"");
}

#[test]
fn a_label_the_metric_lacks_is_refused() {
    let mut policy = valid_policy("firestore-errors.json");
    rewrite_filter(
        &mut policy,
        "metric.labels.response_code",
        "metric.labels.status",
    );

    assert_refused(&policy, "has no metric label \"status\"");
}

#[test]
fn a_misspelt_enum_or_duration_is_refused() {
    for (field, value, reason) in [
        (
            "comparison",
            "GREATER_THAN",
            "unknown variant `GREATER_THAN`",
        ),
        (
            "duration",
            "5m",
            "\"5m\" is not a duration in whole seconds",
        ),
        (
            "duration",
            "300",
            "\"300\" is not a duration in whole seconds",
        ),
    ] {
        let mut policy = valid_policy("firestore-rules-denials.json");
        threshold(&mut policy)[field] = value.into();
        assert_refused(&policy, reason);
    }
    let mut policy = valid_policy("firestore-rules-denials.json");
    threshold(&mut policy)["aggregations"][0]["perSeriesAligner"] = "ALIGN_SUMS".into();
    assert_refused(&policy, "unknown variant `ALIGN_SUMS`");
}

#[test]
fn a_duration_of_part_of_a_minute_is_refused() {
    let mut policy = valid_policy("firestore-rules-denials.json");
    threshold(&mut policy)["duration"] = "90s".into();

    assert_refused(&policy, "not a whole number of minutes");
}

#[test]
fn a_ratio_aligned_unlike_its_denominator_is_refused() {
    let mut policy = valid_policy("firestore-errors.json");
    threshold(&mut policy)["denominatorAggregations"][0]["alignmentPeriod"] = "600s".into();

    assert_refused(&policy, "aligned and grouped alike");
}

#[test]
fn a_ratio_threshold_written_as_a_percentage_is_refused() {
    let mut policy = valid_policy("firestore-errors.json");
    threshold(&mut policy)["thresholdValue"] = 1.into();

    assert_refused(
        &policy,
        "a ratio's threshold is a fraction between 0 and 1, not 1",
    );
}
