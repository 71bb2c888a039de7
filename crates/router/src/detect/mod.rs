//! Built-in detectors of personal data and secrets, and a policy's own
//! patterns and keywords, found in one pass over a text.
//!
//! A detector is a pattern (a candidate) and a validator (the check that
//! makes a candidate a finding: Luhn for cards, mod-97 for IBANs, a parse
//! for IP addresses, an entropy rule for unnamed secrets). [`Detectors::scan`]
//! runs every pattern at once as one `RegexSet` over the text; only the
//! patterns that matched are then searched for their positions and checked.
//! Custom keywords go through one Aho-Corasick automaton.
//!
//! Invariants: a finding names its detector and its byte range, never a
//! copy of the text; findings never overlap (where two detectors claim the
//! same bytes, the more specific one wins: a private key block over the
//! secrets inside it, a card over a phone number); scanning never panics on
//! any input (fuzzed in `tests/detect.rs`).

mod check;
mod redact;

use std::ops::Range;
use std::sync::Arc;

use aho_corasick::AhoCorasick;
use regex::{Regex, RegexSet};

pub use redact::{prefix_automaton, Guard, Placeholders, Restorer, HOLD_WINDOW, MAX_HOLD};

/// What a built-in detector is about: policies name a group to mean all of
/// its detectors (`secret = "regulated"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Pii,
    NationalId,
    Network,
    Secret,
}

impl Group {
    pub const ALL: [Group; 4] = [Group::Pii, Group::NationalId, Group::Network, Group::Secret];

    pub fn as_str(self) -> &'static str {
        match self {
            Group::Pii => "pii",
            Group::NationalId => "national_id",
            Group::Network => "network",
            Group::Secret => "secret",
        }
    }
}

/// Returns the checked range of a candidate (validators may trim it, e.g.
/// an IBAN to its country's length), or `None` to drop it.
type Check = fn(text: &str, candidate: Range<usize>) -> Option<Range<usize>>;

/// A detector shipped with switchyard.
pub struct Builtin {
    pub name: &'static str,
    pub group: Group,
    /// Whether a validator beyond the pattern decides (checksums, parses):
    /// these are held to the corpus's precision and recall targets.
    pub validated: bool,
    pattern: &'static str,
    check: Check,
}

