//! Drift and cost alerts: rules in `switchyard.toml` (`[[alerts]]`) over
//! rolling windows of the telemetry records, per route and lane. A rule
//! fires when its metric is above a threshold, or has risen by a share
//! over a baseline window just before; it fires once per incident (to the
//! log, the `alert-webhook` and `switchyard_alerts_fired_total`) and sends
//! a recovery notice when the metric is back within bounds.
//!
//! Invariants: [`Alerts::tick`] takes the time as an argument, so tests
//! drive it with any clock; a rule with too few requests in its window
//! neither fires nor recovers (no data is not good news); a webhook that
//! fails is logged and counted, never retried into a storm.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use switchyard_store::{DecisionRecord, Store, TelemetryFilter};

use super::rollout::{escalated, failed, p95, refused};

/// What a rule measures over its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Share failed (5xx or labelled `error`).
    ErrorRate,
    /// Share refused by a rule.
    RefusalRate,
    /// Share a cascade escalated.
    EscalationRate,
    /// Share of feedback given on the window's answers that is `bad`.
    BadFeedbackRate,
    /// Cost of the window ÷ its answered requests (USD).
    CostPerSuccessUsd,
    /// The window's cost at its rate over a day (USD).
    CostPerDayUsd,
    TtftP95Ms,
    E2eP95Ms,
}

/// One rule, as `[[alerts]]` in `switchyard.toml` writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Rule {
    pub name: String,
    pub metric: Metric,
    /// Only requests answered (or tried) on this route.
    #[serde(default)]
    pub route: Option<String>,
    /// Only requests of this lane (`interactive`, `batch`, `fallback`).
    #[serde(default)]
    pub lane: Option<String>,
    /// The rolling window, seconds.
    #[serde(default = "window_s")]
    pub window_s: u64,
    /// Fires above this value.
    #[serde(default)]
    pub above: Option<f64>,
    /// Or: fires when the window's value exceeds the baseline's by this
    /// share (0.5: +50%), the baseline being the `baseline_s` before it.
    #[serde(default)]
    pub rise: Option<f64>,
    #[serde(default)]
    pub baseline_s: Option<u64>,
    /// Fewer requests in a window: not judged.
    #[serde(default = "min_requests")]
    pub min_requests: u32,
}

fn window_s() -> u64 {
    300
}
fn min_requests() -> u32 {
    10
}

impl Rule {
    /// Errors name the key at fault (`alerts[2].rise`).
    pub fn check(&self, i: usize) -> Result<(), (String, String)> {
        let key = |k: &str| format!("alerts[{i}].{k}");
        if self.name.trim().is_empty() {
            return Err((key("name"), "give the alert a name".into()));
        }
        if self.window_s == 0 {
            return Err((key("window-s"), "a window of at least 1 second".into()));
        }
        match (self.above, self.rise, self.baseline_s) {
            (Some(_), None, None) => Ok(()),
            (None, Some(r), Some(b)) if r > 0.0 && b > 0 => Ok(()),
            (None, Some(_), _) => Err((
                key("baseline-s"),
                "`rise` compares with a baseline: give `baseline-s` (seconds) and a positive `rise`".into(),
            )),
            _ => Err((
                key("above"),
                "give `above` (a threshold) or `rise` with `baseline-s` (a change against a baseline), not both".into(),
            )),
        }
    }
}

/// A rule's value over one window of `span_s` seconds: `None` with too
/// few requests.
pub fn value(rule: &Rule, records: &[&DecisionRecord], feedback: (i64, i64), span_s: f64) -> Option<f64> {
    if (records.len() as u32) < rule.min_requests.max(1) {
        return None;
    }
    let n = records.len() as f64;
    let share = |f: fn(&DecisionRecord) -> bool| records.iter().filter(|r| f(r)).count() as f64 / n;
    let cost: f64 = records.iter().filter_map(|r| r.measured.cost_usd).sum();
    Some(match rule.metric {
        Metric::ErrorRate => share(failed),
        Metric::RefusalRate => share(refused),
        Metric::EscalationRate => share(escalated),
        Metric::BadFeedbackRate => {
            let (good, bad) = feedback;
            if good + bad == 0 {
                return None;
            }
            bad as f64 / (good + bad) as f64
        }
        Metric::CostPerSuccessUsd => {
            let done = records.iter().filter(|r| r.label == "answered").count();
            if done == 0 {
                return None;
            }
            cost / done as f64
        }
        Metric::CostPerDayUsd => cost * 86_400.0 / span_s,
        Metric::TtftP95Ms => p95(records.iter().filter_map(|r| r.measured.ttft_ms).collect())?,
        Metric::E2eP95Ms => p95(records.iter().filter_map(|r| r.measured.total_ms).collect())?,
    })
}

