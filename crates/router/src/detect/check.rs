//! Validators: what turns a pattern's candidate into a finding. Each takes
//! the whole text and the candidate's range (so it can look at what is
//! around it) and returns the range to report, or `None`.
//!
//! The heuristic ones (phone, IPv4, email, high entropy) encode what the
//! labelled corpus (`datasets/pii`) showed tells the real items from the
//! look-alikes; `switchyard eval pii` measures them.

use std::net::Ipv6Addr;
use std::ops::Range;

use base64::Engine as _;

pub(super) fn always(_: &str, r: Range<usize>) -> Option<Range<usize>> {
    Some(r)
}

fn before(text: &str, r: &Range<usize>) -> Option<char> {
    text.get(..r.start).and_then(|s| s.chars().next_back())
}

fn after(text: &str, r: &Range<usize>) -> Option<char> {
    text.get(r.end..).and_then(|s| s.chars().next())
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// The candidate is a whole token: nothing token-like glued to either end.
pub(super) fn token_end(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let glued = |c: Option<char>| c.is_some_and(is_token_char);
    (!glued(before(text, &r)) && !glued(after(text, &r))).then_some(r)
}

/// A keyword stands as a word of its own.
pub(super) fn word_bounded(text: &str, r: Range<usize>) -> bool {
    let glued = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    !glued(before(text, &r)) && !glued(after(text, &r))
}

fn classes(s: &str) -> (bool, bool, usize) {
    (
        s.bytes().any(|b| b.is_ascii_uppercase()),
        s.bytes().any(|b| b.is_ascii_lowercase()),
        s.bytes().filter(u8::is_ascii_digit).count(),
    )
}

/// Random keys mix cases and digits; identifiers that share a key's
/// prefix (`sk_test_helper`, `sk-learn-…`) do not.
pub(super) fn mixed_tail(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let tail = text.get(r.clone())?.rsplit(['_', '-']).next()?;
    let (upper, lower, digits) = classes(tail);
    (upper && lower && digits > 0).then_some(r)
}

pub(super) fn openai_key(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let s = text.get(r.clone())?;
    if s.starts_with("sk-ant-") || s.contains("--") {
        return None;
    }
    let (upper, lower, digits) = classes(s.get(3..)?);
    (upper && lower && digits > 0).then_some(r).and_then(|r| token_end(text, r))
}

/// A JWT's header is base64url JSON naming its algorithm.
pub(super) fn jwt(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let header = text.get(r.clone())?.split('.').next()?;
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header.trim_end_matches('=')).ok()?;
    let json = String::from_utf8(decoded).ok()?;
    (json.trim_start().starts_with('{') && json.contains("\"alg\"")).then_some(r)
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(*d);
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Issuer prefixes of the card networks people paste: a Luhn check alone
/// passes one random number in ten.
fn card_issuer(d: &[u8]) -> bool {
    let prefix = |n: usize| d.iter().take(n).fold(0u32, |acc, x| acc * 10 + u32::from(*x));
    let len = d.len();
    match d.first() {
        Some(4) => matches!(len, 13 | 16 | 19),
        Some(3) => matches!(prefix(2), 34 | 37) && len == 15 || matches!(prefix(2), 35 | 36 | 38 | 39 | 30),
        Some(5) => (51..=55).contains(&prefix(2)) && len == 16 || matches!(prefix(2), 50 | 56..=59),
        Some(2) => (2221..=2720).contains(&prefix(4)) && len == 16,
        Some(6) => prefix(4) == 6011 || prefix(2) == 65 || prefix(2) == 62 || (644..=649).contains(&prefix(3)),
        _ => false,
    }
}

pub(super) fn card(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let s = text.get(r.clone())?;
    // Part of a longer dotted or dashed number (a version, a reference).
    if before(text, &r).is_some_and(|c| matches!(c, '-' | '.' | '/' | '+'))
        || after(text, &r).is_some_and(|c| {
            matches!(c, '-' | '.' | '/') && text[r.end + 1..].starts_with(|c: char| c.is_ascii_digit())
        })
    {
        return None;
    }
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_digit).map(|b| b - b'0').collect();
    if !(13..=19).contains(&digits.len()) || !card_issuer(&digits) || !luhn(&digits) {
        return None;
    }
    // Written as people write cards: plain, or in groups with one kind of
    // separator (4-4-4-4, Amex 4-6-5, 4-6-4).
    let seps: Vec<char> = s.chars().filter(|c| !c.is_ascii_digit()).collect();
    if seps.is_empty() {
        return Some(r);
    }
    if seps.iter().any(|c| *c != seps[0]) {
        return None;
    }
    let groups: Vec<usize> = s.split(seps[0]).map(str::len).collect();
    let fours = groups.len() >= 3
        && groups[..groups.len() - 1].iter().all(|g| *g == 4)
        && groups.last().is_some_and(|g| (1..=4).contains(g));
    let amex = matches!(groups.as_slice(), [4, 6, 5] | [4, 6, 4]);
    (fours || amex).then_some(r)
}

