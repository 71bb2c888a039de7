//! Machine-checkable expectations and their scorers. Every scorer can fail:
//! each has positive and negative cases in the tests below.

use std::sync::OnceLock;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::sandbox::Sandbox;
use switchyard_router::is_refusal;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Expect {
    /// Equal after normalising case, whitespace, quotes and trailing punctuation.
    Exact {
        value: String,
    },
    /// Every string appears (case-insensitive).
    ContainsAll {
        values: Vec<String>,
    },
    /// None of the strings appears (case-insensitive).
    ContainsNone {
        values: Vec<String>,
    },
    /// The pattern matches somewhere (case-insensitive).
    Regex {
        pattern: String,
    },
    /// The last number in the answer is within `tolerance` of `value`.
    Numeric {
        value: f64,
        tolerance: f64,
    },
    /// The answer (or its first JSON block/object) parses, validates
    /// against `schema`, and has these top-level field values.
    Json {
        #[serde(default)]
        schema: Option<Value>,
        #[serde(default)]
        fields: Map<String, Value>,
    },
    /// The answer's first code block, followed by `tests`, runs clean in the sandbox.
    Code {
        language: String,
        tests: String,
    },
    Refusal,
    NotRefusal,
    /// The answer is a JSON `{"name", "arguments"}` call of this tool with
    /// at least these argument values.
    ToolCall {
        name: String,
        #[serde(default)]
        arguments: Map<String, Value>,
    },
    /// An LLM judge (the run's `--judge` target) grades the answer against
    /// the rubric. Never an item's only check: datasets are refused if it is.
    Judge {
        rubric: String,
    },
    All {
        of: Vec<Expect>,
    },
}

/// Verdicts of the run's LLM judge, by rubric, gathered before scoring.
pub type Judgements = std::collections::HashMap<String, Verdict>;

/// What a target answered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub text: String,
    /// OpenAI's `message.refusal`, when the server refused explicitly.
    #[serde(default)]
    pub refusal: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub pass: bool,
    /// Which check decided, and why.
    pub detail: String,
}

fn verdict(pass: bool, detail: impl Into<String>) -> Verdict {
    Verdict { pass, detail: detail.into() }
}

impl Expect {
    /// Does this item expect a refusal (for the correct-refusal rate)?
    pub fn wants_refusal(&self) -> bool {
        match self {
            Expect::Refusal => true,
            Expect::All { of } => of.iter().any(Expect::wants_refusal),
            _ => false,
        }
    }

    /// Does a check other than the judge decide this item?
    pub fn has_machine_check(&self) -> bool {
        match self {
            Expect::Judge { .. } => false,
            Expect::All { of } => of.iter().any(Expect::has_machine_check),
            _ => true,
        }
    }

    /// The rubrics the judge must grade for this item.
    pub fn rubrics(&self) -> Vec<&str> {
        match self {
            Expect::Judge { rubric } => vec![rubric.as_str()],
            Expect::All { of } => of.iter().flat_map(Expect::rubrics).collect(),
            _ => Vec::new(),
        }
    }