// ASCII word boundaries (`(?-u:\b)`) throughout: a Unicode one makes the
// regex engine give up its DFA on non-ASCII text, which is most text.
const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "private_key",
        group: Group::Secret,
        validated: true,
        // A block cut short (no END line) is still a key: everything after
        // its BEGIN line that looks like its body goes with it.
        pattern: r"-----BEGIN [A-Z0-9 ]{0,20}PRIVATE KEY(?: BLOCK)?-----(?:[\s\S]*?-----END [A-Z0-9 ]{0,20}PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\s:-]*)",
        check: check::always,
    },
    Builtin {
        name: "jwt",
        group: Group::Secret,
        validated: true,
        pattern: r"(?-u:\b)eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{8,}",
        check: check::jwt,
    },
    Builtin {
        name: "anthropic_key",
        group: Group::Secret,
        validated: true,
        pattern: r"sk-ant-(?:api|admin)[0-9]{2}-[A-Za-z0-9_-]{32,}",
        check: check::token_end,
    },
    Builtin {
        name: "openai_key",
        group: Group::Secret,
        validated: true,
        pattern: r"(?-u:\b)sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{32,}",
        check: check::openai_key,
    },
    Builtin {
        name: "aws_key",
        group: Group::Secret,
        validated: true,
        pattern: r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?-u:\b)",
        check: check::always,
    },
    Builtin {
        name: "gcp_key",
        group: Group::Secret,
        validated: true,
        pattern: r"(?-u:\b)AIza[0-9A-Za-z_-]{35}",
        check: check::token_end,
    },
    Builtin {
        name: "github_token",
        group: Group::Secret,
        validated: true,
        pattern: r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{60,255})(?-u:\b)",
        check: check::always,
    },
    Builtin {
        name: "gitlab_token",
        group: Group::Secret,
        validated: true,
        pattern: r"(?-u:\b)glpat-[A-Za-z0-9_-]{20,}",
        check: check::token_end,
    },
    Builtin {
        name: "slack_token",
        group: Group::Secret,
        validated: true,
        pattern: r"(?-u:\b)xox[abposre]-[0-9]+-[0-9]{6,}-[A-Za-z0-9-]{8,}",
        check: check::token_end,
    },
    Builtin {
        name: "stripe_key",
        group: Group::Secret,
        validated: true,
        pattern: r"(?-u:\b)(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{24,}(?-u:\b)",
        check: check::mixed_tail,
    },
    Builtin {
        name: "card",
        group: Group::Pii,
        validated: true,
        pattern: r"(?-u:\b)[0-9](?:[ -]?[0-9]){12,18}(?-u:\b)",
        check: check::card,
    },
    Builtin {
        name: "iban",
        group: Group::Pii,
        validated: true,
        pattern: r"(?-u:\b)[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}",
        check: check::iban,
    },
    Builtin {
        name: "ssn",
        group: Group::Pii,
        validated: true,
        pattern: r"(?-u:\b)[0-9]{3}-[0-9]{2}-[0-9]{4}(?-u:\b)",
        check: check::ssn,
    },
    Builtin {
        name: "nino",
        group: Group::NationalId,
        validated: true,
        pattern: r"(?-u:\b)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D](?-u:\b)",
        check: check::nino,
    },
    Builtin {
        name: "dni",
        group: Group::NationalId,
        validated: true,
        pattern: r"(?-u:\b)[0-9]{8}-?[A-Z](?-u:\b)",
        check: check::dni,
    },
    Builtin {
        name: "email",
        group: Group::Pii,
        validated: false,
        pattern: r"(?-u:\b)[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}\.)+[A-Za-z]{2,24}(?-u:\b)",
        check: check::email,
    },
    Builtin {
        name: "ipv6",
        group: Group::Network,
        validated: true,
        pattern: r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}",
        check: check::ipv6,
    },
    Builtin {
        name: "ipv4",
        group: Group::Network,
        validated: false,
        pattern: r"(?-u:\b)[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?-u:\b)",
        check: check::ipv4,
    },
    Builtin {
        name: "phone",
        group: Group::Pii,
        validated: false,
        // International (`+` and a country code, separators optional), then
        // national forms, which must be written with their separators: a bare
        // run of ten digits is an order number as often as a phone.
        pattern: r"\+[1-9][0-9]{0,2}(?:[ .-]?\(?[0-9]{1,4}\)?){1,5}[ .-]?[0-9]{2,4}|(?:\([2-9][0-9]{2}\) ?|(?-u:\b)[2-9][0-9]{2}[.-])[0-9]{3}[.-][0-9]{4}(?-u:\b)|(?-u:\b)0[1-9][0-9]{1,3}[ -][0-9]{3,4}[ -]?[0-9]{3,4}(?-u:\b)|(?-u:\b)0[1-9](?:[ .][0-9]{2}){4}(?-u:\b)",
        check: check::phone,
    },
    Builtin {
        name: "high_entropy",
        group: Group::Secret,
        validated: false,
        pattern: r"[A-Za-z0-9+/_-]{24,200}={0,2}",
        check: check::high_entropy,
    },
];

/// Every built-in detector, in the order that breaks ties: where two
/// findings overlap, the one from the earlier detector wins.
pub fn builtins() -> &'static [Builtin] {
    BUILTINS
}

/// A detector name a policy may use, or the group it names; `None` if it
/// is neither.
pub fn expand(name: &str) -> Option<Vec<&'static str>> {
    if let Some(b) = BUILTINS.iter().find(|b| b.name == name) {
        return Some(vec![b.name]);
    }
    let group = Group::ALL.into_iter().find(|g| g.as_str() == name)?;
    Some(BUILTINS.iter().filter(|b| b.group == group).map(|b| b.name).collect())
}

/// One detected item: which detector, and where in the scanned text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub detector: Arc<str>,
    pub range: Range<usize>,
}

