//! Telemetry records out of the store, as `GET /admin/telemetry` and
//! `switchyard telemetry query` give them: JSON lines (every field, the
//! decision and execution as nested JSON) or CSV (one column per field,
//! nested JSON as its text), both in [`COLUMNS`] order.

use serde_json::Value;
use switchyard_store::DecisionRecord;

/// Every field of a record, in the order exports list them.
pub const COLUMNS: [&str; 33] = [
    "request_id",
    "created_ms",
    "tenant",
    "node",
    "policy_id",
    "rule_id",
    "route",
    "model",
    "runtime",
    "reason",
    "label",
    "status",
    "stream",
    "retries",
    "fallbacks",
    "cascade",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "cost_usd",
    "energy_wh",
    "queue_ms",
    "prefill_ms",
    "decode_ms",
    "ttft_ms",
    "itl_p50_ms",
    "itl_p99_ms",
    "itl_max_ms",
    "total_ms",
    "disconnected",
    "measured_ms",
    "decision",
    "execution",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Jsonl,
    Csv,
}

pub fn render(records: &[DecisionRecord], format: Format) -> String {
    let mut out = String::new();
    if format == Format::Csv {
        out.push_str(&COLUMNS.join(","));
        out.push('\n');
    }
    for r in records {
        let Ok(Value::Object(fields)) = serde_json::to_value(r) else { continue };
        match format {
            Format::Jsonl => {
                let ordered: serde_json::Map<String, Value> =
                    COLUMNS.iter().map(|c| (c.to_string(), fields.get(*c).cloned().unwrap_or(Value::Null))).collect();
                out.push_str(&Value::Object(ordered).to_string());
            }
            Format::Csv => {
                let cells: Vec<String> = COLUMNS.iter().map(|c| csv_cell(fields.get(*c))).collect();
                out.push_str(&cells.join(","));
            }
        }
        out.push('\n');
    }
    out
}

/// RFC 4180: a cell with a comma, quote or line break is quoted, its
/// quotes doubled; null is empty.
fn csv_cell(v: Option<&Value>) -> String {
    let text = match v {
        None | Some(Value::Null) => return String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_exported_and_csv_quotes_what_it_must() {
        let mut r = DecisionRecord::new("r1".into(), "p".into(), "local".into(), 200, "answered".into());
        r.reason = "rule a, then \"b\"".into();
        r.measured.ttft_ms = Some(12.5);
        let fields = serde_json::to_value(&r).unwrap();
        let mut names: Vec<&str> = fields.as_object().unwrap().keys().map(String::as_str).collect();
        let mut columns = COLUMNS.to_vec();
        names.sort_unstable();
        columns.sort_unstable();
        assert_eq!(names, columns, "COLUMNS lists every field of a record");

        let csv = render(std::slice::from_ref(&r), Format::Csv);
        let line = csv.lines().nth(1).unwrap();
        assert!(line.contains(r#","rule a, then ""b""","#), "{line}");
        assert!(line.contains(",12.5,"));
        let jsonl = render(&[r.clone(), r], Format::Jsonl);
        assert_eq!(jsonl.lines().count(), 2);
        let first: Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
        assert_eq!(first["ttft_ms"], 12.5);
        assert_eq!(first["decision"], Value::Null);
    }
}
