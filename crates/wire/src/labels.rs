//! Shared labels: how a request ended, and where a handoff to a person stands.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How a request ended, as the gateway records it and sends it in
/// [`headers::LABEL`](crate::headers::LABEL): a client (the bench) tells a
/// task done from a refusal or a handoff by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResultLabel {
    Answered,
    Refused,
    /// Handed off to a person (a `handoff` rule).
    HumanEscalated,
    Error,
}

impl ResultLabel {
    pub const ALL: [ResultLabel; 4] =
        [ResultLabel::Answered, ResultLabel::Refused, ResultLabel::HumanEscalated, ResultLabel::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            ResultLabel::Answered => "answered",
            ResultLabel::Refused => "refused",
            ResultLabel::HumanEscalated => "human-escalated",
            ResultLabel::Error => "error",
        }
    }
}

/// Where a handoff to a person stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HandoffStatus {
    Open,
    Resolved,
}

impl HandoffStatus {
    pub const ALL: [HandoffStatus; 2] = [HandoffStatus::Open, HandoffStatus::Resolved];

    pub fn as_str(self) -> &'static str {
        match self {
            HandoffStatus::Open => "open",
            HandoffStatus::Resolved => "resolved",
        }
    }
}

/// A label or status that is not one of the known ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownLabel(pub String);

impl fmt::Display for UnknownLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown label `{}`", self.0)
    }
}

impl std::error::Error for UnknownLabel {}

macro_rules! string_forms {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $t {
            type Err = UnknownLabel;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL.into_iter().find(|l| l.as_str() == s).ok_or_else(|| UnknownLabel(s.to_string()))
            }
        }
    };
}

string_forms!(ResultLabel);
string_forms!(HandoffStatus);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_read_and_write_as_their_wire_strings() {
        for (label, s) in [
            (ResultLabel::Answered, "answered"),
            (ResultLabel::Refused, "refused"),
            (ResultLabel::HumanEscalated, "human-escalated"),
            (ResultLabel::Error, "error"),
        ] {
            assert_eq!((label.as_str(), label.to_string()), (s, s.to_string()));
            assert_eq!(serde_json::to_value(label).unwrap(), s, "serde and as_str agree");
            assert_eq!(serde_json::from_value::<ResultLabel>(s.into()).unwrap(), label);
            assert_eq!(s.parse::<ResultLabel>(), Ok(label));
        }
        for (status, s) in [(HandoffStatus::Open, "open"), (HandoffStatus::Resolved, "resolved")] {
            assert_eq!(serde_json::to_value(status).unwrap(), s);
            assert_eq!(s.parse::<HandoffStatus>(), Ok(status));
        }
        assert_eq!("pass".parse::<ResultLabel>(), Err(UnknownLabel("pass".into())));
        assert!("closed".parse::<HandoffStatus>().is_err());
    }
}
