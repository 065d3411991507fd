//! The plans a user can be on: the one place that names them.
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
}