/// IBAN lengths by country (ISO 13616 registry).
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24),
    ("AE", 23),
    ("AL", 28),
    ("AT", 20),
    ("AZ", 28),
    ("BA", 20),
    ("BE", 16),
    ("BG", 22),
    ("BH", 22),
    ("BR", 29),
    ("CH", 21),
    ("CR", 22),
    ("CY", 28),
    ("CZ", 24),
    ("DE", 22),
    ("DK", 18),
    ("DO", 28),
    ("EE", 20),
    ("EG", 29),
    ("ES", 24),
    ("FI", 18),
    ("FO", 18),
    ("FR", 27),
    ("GB", 22),
    ("GE", 22),
    ("GI", 23),
    ("GL", 18),
    ("GR", 27),
    ("GT", 28),
    ("HR", 21),
    ("HU", 28),
    ("IE", 22),
    ("IL", 23),
    ("IS", 26),
    ("IT", 27),
    ("JO", 30),
    ("KW", 30),
    ("KZ", 20),
    ("LB", 28),
    ("LI", 21),
    ("LT", 20),
    ("LU", 20),
    ("LV", 21),
    ("MC", 27),
    ("MD", 24),
    ("ME", 22),
    ("MK", 19),
    ("MR", 27),
    ("MT", 31),
    ("MU", 30),
    ("NL", 18),
    ("NO", 15),
    ("PK", 24),
    ("PL", 28),
    ("PS", 29),
    ("PT", 25),
    ("QA", 29),
    ("RO", 24),
    ("RS", 22),
    ("SA", 24),
    ("SE", 24),
    ("SI", 19),
    ("SK", 24),
    ("SM", 27),
    ("TN", 24),
    ("TR", 26),
    ("UA", 29),
    ("VG", 24),
    ("XK", 20),
];

/// Takes exactly the country's length (spaces between groups allowed),
/// then checks mod-97.
pub(super) fn iban(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let s = text.get(r.clone())?;
    let want = IBAN_LENGTHS.iter().find(|(c, _)| s.starts_with(c)).map(|(_, n)| *n)?;
    let mut chars = Vec::with_capacity(want);
    let mut end = r.start;
    for (i, b) in s.bytes().enumerate() {
        if chars.len() == want {
            break;
        }
        if b != b' ' {
            chars.push(b);
            end = r.start + i + 1;
        }
    }
    let range = r.start..end;
    if chars.len() != want || after(text, &range).is_some_and(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    let mut rem = 0u32;
    for b in chars[4..].iter().chain(&chars[..4]) {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return None,
        };
        rem = if v >= 10 { (rem * 100 + v) % 97 } else { (rem * 10 + v) % 97 };
    }
    (rem == 1).then_some(range)
}

pub(super) fn ssn(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let s = text.get(r.clone())?;
    if before(text, &r).is_some_and(|c| matches!(c, '-' | '.')) || after(text, &r).is_some_and(|c| matches!(c, '-')) {
        return None;
    }
    let area: u32 = s.get(0..3)?.parse().ok()?;
    let group: u32 = s.get(4..6)?.parse().ok()?;
    let serial: u32 = s.get(7..11)?.parse().ok()?;
    (area != 0 && area != 666 && area < 900 && group != 0 && serial != 0).then_some(r)
}

pub(super) fn nino(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let prefix = text.get(r.start..r.start + 2)?;
    (!["BG", "GB", "NK", "KN", "TN", "NT", "ZZ"].contains(&prefix)).then_some(r)
}

pub(super) fn dni(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let s = text.get(r.clone())?;
    let n: usize = s.get(..8)?.parse().ok()?;
    let letter = s.chars().last()?;
    ("TRWAGMYFPDXBNJZSQVHLCKE".as_bytes().get(n % 23).copied() == Some(letter as u8)).then_some(r)
}

pub(super) fn email(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let s = text.get(r.clone())?;
    let (local, _) = s.split_once('@')?;
    (!local.ends_with('.') && !local.contains("..")).then_some(r)
}