/// A policy's own detector: patterns (regular expressions) and keywords
/// (matched case-insensitively on word boundaries).
#[derive(Debug, Clone, Default)]
pub struct Custom {
    pub name: String,
    pub patterns: Vec<String>,
    pub keywords: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DetectError {
    #[error("unknown detector `{0}`")]
    Unknown(String),
    #[error("`{name}`: pattern {index} is not valid: {message}")]
    Pattern { name: String, index: usize, message: String },
}

struct Entry {
    name: Arc<str>,
    regex: Regex,
    check: Check,
}

/// A compiled set of detectors, ready to scan. Cheap to share.
pub struct Detectors {
    set: RegexSet,
    entries: Vec<Entry>,
    keywords: Option<(AhoCorasick, Vec<Arc<str>>)>,
}

impl std::fmt::Debug for Detectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Detectors {
    /// Every built-in detector.
    pub fn all() -> Self {
        match Self::new(BUILTINS.iter().map(|b| b.name), &[]) {
            Ok(d) => d,
            // The built-in patterns are constants, compiled in every test.
            Err(_) => Self { set: RegexSet::empty(), entries: Vec::new(), keywords: None },
        }
    }

    /// The named built-ins (or groups) and the custom detectors.
    pub fn new<'a>(builtin: impl IntoIterator<Item = &'a str>, custom: &[Custom]) -> Result<Self, DetectError> {
        let mut wanted = Vec::new();
        for name in builtin {
            wanted.extend(expand(name).ok_or_else(|| DetectError::Unknown(name.to_string()))?);
        }
        let mut entries = Vec::new();
        for b in BUILTINS.iter().filter(|b| wanted.contains(&b.name)) {
            let regex = Regex::new(b.pattern).map_err(|e| DetectError::Pattern {
                name: b.name.into(),
                index: 0,
                message: e.to_string(),
            })?;
            entries.push(Entry { name: b.name.into(), regex, check: b.check });
        }
        let mut words = Vec::new();
        let mut word_names = Vec::new();
        for c in custom {
            let name: Arc<str> = c.name.as_str().into();
            for (index, p) in c.patterns.iter().enumerate() {
                // The flag goes in the pattern itself, so the set agrees.
                let regex = Regex::new(&format!("(?i:{p})")).map_err(|e| DetectError::Pattern {
                    name: c.name.clone(),
                    index,
                    message: e.to_string(),
                })?;
                entries.push(Entry { name: name.clone(), regex, check: check::always });
            }
            for w in c.keywords.iter().filter(|w| !w.trim().is_empty()) {
                words.push(w.trim().to_string());
                word_names.push(name.clone());
            }
        }
        let set = RegexSet::new(entries.iter().map(|e| e.regex.as_str())).map_err(|e| DetectError::Pattern {
            name: "set".into(),
            index: 0,
            message: e.to_string(),
        })?;
        let keywords = if words.is_empty() {
            None
        } else {
            let ac = AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                .build(&words)
                .map_err(|e| DetectError::Pattern { name: "keywords".into(), index: 0, message: e.to_string() })?;
            Some((ac, word_names))
        };
        Ok(Self { set, entries, keywords })
    }

    /// The detectors in this set, each once, in tie-break order.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        let keyword_names = self.keywords.iter().flat_map(|(_, n)| n.iter());
        for n in self.entries.iter().map(|e| &e.name).chain(keyword_names) {
            if !names.contains(&n.as_ref()) {
                names.push(n);
            }
        }
        names
    }

    /// Every finding in `text`, in order, none overlapping.
    pub fn scan(&self, text: &str) -> Vec<Finding> {
        let mut found: Vec<(usize, Finding)> = Vec::new();
        for index in self.set.matches(text).iter() {
            let Some(entry) = self.entries.get(index) else { continue };
            for m in entry.regex.find_iter(text) {
                if let Some(range) = (entry.check)(text, m.range()) {
                    found.push((index, Finding { detector: entry.name.clone(), range }));
                }
            }
        }
        if let Some((ac, names)) = &self.keywords {
            let rank = self.entries.len();
            for m in ac.find_iter(text) {
                let range = m.range();
                if check::word_bounded(text, range.clone()) {
                    if let Some(name) = names.get(m.pattern().as_usize()) {
                        found.push((rank, Finding { detector: name.clone(), range }));
                    }
                }
            }
        }
        // Earlier detectors first, then longer: the kept set is greedy in
        // that order, so a specific finding shadows a generic one it overlaps.
        found.sort_by(|(ra, a), (rb, b)| ra.cmp(rb).then(b.range.len().cmp(&a.range.len())));
        let mut kept: Vec<Finding> = Vec::with_capacity(found.len());
        for (_, f) in found {
            if !kept.iter().any(|k| k.range.start < f.range.end && f.range.start < k.range.end) {
                kept.push(f);
            }
        }
        kept.sort_by_key(|f| f.range.start);
        kept
    }
}
