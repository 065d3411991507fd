//! The limits a request is judged by: a daily limit, an optional monthly cap, and how they are
//! applied (enforced, tried in shadow, or off), per user type.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::UserType;

/// How a user's limits are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// A request over a limit is refused.
    #[default]
    Enforce,
    /// Nothing is refused: every request is recorded, and one that `enforce` would refuse is
    /// flagged, so that a new limit can be watched before it bites.
    Shadow,
    /// Nothing is refused and nothing is counted.
    Off,
}

impl Enforcement {
    pub const ALL: [Self; 3] = [Self::Enforce, Self::Shadow, Self::Off];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Shadow => "shadow",
            Self::Off => "off",
        }
    }

    /// Whether a request this mode lets through is counted.
    pub fn counts(self) -> bool {
        self != Self::Off
    }
}

impl fmt::Display for Enforcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Not one of `enforce`, `shadow`, `off`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an enforcement mode: use enforce, shadow or off")]
pub struct UnknownEnforcement(pub String);

impl FromStr for Enforcement {
    type Err = UnknownEnforcement;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|mode| mode.as_str() == raw)
            .ok_or_else(|| UnknownEnforcement(raw.to_owned()))
    }
}

/// What `POST /usage` answers while the store is down (unreachable, or past the request's
/// deadline): a refusal the store gave is never turned into an admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnStoreUnavailable {
    /// 503: fail closed.
    #[default]
    Deny,
    /// 200 without counting, flagged `degraded`: fail open.
    Allow,
}

/// Not `deny` or `allow`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not deny or allow")]
pub struct UnknownOutagePolicy(pub String);

impl FromStr for OnStoreUnavailable {
    type Err = UnknownOutagePolicy;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw {
            "deny" => Ok(Self::Deny),
            "allow" => Ok(Self::Allow),
            _ => Err(UnknownOutagePolicy(raw.to_owned())),
        }
    }
}

/// The window a limit counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitWindow {
    Daily,
    Monthly,
}

impl LimitWindow {
    pub const ALL: [Self; 2] = [Self::Daily, Self::Monthly];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Daily => "daily",
            Self::Monthly => "monthly",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|window| window.as_str() == raw)
    }
}

/// What one user's requests are judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub daily_limit: i64,
    /// `None`: no monthly cap.
    pub monthly_limit: Option<i64>,
    pub enforcement: Enforcement,
}

impl Policy {
    /// A daily limit alone, enforced.
    pub const fn daily(daily_limit: i64) -> Self {
        Self {
            daily_limit,
            monthly_limit: None,
            enforcement: Enforcement::Enforce,
        }
    }

    /// The window that `tokens` more would go over, beside what the day and the month have
    /// used and what is held; the month first, as its refusal lasts longer. `None` when both
    /// take them.
    pub fn exceeded_by(
        &self,
        day_used: i64,
        month_used: i64,
        held: i64,
        tokens: i64,
    ) -> Option<LimitWindow> {
        let over = |limit, used| !fits(limit, used, held, tokens);
        if self
            .monthly_limit
            .is_some_and(|limit| over(limit, month_used))
        {
            Some(LimitWindow::Monthly)
        } else if over(self.daily_limit, day_used) {
            Some(LimitWindow::Daily)
        } else {
            None
        }
    }
}

/// Whether `tokens` more fit under `limit` beside what is used and held, without overflow.
pub fn fits(limit: i64, used: i64, held: i64, tokens: i64) -> bool {
    used.checked_add(held)
        .and_then(|total| total.checked_add(tokens))
        .is_some_and(|total| total <= limit)
}

/// The policy of each user type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub trial: Policy,
    pub subscribed: Policy,
}

impl Limits {
    /// Daily limits alone, enforced.
    pub const fn daily(trial: i64, subscribed: i64) -> Self {
        Self {
            trial: Policy::daily(trial),
            subscribed: Policy::daily(subscribed),
        }
    }

    /// The same daily limit for every type, enforced.
    pub const fn uniform(limit: i64) -> Self {
        Self::daily(limit, limit)
    }

    pub fn for_type(&self, user_type: UserType) -> Policy {
        match user_type {
            UserType::Trial => self.trial,
            UserType::Subscribed => self.subscribed,
        }
    }

    pub fn for_type_mut(&mut self, user_type: UserType) -> &mut Policy {
        match user_type {
            UserType::Trial => &mut self.trial,
            UserType::Subscribed => &mut self.subscribed,
        }
    }
}

/// A share of a limit, above 0 and at most 1: where answers warn that the limit is near
/// (`SOFT_LIMIT_FRACTION`) and where a threshold event is sent (`NOTIFY_THRESHOLDS`). Kept as
/// parts per ten thousand so that the boundary is exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Share {
    per_ten_thousand: i64,
}

/// A fraction that is not a decimal in (0, 1] with at most four decimals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a fraction above 0 and at most 1 with at most four decimals (e.g. 0.8)")]
pub struct InvalidFraction(pub String);

impl Share {
    const SCALE: i64 = 10_000;

    /// Whether `used` (tokens used and held) reaches the soft share of `limit`.
    pub fn reached(&self, used: i64, limit: i64) -> bool {
        i128::from(used) * i128::from(Self::SCALE)
            >= i128::from(limit) * i128::from(self.per_ten_thousand)
    }
}