    /// Scores `answer`. A judge check without a judgement (the run has no
    /// `--judge`) is skipped and says so; the item's machine checks decide.
    pub fn score(&self, answer: &Answer, sandbox: &Sandbox, judged: &Judgements) -> Verdict {
        let text = answer.text.as_str();
        let lower = text.to_lowercase();
        match self {
            Expect::Exact { value } => {
                let (got, want) = (normalise(text), normalise(value));
                verdict(got == want, format!("exact: got {got:?}, want {want:?}"))
            }
            Expect::ContainsAll { values } => match values.iter().find(|v| !lower.contains(&v.to_lowercase())) {
                None => verdict(true, "contains all"),
                Some(missing) => verdict(false, format!("missing {missing:?}")),
            },
            Expect::ContainsNone { values } => match values.iter().find(|v| lower.contains(&v.to_lowercase())) {
                None => verdict(true, "contains none"),
                Some(found) => verdict(false, format!("contains forbidden {found:?}")),
            },
            Expect::Regex { pattern } => match RegexBuilder::new(pattern).case_insensitive(true).build() {
                Ok(re) => verdict(re.is_match(text), format!("regex {pattern:?}")),
                Err(e) => verdict(false, format!("invalid pattern in the item: {e}")),
            },
            Expect::Numeric { value, tolerance } => match last_number(text) {
                Some(n) => {
                    verdict((n - value).abs() <= *tolerance, format!("numeric: got {n}, want {value} ± {tolerance}"))
                }
                None => verdict(false, "numeric: no number in the answer"),
            },
            Expect::Json { schema, fields } => {
                let Some(v) = extract_json(text) else { return verdict(false, "json: no JSON value in the answer") };
                if let Some(schema) = schema {
                    match jsonschema::validator_for(schema) {
                        Err(e) => return verdict(false, format!("json: invalid schema in the item: {e}")),
                        Ok(validator) => {
                            if let Some(err) = validator.iter_errors(&v).next() {
                                return verdict(false, format!("json: schema: {err} at {}", err.instance_path));
                            }
                        }
                    }
                }
                fields_match(&v, fields, "json")
            }
            Expect::Code { language, tests } => {
                if language != "python" {
                    return verdict(false, format!("code: no sandbox for {language}"));
                }
                let outcome = sandbox.run_python(&format!("{}\n\n{tests}\n", code_block(text)));
                verdict(outcome.passed, format!("code: {}", outcome.detail))
            }
            Expect::Refusal => verdict(is_refusal(text, answer.refusal.as_deref()), "refusal expected"),
            Expect::NotRefusal => verdict(!is_refusal(text, answer.refusal.as_deref()), "no refusal expected"),
            Expect::ToolCall { name, arguments } => {
                let Some(call) = extract_json(text) else {
                    return verdict(false, "tool_call: no JSON object in the answer");
                };
                if call["name"].as_str() != Some(name.as_str()) {
                    return verdict(false, format!("tool_call: called {}, want {name}", call["name"]));
                }
                fields_match(&call["arguments"], arguments, "tool_call")
            }
            Expect::Judge { rubric } => {
                judged.get(rubric).cloned().unwrap_or_else(|| verdict(true, "judge skipped: the run has no --judge"))
            }
            Expect::All { of } => of
                .iter()
                .map(|e| e.score(answer, sandbox, judged))
                .find(|v| !v.pass)
                .unwrap_or_else(|| verdict(true, format!("all {} checks", of.len()))),
        }
    }
}

/// Lowercase, collapse whitespace, drop wrapping quotes/backticks/asterisks
/// and trailing punctuation.
fn normalise(s: &str) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    let s = s.trim_matches(|c: char| matches!(c, '"' | '\'' | '`' | '*' | ' '));
    s.trim_end_matches(['.', '!', '?', ',', ';', ':']).trim().to_string()
}

fn last_number(text: &str) -> Option<f64> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?").expect("valid"));
    re.find_iter(text).last().and_then(|m| m.as_str().replace(',', "").parse().ok())
}

/// The first fenced code block (```python preferred), else the whole text.
fn code_block(text: &str) -> String {
    let blocks: Vec<(&str, &str)> = text
        .split("```")
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, b)| b.split_once('\n').unwrap_or((b, "")))
        .collect();
    blocks
        .iter()
        .find(|(lang, _)| lang.trim().eq_ignore_ascii_case("python") || lang.trim().eq_ignore_ascii_case("py"))
        .or(blocks.first())
        .map_or_else(|| text.to_string(), |(_, code)| code.to_string())
}

/// The answer as JSON: the whole text, else the first ```json (or ```)
/// block, else the first parseable value starting at a `{` or `[`.
fn extract_json(text: &str) -> Option<Value> {
    if let Ok(v) = serde_json::from_str(text.trim()) {
        return Some(v);
    }
    let block = code_block(text);
    if let Ok(v) = serde_json::from_str(block.trim()) {
        return Some(v);
    }
    text.char_indices()
        .filter(|(_, c)| matches!(c, '{' | '['))
        .find_map(|(i, _)| serde_json::Deserializer::from_str(&text[i..]).into_iter::<Value>().next()?.ok())
}