/// What one tick found for one rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reading {
    pub value: Option<f64>,
    pub baseline: Option<f64>,
    pub breached: Option<bool>,
}

/// Whether `rule` is breached, given its window's and its baseline's values.
pub fn breached(rule: &Rule, now: Option<f64>, baseline: Option<f64>) -> Option<bool> {
    let now = now?;
    match (rule.above, rule.rise) {
        (Some(limit), _) => Some(now > limit),
        (None, Some(rise)) => {
            let base = baseline?;
            Some(if base > 0.0 { now > base * (1.0 + rise) } else { now > 0.0 })
        }
        (None, None) => None,
    }
}

/// Each rule's state between ticks.
pub struct Alerts {
    rules: Vec<Rule>,
    webhook: Option<String>,
    http: reqwest::Client,
    /// Whether each rule is firing now.
    firing: Mutex<Vec<bool>>,
}

impl Alerts {
    pub fn new(rules: Vec<Rule>, webhook: Option<String>) -> Self {
        let firing = Mutex::new(vec![false; rules.len()]);
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default();
        Self { rules, webhook, http, firing }
    }

    /// Judges every rule as of `now_ms`; fires or resolves what changed.
    pub async fn tick(&self, store: &Store, node: &str, now_ms: i64) -> Vec<Reading> {
        let mut readings = Vec::with_capacity(self.rules.len());
        for (i, rule) in self.rules.iter().enumerate() {
            let window_ms = rule.window_s as i64 * 1000;
            let reading = match self.read(store, rule, now_ms - window_ms, now_ms).await {
                Ok(now) => {
                    let baseline = match rule.baseline_s {
                        Some(b) => self
                            .read(store, rule, now_ms - window_ms - b as i64 * 1000, now_ms - window_ms)
                            .await
                            .ok()
                            .flatten(),
                        None => None,
                    };
                    Reading { value: now, baseline, breached: breached(rule, now, baseline) }
                }
                Err(e) => {
                    tracing::error!(alert = %rule.name, "reading the alert's window: {e}");
                    Reading { value: None, baseline: None, breached: None }
                }
            };
            if let Some(v) = reading.value {
                metrics::gauge!("switchyard_alert_value", "alert" => rule.name.clone()).set(v);
            }
            let change = {
                let mut firing = self.firing.lock().unwrap_or_else(PoisonError::into_inner);
                match (reading.breached, firing.get(i).copied().unwrap_or(false)) {
                    (Some(true), false) => {
                        firing[i] = true;
                        Some("firing")
                    }
                    (Some(false), true) => {
                        firing[i] = false;
                        Some("resolved")
                    }
                    _ => None,
                }
            };
            if let Some(status) = change {
                self.notify(rule, status, &reading, node, now_ms).await;
            }
            readings.push(reading);
        }
        readings
    }

    async fn read(&self, store: &Store, rule: &Rule, since_ms: i64, until_ms: i64) -> anyhow::Result<Option<f64>> {
        let filter = TelemetryFilter {
            since_ms,
            until_ms: Some(until_ms),
            route: rule.route.clone(),
            limit: 100_000,
            ..Default::default()
        };
        let records = store.telemetry(&filter).await?;
        let lane_of = |r: &DecisionRecord| {
            serde_json::from_str::<serde_json::Value>(r.decision.as_str())
                .ok()
                .and_then(|d| d["lane"].as_str().map(str::to_string))
        };
        let mine: Vec<&DecisionRecord> =
            records.iter().filter(|r| rule.lane.as_ref().is_none_or(|l| lane_of(r).as_deref() == Some(l))).collect();
        let feedback = if rule.metric == Metric::BadFeedbackRate {
            let ids: std::collections::HashSet<&str> = mine.iter().map(|r| r.request_id.as_str()).collect();
            let given = store.feedback_since(since_ms).await?;
            // Each answer once per verdict: one client must not outvote the rest.
            let verdicts: std::collections::HashSet<(&str, bool)> = given
                .iter()
                .filter(|f| ids.contains(f.request_id.as_str()) && f.created_ms < until_ms)
                .map(|f| (f.request_id.as_str(), f.verdict == "bad"))
                .collect();
            let bad = verdicts.iter().filter(|(_, bad)| *bad).count() as i64;
            (verdicts.len() as i64 - bad, bad)
        } else {
            (0, 0)
        };
        Ok(value(rule, &mine, feedback, (until_ms - since_ms) as f64 / 1000.0))
    }

