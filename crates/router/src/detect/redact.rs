//! Rewriting text around findings: typed placeholders on the way in
//! ([`Placeholders`], restored on the way out by [`Restorer`]), and
//! redaction of what an answer must not carry ([`Guard`]).
//!
//! Both outbound rewriters work on a stream of chunks: a chunk's end may
//! cut a placeholder or a card number in two, so each holds back the few
//! characters that could still become one and releases them once the next
//! chunk settles it (or at the end). What is held is bounded: a
//! placeholder's length for [`Restorer`]; for [`Guard`], the longest run a
//! pattern could still be completing within [`HOLD_WINDOW`] bytes, and a
//! finding that reaches the end of what arrived (a private key block can
//! be long) up to [`MAX_HOLD`].

use std::collections::HashMap;
use std::sync::Arc;

use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::{Anchored, Input};

use super::{Detectors, Finding};

/// The placeholders handed out for one request. The same value gets the
/// same placeholder each time it occurs (`[EMAIL_1]` in the system prompt
/// and in the last user turn are one address), so the model can still
/// refer to it.
#[derive(Debug, Default, Clone)]
pub struct Placeholders {
    by_value: HashMap<(Arc<str>, String), String>,
    counts: HashMap<Arc<str>, usize>,
    /// Placeholder → original, for restoring.
    originals: Vec<(String, String)>,
}

impl Placeholders {
    /// `text` with each finding replaced by its placeholder.
    pub fn redact(&mut self, text: &str, findings: &[Finding]) -> String {
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in findings {
            let (Some(keep), Some(value)) = (text.get(at..f.range.start), text.get(f.range.clone())) else { continue };
            out.push_str(keep);
            out.push_str(&self.placeholder(&f.detector, value));
            at = f.range.end;
        }
        out.push_str(text.get(at..).unwrap_or_default());
        out
    }

    fn placeholder(&mut self, detector: &Arc<str>, value: &str) -> String {
        let key = (detector.clone(), value.to_string());
        if let Some(p) = self.by_value.get(&key) {
            return p.clone();
        }
        let n = self.counts.entry(detector.clone()).or_insert(0);
        *n += 1;
        let p = format!("[{}_{n}]", tag(detector));
        self.originals.push((p.clone(), value.to_string()));
        self.by_value.insert(key, p.clone());
        p
    }

    pub fn is_empty(&self) -> bool {
        self.originals.is_empty()
    }

    /// Puts the originals back into an answer, chunk by chunk.
    pub fn restorer(&self) -> Restorer {
        let longest = self.originals.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
        Restorer { originals: self.originals.iter().cloned().collect(), longest, held: String::new() }
    }
}

/// A detector's name as a placeholder's tag: `email` → `EMAIL`.
fn tag(detector: &str) -> String {
    detector.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect()
}

/// Replaces placeholders with the values they stand for, in a stream.
#[derive(Debug, Clone)]
pub struct Restorer {
    originals: HashMap<String, String>,
    longest: usize,
    held: String,
}

impl Restorer {
    /// What can be sent of everything pushed so far.
    pub fn push(&mut self, chunk: &str) -> String {
        self.held.push_str(chunk);
        // Hold from the last `[` that has no `]` after it, if what follows
        // it could still grow into a placeholder.
        let cut = match self.held.rfind('[') {
            Some(open) if !self.held[open..].contains(']') && self.held.len() - open < self.longest => open,
            _ => self.held.len(),
        };
        let rest = self.held.split_off(cut);
        let ready = std::mem::replace(&mut self.held, rest);
        self.replace(&ready)
    }