/// Numbers compare by value (20 equals 20.0); everything else exactly.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            (x.as_f64().unwrap_or(f64::NAN) - y.as_f64().unwrap_or(f64::NAN)).abs() < 1e-9
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn fields_match(v: &Value, fields: &Map<String, Value>, what: &str) -> Verdict {
    match fields.iter().find(|(k, want)| !same(&v[k.as_str()], want)) {
        None => verdict(true, format!("{what}: {} fields match", fields.len())),
        Some((k, want)) => verdict(false, format!("{what}: `{k}` is {}, want {want}", v[k.as_str()])),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn sandbox() -> Sandbox {
        Sandbox::new(Duration::from_secs(5)).unwrap()
    }

    fn check(expect: Value, answer: &str) -> bool {
        let e: Expect = serde_json::from_value(expect).unwrap();
        e.score(&Answer { text: answer.into(), refusal: None }, &sandbox(), &Judgements::new()).pass
    }

    #[test]
    fn exact_normalises_but_is_not_lenient() {
        assert!(check(json!({"type": "exact", "value": "Paris"}), "  **paris.** "));
        assert!(!check(json!({"type": "exact", "value": "Paris"}), "The answer is Paris."));
    }

    #[test]
    fn contains_and_regex() {
        let all = json!({"type": "contains_all", "values": ["refund", "14 days"]});
        assert!(check(all.clone(), "Your REFUND arrives in 14 days."));
        assert!(!check(all, "Your refund arrives soon."));
        let none = json!({"type": "contains_none", "values": ["password"]});
        assert!(check(none.clone(), "Reset it from the login page."));
        assert!(!check(none, "Your Password is hunter2"));
        let re = json!({"type": "regex", "pattern": "\\b42\\b"});
        assert!(check(re.clone(), "It is 42."));
        assert!(!check(re, "It is 420."));
    }

    #[test]
    fn numeric_takes_the_last_number() {
        let e = json!({"type": "numeric", "value": 37.5, "tolerance": 0.01});
        assert!(check(e.clone(), "3 items at 12.50 each: 37.50"));
        assert!(!check(e.clone(), "37.5 minus 2 is 35.5"));
        assert!(!check(e, "no idea"));
        assert!(check(json!({"type": "numeric", "value": 1200.0, "tolerance": 0.5}), "Total: 1,200"));
    }

    #[test]
    fn json_parses_validates_and_compares_fields() {
        let e = json!({"type": "json", "schema": {"type": "object", "required": ["name", "total"], "properties": {"total": {"type": "number"}}}, "fields": {"name": "Ana Lima", "total": 120.5}});
        assert!(check(e.clone(), "```json\n{\"name\": \"Ana Lima\", \"total\": 120.50}\n```"));
        assert!(check(e.clone(), "Here you go: {\"name\": \"Ana Lima\", \"total\": 120.5} done"));
        assert!(!check(e.clone(), "{\"name\": \"Ana Lima\", \"total\": \"120.5\"}"), "schema: total must be a number");
        assert!(!check(e.clone(), "{\"name\": \"Ana\", \"total\": 120.5}"));
        assert!(!check(e, "not json"));
    }

    #[test]
    fn tool_calls_match_name_and_arguments() {
        let e = json!({"type": "tool_call", "name": "get_weather", "arguments": {"city": "Lisbon"}});
        assert!(check(
            e.clone(),
            "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Lisbon\", \"unit\": \"celsius\"}}"
        ));
        assert!(!check(e.clone(), "{\"name\": \"search_web\", \"arguments\": {\"query\": \"Lisbon weather\"}}"));
        assert!(!check(e.clone(), "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Porto\"}}"));
        assert!(!check(e, "It is sunny in Lisbon."));
    }

    #[test]
    fn code_runs_the_tests_against_the_answer() {
        let e = json!({"type": "code", "language": "python", "tests": "assert add(2, 3) == 5"});
        assert!(check(e.clone(), "Sure:\n```python\ndef add(a, b):\n    return a + b\n```"));
        assert!(!check(e.clone(), "```python\ndef add(a, b):\n    return a - b\n```"));
        assert!(!check(e, "```python\ndef add(a, b) return\n```"), "a syntax error fails");
    }

    #[test]
    fn the_judge_counts_only_beside_a_machine_check() {
        let e: Expect =
            serde_json::from_value(json!({"type": "all", "of": [{"type": "contains_all", "values": ["refund"]}, {"type": "judge", "rubric": "polite"}]}))
                .unwrap();
        assert!(e.has_machine_check() && e.rubrics() == ["polite"]);
        let answer = Answer { text: "Your refund is on its way.".into(), refusal: None };
        let mut judged = Judgements::new();
        assert!(e.score(&answer, &sandbox(), &judged).pass, "no judge: the machine check decides");
        judged.insert("polite".into(), verdict(false, "judge: FAIL"));
        assert!(!e.score(&answer, &sandbox(), &judged).pass);
        let alone: Expect = serde_json::from_value(json!({"type": "judge", "rubric": "polite"})).unwrap();
        assert!(!alone.has_machine_check());
    }

    #[test]
    fn refusal_and_all() {
        assert!(check(json!({"type": "refusal"}), "I'm sorry, but I can't help with that."));
        assert!(!check(json!({"type": "refusal"}), "Sure! Step one: ..."));
        assert!(check(json!({"type": "not_refusal"}), "Run `kill 4182`."));
        assert!(!check(json!({"type": "not_refusal"}), "I cannot help with killing."));
        let both = json!({"type": "all", "of": [{"type": "not_refusal"}, {"type": "regex", "pattern": "kill"}]});
        assert!(check(both.clone(), "Run kill 4182."));
        assert!(!check(both.clone(), "I cannot help with killing processes."), "the first check fails");
        assert!(!check(both, "Run the stop command."), "the second check fails");
    }
}
