//! The interchange format of `export` and `import`: one document per line,
//! `{"collection": …, "id": …, "data": {…}}`, `data` holding the schema's fields with its
//! types (integers as integers, `averageDailyUsage` a number, timestamps in RFC 3339).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::store::{Collection, Document};
use crate::usage::{MonthlyUsage, StoredDay};

#[derive(Debug, Serialize)]
#[serde(tag = "collection")]
enum Line {
    #[serde(rename = "daily_token_usage")]
    Daily { id: String, data: StoredDay },
    #[serde(rename = "token_usage_history")]
    History { id: String, data: MonthlyUsage },
}

/// One line, without its newline.
pub fn encode(id: &str, document: &Document) -> Result<String, serde_json::Error> {
    let line = match document {
        Document::Day(day) => Line::Daily {
            id: id.to_owned(),
            data: day.clone(),
        },
        Document::Month(month) => Line::History {
            id: id.to_owned(),
            data: month.clone(),
        },
    };
    serde_json::to_string(&line)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLine {
    collection: String,
    id: String,
    data: Map<String, Value>,
}

/// The id and document of one line, or why it is not one. A field the schema does not have
/// is refused rather than dropped.
pub fn decode(line: &str) -> Result<(String, Document), String> {
    let raw: RawLine = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let data = Value::Object(raw.data.clone());
    let (document, canonical) = match Collection::from_name(&raw.collection) {
        Some(Collection::Daily) => {
            let day: StoredDay = serde_json::from_value(data).map_err(|e| e.to_string())?;
            let canonical = serde_json::to_value(&day).map_err(|e| e.to_string())?;
            (Document::Day(day), canonical)
        }
        Some(Collection::History) => {
            let month: MonthlyUsage = serde_json::from_value(data).map_err(|e| e.to_string())?;
            let canonical = serde_json::to_value(&month).map_err(|e| e.to_string())?;
            (Document::Month(month), canonical)
        }
        None => return Err(format!("unknown collection {:?}", raw.collection)),
    };
    if let Some(unknown) = raw
        .data
        .keys()
        .find(|key| canonical.get(key.as_str()).is_none())
    {
        return Err(format!("data has an unknown field {unknown:?}"));
    }
    Ok((raw.id, document))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MONTH: &str = r#"{"collection":"token_usage_history","id":"abc_2024_01","data":{"userId":"abc","year":2024,"month":1,"dailyUsage":{"01":850,"02":1200},"totalMonthlyTokens":2050,"averageDailyUsage":1025.0,"peakUsageDate":"02","peakUsageTokens":1200,"userType":"trial","createdAt":"2024-01-01T00:00:00Z","updatedAt":"2024-01-02T23:59:59.123456Z"}}"#;

    #[test]
    fn a_line_round_trips_exactly() {
        let (id, document) = decode(MONTH).unwrap();
        assert_eq!(id, "abc_2024_01");
        assert_eq!(encode(&id, &document).unwrap(), MONTH);
    }

    #[test]
    fn a_bad_line_says_why() {
        let wrong_type = MONTH.replace(
            "\"totalMonthlyTokens\":2050",
            "\"totalMonthlyTokens\":\"2050\"",
        );
        assert!(decode(&wrong_type).unwrap_err().contains("invalid type"));
        let unknown = MONTH.replace(
            "\"collection\":\"token_usage_history\"",
            "\"collection\":\"users\"",
        );
        assert!(decode(&unknown).is_err());
        let extra = MONTH.replace("\"year\":2024", "\"year\":2024,\"plan\":\"x\"");
        assert!(decode(&extra).unwrap_err().contains("unknown field"));
        assert!(decode("{not json").is_err());
    }
}
