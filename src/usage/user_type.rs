//! The plans a user can be on and the daily limit of each: the one place that names them.
//!
//! A new plan is a variant here (its name, its limit flag); the compiler then points at every
//! match that must learn it. `firestore.rules` lists the names too, and a test keeps the two
//! lists equal.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserType {
    Trial,
    Subscribed,
}

impl UserType {
    pub const ALL: [Self; 2] = [Self::Trial, Self::Subscribed];

    /// The plan of a user whose claim is absent or unknown, and of a stored type this
    /// version does not know.
    pub const DEFAULT: Self = Self::Trial;

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trial => "trial",
            Self::Subscribed => "subscribed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|user_type| user_type.as_str() == raw)
    }

    /// The user type named by a token claim or a stored field: absent or unknown means
    /// [`Self::DEFAULT`].
    pub fn from_claim(claim: Option<&str>) -> Self {
        claim.and_then(Self::parse).unwrap_or(Self::DEFAULT)
    }

    /// The names, for messages: `trial, subscribed`.
    pub fn names() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

impl fmt::Display for UserType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The daily limit of each user type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub trial: i64,
    pub subscribed: i64,
}

impl Limits {
    /// The same limit for every type.
    pub fn uniform(limit: i64) -> Self {
        Self {
            trial: limit,
            subscribed: limit,
        }
    }

    pub fn for_type(&self, user_type: UserType) -> i64 {
        match user_type {
            UserType::Trial => self.trial,
            UserType::Subscribed => self.subscribed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_or_absent_user_type_claims_mean_the_default() {
        assert_eq!(UserType::from_claim(None), UserType::Trial);
        assert_eq!(UserType::from_claim(Some("gold")), UserType::Trial);
        assert_eq!(
            UserType::from_claim(Some("subscribed")),
            UserType::Subscribed
        );
    }

    #[test]
    fn every_type_round_trips_through_its_name_and_json() {
        for user_type in UserType::ALL {
            assert_eq!(UserType::parse(user_type.as_str()), Some(user_type));
            let json = serde_json::to_value(user_type).unwrap();
            assert_eq!(json, user_type.as_str());
            assert_eq!(serde_json::from_value::<UserType>(json).unwrap(), user_type);
        }
        assert_eq!(UserType::names(), "trial, subscribed");
    }

    #[test]
    fn each_type_has_its_own_limit() {
        let limits = Limits {
            trial: 1,
            subscribed: 2,
        };
        assert_eq!(limits.for_type(UserType::Trial), 1);
        assert_eq!(limits.for_type(UserType::Subscribed), 2);
    }
}