    /// Everything still held.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.held);
        self.replace(&rest)
    }

    fn replace(&self, text: &str) -> String {
        if self.originals.is_empty() || !text.contains('[') {
            return text.to_string();
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(open) = rest.find('[') {
            out.push_str(&rest[..open]);
            let tail = &rest[open..];
            match tail.find(']').map(|close| &tail[..=close]).and_then(|p| self.originals.get(p).map(|v| (p, v))) {
                Some((p, value)) => {
                    out.push_str(value);
                    rest = &tail[p.len()..];
                }
                None => {
                    out.push('[');
                    rest = &tail[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// How far back from the end of what arrived a pattern's start is looked
/// for: longer than any bounded detector's match (an IBAN with spaces is
/// 42 bytes, a provider key at most about 110).
pub const HOLD_WINDOW: usize = 128;
/// The most a [`Guard`] holds for one finding still growing at the end (a
/// private key block); past it, what is held is redacted and released.
pub const MAX_HOLD: usize = 8 * 1024;

/// Redacts findings from an answer as it streams: `[REDACTED_EMAIL]`.
pub struct Guard {
    detectors: Arc<Detectors>,
    prefixes: Arc<DFA>,
    cache: Cache,
    held: String,
    /// The detectors of every finding redacted so far: for the record.
    pub redacted: Vec<Arc<str>>,
}

/// One anchored automaton of every detector's pattern, to ask "could a
/// match still start here?" of the end of a stream.
pub fn prefix_automaton(detectors: &Detectors) -> Result<DFA, String> {
    let patterns: Vec<&str> = detectors.entries.iter().map(|e| e.regex.as_str()).collect();
    DFA::new_many(&patterns).map_err(|e| e.to_string())
}

impl Guard {
    pub fn new(detectors: Arc<Detectors>, prefixes: Arc<DFA>) -> Self {
        let cache = prefixes.create_cache();
        Self { detectors, prefixes, cache, held: String::new(), redacted: Vec::new() }
    }

    /// What can be sent of everything pushed so far, redacted.
    pub fn push(&mut self, chunk: &str) -> String {
        self.held.push_str(chunk);
        let findings = self.detectors.scan(&self.held);
        let len = self.held.len();
        let mut cut = self.viable_start().unwrap_or(len);
        // A finding that reaches the end may still be growing.
        if let Some(open) = findings.iter().find(|f| f.range.end >= len) {
            cut = cut.min(open.range.start);
        }
        // A finding cut in two by `cut` is held whole.
        if let Some(f) = findings.iter().find(|f| f.range.start < cut && f.range.end > cut) {
            cut = f.range.start;
        }
        if len - cut > MAX_HOLD {
            cut = len;
        }
        let done: Vec<Finding> = findings.into_iter().filter(|f| f.range.end <= cut).collect();
        let rest = self.held.split_off(cut);
        let ready = std::mem::replace(&mut self.held, rest);
        self.redact(&ready, &done)
    }

    /// Everything still held, redacted.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.held);
        let findings = self.detectors.scan(&rest);
        self.redact(&rest, &findings)
    }

    fn redact(&mut self, text: &str, findings: &[Finding]) -> String {
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in findings {
            out.push_str(text.get(at..f.range.start).unwrap_or_default());
            out.push_str(&format!("[REDACTED_{}]", tag(&f.detector)));
            self.redacted.push(f.detector.clone());
            at = f.range.end;
        }
        out.push_str(text.get(at..).unwrap_or_default());
        out
    }

    /// The earliest position in the window where some pattern, run
    /// anchored, has not yet failed by the end of what arrived.
    fn viable_start(&mut self) -> Option<usize> {
        let bytes = self.held.as_bytes();
        let from = bytes.len().saturating_sub(HOLD_WINDOW);
        (from..bytes.len()).filter(|p| self.held.is_char_boundary(*p)).find(|p| {
            let input = Input::new(bytes).range(*p..).anchored(Anchored::Yes);
            let Ok(mut state) = self.prefixes.start_state_forward(&mut self.cache, &input) else { return true };
            for b in &bytes[*p..] {
                match self.prefixes.next_state(&mut self.cache, state, *b) {
                    Ok(next) if next.is_dead() => return false,
                    Ok(next) => state = next,
                    // The automaton gave up (its cache thrashed): hold, to be safe.
                    Err(_) => return true,
                }
            }
            true
        })
    }
}