    async fn notify(&self, rule: &Rule, status: &str, reading: &Reading, node: &str, now_ms: i64) {
        let summary = format!(
            "alert {} {status}: {:?} = {} (threshold {}){}{}",
            rule.name,
            rule.metric,
            reading.value.map_or_else(|| "-".into(), |v| format!("{v:.4}")),
            match (rule.above, rule.rise) {
                (Some(a), _) => format!("above {a}"),
                (None, Some(r)) => format!(
                    "+{:.0}% over the baseline {}",
                    100.0 * r,
                    reading.baseline.map_or_else(|| "-".into(), |b| format!("{b:.4}"))
                ),
                _ => "-".into(),
            },
            rule.route.as_ref().map_or(String::new(), |r| format!(", route {r}")),
            rule.lane.as_ref().map_or(String::new(), |l| format!(", lane {l}")),
        );
        if status == "firing" {
            tracing::warn!(alert = %rule.name, "{summary}");
            metrics::counter!("switchyard_alerts_fired_total", "alert" => rule.name.clone()).increment(1);
        } else {
            tracing::info!(alert = %rule.name, "{summary}");
        }
        metrics::gauge!("switchyard_alert_firing", "alert" => rule.name.clone())
            .set(f64::from(u8::from(status == "firing")));
        let Some(url) = &self.webhook else { return };
        let body = json!({
            "alert": rule.name, "status": status, "metric": rule.metric, "route": rule.route, "lane": rule.lane,
            "value": reading.value, "baseline": reading.baseline, "above": rule.above, "rise": rule.rise,
            "window_s": rule.window_s, "at_ms": now_ms, "node": node, "summary": summary,
        });
        match self.http.post(url).json(&body).send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                metrics::counter!("switchyard_alert_webhook_failures_total").increment(1);
                tracing::error!(alert = %rule.name, status = %r.status(), "the alert webhook refused the notice");
            }
            Err(e) => {
                metrics::counter!("switchyard_alert_webhook_failures_total").increment(1);
                // Without the URL: a webhook's URL often carries its token.
                tracing::error!(alert = %rule.name, "the alert webhook could not be reached: {}", e.without_url());
            }
        }
    }
}

/// Judges the rules every `every` on the real clock.
pub fn every(alerts: Arc<Alerts>, store: Store, node: String, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            alerts.tick(&store, &node, switchyard_wire::unix_ms()).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> Rule {
        toml::from_str(&format!("name = \"r\"\n{text}")).unwrap()
    }

    #[test]
    fn a_rule_is_a_threshold_or_a_rise_over_a_baseline_and_says_which_key_is_wrong() {
        assert!(rule("metric = \"error_rate\"\nabove = 0.1").check(0).is_ok());
        assert!(rule("metric = \"error_rate\"\nrise = 0.5\nbaseline-s = 600").check(0).is_ok());
        assert_eq!(rule("metric = \"error_rate\"\nrise = 0.5").check(3).unwrap_err().0, "alerts[3].baseline-s");
        assert_eq!(rule("metric = \"error_rate\"").check(1).unwrap_err().0, "alerts[1].above");
        assert!(toml::from_str::<Rule>("name = \"r\"\nmetric = \"vibes\"\nabove = 1").is_err());
    }

    #[test]
    fn breaches_by_threshold_or_rise_and_none_without_data() {
        let t = rule("metric = \"error_rate\"\nabove = 0.1");
        assert_eq!(breached(&t, Some(0.2), None), Some(true));
        assert_eq!(breached(&t, Some(0.05), None), Some(false));
        assert_eq!(breached(&t, None, None), None);
        let r = rule("metric = \"cost_per_day_usd\"\nrise = 0.5\nbaseline-s = 60");
        assert_eq!(breached(&r, Some(16.0), Some(10.0)), Some(true));
        assert_eq!(breached(&r, Some(14.0), Some(10.0)), Some(false));
        assert_eq!(breached(&r, Some(14.0), None), None, "no baseline: not judged");
    }
}