impl Share {
    /// In percent, its decimal point written `_` (`80`, `100`, `12_5`): a name part that
    /// holds no `.`.
    pub fn percent_label(&self) -> String {
        let (whole, hundredths) = (self.per_ten_thousand / 100, self.per_ten_thousand % 100);
        if hundredths == 0 {
            return whole.to_string();
        }
        let hundredths = format!("{hundredths:02}");
        format!("{whole}_{}", hundredths.trim_end_matches('0'))
    }
}

/// As the fraction it was given as, shortest: `0.8`, `1`.
impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, decimals) = (
            self.per_ten_thousand / Self::SCALE,
            self.per_ten_thousand % Self::SCALE,
        );
        if decimals == 0 {
            return write!(f, "{whole}");
        }
        let decimals = format!("{decimals:04}");
        write!(f, "{whole}.{}", decimals.trim_end_matches('0'))
    }
}

impl Default for Share {
    fn default() -> Self {
        Self {
            per_ten_thousand: 8_000,
        }
    }
}

impl FromStr for Share {
    type Err = InvalidFraction;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidFraction(raw.to_owned());
        let (whole, decimals) = raw.split_once('.').unwrap_or((raw, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !digits(whole) || !digits(decimals) || decimals.len() > 4 {
            return Err(invalid());
        }
        let whole: i64 = whole.parse().map_err(|_| invalid())?;
        let decimals: i64 = format!("{decimals:0<4}").parse().map_err(|_| invalid())?;
        let per_ten_thousand = whole
            .checked_mul(Self::SCALE)
            .and_then(|scaled| scaled.checked_add(decimals))
            .filter(|share| (1..=Self::SCALE).contains(share))
            .ok_or_else(invalid)?;
        Ok(Self { per_ten_thousand })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_from_their_names_only() {
        for mode in Enforcement::ALL {
            assert_eq!(mode.as_str().parse(), Ok(mode));
        }
        assert!("Enforce".parse::<Enforcement>().is_err());
        assert!("".parse::<Enforcement>().is_err());
    }

    #[test]
    fn the_month_is_named_before_the_day() {
        let policy = Policy {
            monthly_limit: Some(100),
            ..Policy::daily(10)
        };
        assert_eq!(policy.exceeded_by(0, 0, 0, 10), None);
        assert_eq!(policy.exceeded_by(5, 0, 0, 6), Some(LimitWindow::Daily));
        assert_eq!(policy.exceeded_by(5, 95, 0, 6), Some(LimitWindow::Monthly));
        assert_eq!(policy.exceeded_by(0, 91, 0, 10), Some(LimitWindow::Monthly));
        assert_eq!(policy.exceeded_by(0, 80, 5, 5), None);
        assert_eq!(Policy::daily(10).exceeded_by(0, i64::MAX, 0, 10), None);
        assert_eq!(
            policy.exceeded_by(i64::MAX, 0, 0, 1),
            Some(LimitWindow::Daily)
        );
    }

    #[test]
    fn each_type_has_its_own_policy() {
        let limits = Limits::daily(1, 2);
        assert_eq!(limits.for_type(UserType::Trial).daily_limit, 1);
        assert_eq!(limits.for_type(UserType::Subscribed).daily_limit, 2);
    }

    #[test]
    fn the_soft_limit_is_exact_at_its_boundary() {
        let soft: Share = "0.8".parse().unwrap();
        assert_eq!(soft, Share::default());
        assert!(!soft.reached(799, 1_000));
        assert!(soft.reached(800, 1_000));
        assert!(soft.reached(801, 1_000));
        // 0.8 of 7 is 5.6: 5 is below, 6 reaches it.
        assert!(!soft.reached(5, 7));
        assert!(soft.reached(6, 7));
        assert!(soft.reached(0, 0));
        assert!(soft.reached(i64::MAX, i64::MAX));
        let third: Share = "0.3333".parse().unwrap();
        assert!(!third.reached(3_332, 10_000));
        assert!(third.reached(3_333, 10_000));
        assert!("1".parse::<Share>().unwrap().reached(10, 10));
        assert!(!"1.0".parse::<Share>().unwrap().reached(9, 10));
    }

    #[test]
    fn a_share_is_labelled_in_percent_without_a_point() {
        for (given, label) in [
            ("0.8", "80"),
            ("1", "100"),
            ("0.125", "12_5"),
            ("0.0001", "0_01"),
        ] {
            assert_eq!(given.parse::<Share>().unwrap().percent_label(), label);
        }
    }

    #[test]
    fn a_share_shows_as_its_shortest_fraction() {
        for (given, shown) in [
            ("0.8", "0.8"),
            ("0.80", "0.8"),
            ("1.0", "1"),
            ("0.0001", "0.0001"),
            ("0.125", "0.125"),
        ] {
            assert_eq!(given.parse::<Share>().unwrap().to_string(), shown);
            assert_eq!(shown.parse::<Share>().unwrap().to_string(), shown);
        }
    }

    #[test]
    fn a_soft_limit_is_a_fraction_in_range() {
        for bad in [
            "0", "0.0", "1.0001", "2", "-0.5", ".8", "0.8.1", "0.12345", "0,8", "", "x",
        ] {
            assert!(bad.parse::<Share>().is_err(), "{bad}");
        }
        for good in ["0.0001", "0.5", "0.95", "1", "1.0000"] {
            assert!(good.parse::<Share>().is_ok(), "{good}");
        }
    }
}
