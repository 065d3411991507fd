//! `nextPageToken`: opaque to clients, it names the report it continues and the last item
//! returned, so a page resumes exactly after it. A token that does not decode, or belongs to
//! another report, is a 400.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::ApiError;
use crate::usage::{PageCursor, UserId};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Token {
    /// The report and its filters, e.g. `daily/2024-01-15/trial`.
    report: String,
    figure: i64,
    user_id: String,
}

pub fn encode(report: &str, cursor: &PageCursor) -> String {
    let token = Token {
        report: report.to_owned(),
        figure: cursor.figure,
        user_id: cursor.user_id.to_string(),
    };
    // Serialising plain strings and integers cannot fail.
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).unwrap_or_default())
}

pub fn decode(report: &str, raw: &str) -> Result<PageCursor, ApiError> {
    let invalid = || ApiError::InvalidRequest("pageToken is not a token of this report".to_owned());
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| invalid())?;
    let token: Token = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if token.report != report {
        return Err(invalid());
    }
    Ok(PageCursor {
        figure: token.figure,
        user_id: UserId::parse(&token.user_id).map_err(|_| invalid())?,
    })
}

/// A token resuming a listing after the item with this key (a user id, an entry id).
pub fn encode_after(report: &str, key: &UserId) -> String {
    encode(
        report,
        &PageCursor {
            figure: 0,
            user_id: key.clone(),
        },
    )
}

pub fn decode_after(report: &str, raw: &str) -> Result<UserId, ApiError> {
    decode(report, raw).map(|cursor| cursor.user_id)
}

/// The longest key [`encode_keyed`] takes: an outbox entry's id is a user id (128
/// characters at most) and a window and threshold.
const MAX_KEY_CHARS: usize = 256;

/// A token resuming a listing after the item with this figure and key, where the key is not
/// a user id (an outbox entry's id).
pub fn encode_keyed(report: &str, figure: i64, key: &str) -> String {
    let token = Token {
        report: report.to_owned(),
        figure,
        user_id: key.to_owned(),
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).unwrap_or_default())
}

pub fn decode_keyed(report: &str, raw: &str) -> Result<(i64, String), ApiError> {
    let invalid = || ApiError::InvalidRequest("pageToken is not a token of this report".to_owned());
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| invalid())?;
    let token: Token = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    let key_fits = (1..=MAX_KEY_CHARS).contains(&token.user_id.chars().count());
    if token.report != report || !key_fits {
        return Err(invalid());
    }
    Ok((token.figure, token.user_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor() -> PageCursor {
        PageCursor {
            figure: 1250,
            user_id: UserId::parse("alice").unwrap(),
        }
    }

    #[test]
    fn a_token_round_trips_for_its_report_only() {
        let token = encode("daily/2024-01-15/all", &cursor());
        assert_eq!(decode("daily/2024-01-15/all", &token).unwrap(), cursor());
        assert!(decode("daily/2024-01-16/all", &token).is_err());
        assert!(decode("monthly/2024/1/all", &token).is_err());
    }

    #[test]
    fn a_keyed_token_round_trips_for_its_report_only() {
        let key = format!("{}_2026-12-04_daily-80", "u".repeat(128));
        let token = encode_keyed("notifications/failed", 1_764_806_400_000, &key);
        assert_eq!(
            decode_keyed("notifications/failed", &token).unwrap(),
            (1_764_806_400_000, key)
        );
        assert!(decode_keyed("notifications/pending", &token).is_err());
        let too_long = encode_keyed("notifications/failed", 0, &"k".repeat(257));
        assert!(decode_keyed("notifications/failed", &too_long).is_err());
    }

    #[test]
    fn malformed_or_tampered_tokens_are_refused() {
        let token = encode("daily/2024-01-15/all", &cursor());
        let mut tampered = token.clone().into_bytes();
        tampered[3] ^= 0x01;
        let tampered = String::from_utf8(tampered).unwrap();
        let forged_user = URL_SAFE_NO_PAD
            .encode(r#"{"report":"daily/2024-01-15/all","figure":1,"user_id":"a/b"}"#);
        let wrong_type = URL_SAFE_NO_PAD
            .encode(r#"{"report":"daily/2024-01-15/all","figure":"1","user_id":"a"}"#);
        for bad in [
            "",
            "!!!",
            "bm90IGpzb24",
            &tampered,
            &forged_user,
            &wrong_type,
            &format!("{token}="),
        ] {
            assert!(
                decode("daily/2024-01-15/all", bad).is_err(),
                "{bad:?} accepted"
            );
        }
    }
}