pub(super) fn ipv6(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let mut r = r;
    // A sentence's colon after an address ("at fe80::1: it failed").
    if text.get(r.clone()).is_some_and(|s| s.ends_with(':') && !s.ends_with("::")) {
        r.end -= 1;
    }
    let s = text.get(r.clone())?;
    let glued = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || matches!(c, ':' | '_'));
    // A full stop ends a sentence; a dot glued to more is a longer token.
    let dotted =
        text.get(r.end..).is_some_and(|t| t.strip_prefix('.').is_some_and(|t| t.starts_with(char::is_alphanumeric)));
    if glued(before(text, &r))
        || before(text, &r) == Some('.')
        || glued(after(text, &r))
        || dotted
        || s.parse::<Ipv6Addr>().is_err()
    {
        return None;
    }
    // `a::b` parses, and is how C++ and Rust spell paths.
    let groups: Vec<&str> = s.split(':').filter(|g| !g.is_empty()).collect();
    (groups.len() >= 3 || groups.iter().any(|g| g.len() >= 3)).then_some(r)
}

/// Words that put a dotted quad in a version, not a network.
const VERSION_WORDS: &[&str] = &[
    "version", "ver", "v", "build", "release", "firmware", "rev", "revision", "chrome", "firefox", "windows", "python",
    "node", "kernel",
];

pub(super) fn ipv4(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let s = text.get(r.clone())?;
    for octet in s.split('.') {
        let n: u32 = octet.parse().ok()?;
        if n > 255 || (octet.len() > 1 && octet.starts_with('0')) {
            return None;
        }
    }
    if before(text, &r).is_some_and(|c| matches!(c, '.' | 'v' | 'V' | '-'))
        || text.get(r.end..).is_some_and(|rest| {
            rest.strip_prefix(['.', '-']).is_some_and(|t| t.starts_with(|c: char| c.is_ascii_alphanumeric()))
        })
    {
        return None;
    }
    let previous = text.get(..r.start)?.trim_end().rsplit(|c: char| c.is_whitespace()).next().unwrap_or("");
    let previous = previous.trim_end_matches([':', '=']).to_ascii_lowercase();
    (!VERSION_WORDS.contains(&previous.as_str())).then_some(r)
}

pub(super) fn phone(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let s = text.get(r.clone())?;
    let digits = s.bytes().filter(u8::is_ascii_digit).count();
    if !(8..=15).contains(&digits) {
        return None;
    }
    let glued = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '-' | '+'));
    (!glued(before(text, &r)) && !after(text, &r).is_some_and(|c| c.is_ascii_alphanumeric())).then_some(r)
}

/// Below this many bits per character a token is text, not a secret.
/// Measured on the corpus (`datasets/pii/v1`): its planted 24–48 character
/// secrets score 4.07–4.95. The look-alikes that also mix cases and digits
/// (data URIs, certificates, SSH public keys) score 4.25–5.8, so context
/// tells those apart, not entropy; the threshold drops repetitive tokens
/// such as `aaaa…AA11` or `Test1Test1Test1…`.
pub(crate) const MIN_ENTROPY_BITS: f64 = 4.0;

fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[usize::from(b)] += 1;
    }
    let n = s.len() as f64;
    counts.iter().filter(|c| **c > 0).map(|c| f64::from(*c) / n).map(|p| -p * p.log2()).sum()
}

pub(super) fn high_entropy(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let s = text.get(r.clone())?;
    let glued = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '_' | '-'));
    // A run longer than the pattern's cap is a blob (an image, a bundle);
    // `=` before it is an assignment (`SECRET=…`), after it base64 padding.
    if glued(before(text, &r)) || glued(after(text, &r)) || after(text, &r) == Some('=') {
        return None;
    }
    let head = text.get(..r.start)?;
    if head.ends_with("base64,") || head.ends_with("://") || head.ends_with('/') {
        return None;
    }
    // Public material: an armored block (a certificate, a public key; a
    // private one is the private_key detector's) or an SSH public key line.
    let armored = head.rfind("-----BEGIN ").is_some_and(|at| !head[at..].contains("-----END"));
    let previous = head.trim_end().rsplit(char::is_whitespace).next().unwrap_or("");
    if armored || previous.starts_with("ssh-") || previous.starts_with("ecdsa-") {
        return None;
    }
    let (upper, lower, digits) = classes(s);
    (upper && lower && digits >= 2 && !s.contains("//") && entropy(s) >= MIN_ENTROPY_BITS).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_and_issuers() {
        let d = |s: &str| s.bytes().map(|b| b - b'0').collect::<Vec<_>>();
        assert!(luhn(&d("4111111111111111")) && card_issuer(&d("4111111111111111")));
        assert!(!luhn(&d("4111111111111112")));
        assert!(luhn(&d("378282246310005")) && card_issuer(&d("378282246310005")));
        assert!(!card_issuer(&d("9111111111111111")));
    }

    #[test]
    fn entropy_tells_keys_from_words() {
        assert!(entropy("Xk9fQ2mLp7RzT4vB8nW1cY6hJ3sD") > MIN_ENTROPY_BITS);
        assert!(entropy("aaaaaaaaaaaaaaaaaaaaaaaaAA11") < MIN_ENTROPY_BITS);
    }
}
