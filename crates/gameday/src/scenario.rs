//! A game day's script (`SCENARIO.toml`): the traffic, the faults and when
//! they start and end, and what must hold for the day to pass.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use switchyard_bench::trace::{Scenario as Shape, Trace};

/// The fault kinds a switchyard server injects (`PUT /admin/faults/{route}`).
pub const KINDS: [&str; 6] = ["error", "timeout", "stall_first_token", "cut_stream", "slow", "die"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub traffic: Traffic,
    #[serde(default)]
    pub faults: Vec<FaultStep>,
    /// Canary rollouts started during the day (a bad model rollout).
    #[serde(default)]
    pub rollouts: Vec<RolloutStart>,
    #[serde(default)]
    pub expect: Expect,
}

/// A canary rollout of a candidate policy, started at `at_s`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutStart {
    /// The candidate policy file, relative to the scenario.
    pub policy: PathBuf,
    pub at_s: f64,
    /// The plan, as `POST /admin/rollout` takes it (`steps`, `step_s`,
    /// `min_requests`, `judge_every_s`, `margins`, `auto_promote`).
    #[serde(default)]
    pub plan: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    /// A bench trace (JSON lines), relative to the scenario file; without
    /// one, Poisson arrivals at `rate_per_s` (seeded by `seed`).
    #[serde(default)]
    pub trace: Option<PathBuf>,
    #[serde(default)]
    pub rate_per_s: Option<f64>,
    /// No request is sent after this many seconds.
    pub duration_s: f64,
    #[serde(default = "seed")]
    pub seed: u64,
    /// Prompt and answer sizes of generated requests.
    #[serde(default = "input_tokens")]
    pub input_tokens: u32,
    #[serde(default = "max_tokens")]
    pub max_tokens: u32,
    /// Share of requests sent with `stream: true` (every n-th by arrival).
    #[serde(default)]
    pub stream_share: f64,
    /// The `model` of each request (`auto` lets the policy choose).
    #[serde(default = "auto")]
    pub model: String,
    /// Multiplies the trace's arrival offsets (0.5: twice as fast).
    #[serde(default = "one")]
    pub time_scale: f64,
    /// One request's limit, from sending it to the end of its answer.
    #[serde(default = "timeout_s")]
    pub timeout_s: f64,
    /// Sent with every request (`x-switchyard-lane`, …).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn seed() -> u64 {
    7
}
fn input_tokens() -> u32 {
    48
}
fn max_tokens() -> u32 {
    16
}
fn auto() -> String {
    "auto".into()
}
fn one() -> f64 {
    1.0
}
fn timeout_s() -> f64 {
    60.0
}

/// One fault: on which route, when, for how long; the rest of the table
/// (`status`, `ms`, `after_tokens`) goes to the server as the fault's
/// parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultStep {
    pub route: String,
    pub kind: String,
    /// Seconds from the start of the traffic.
    pub at_s: f64,
    pub for_s: f64,
    #[serde(flatten)]
    pub params: BTreeMap<String, serde_json::Value>,
}

/// What must hold; an absent bound is not checked.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Unstreamed requests the client saw fail (a fallback should have
    /// answered each).
    #[serde(default)]
    pub max_failed_unstreamed: Option<u32>,
    /// Streamed requests the client saw fail (cut streams among them).
    #[serde(default)]
    pub max_failed_streamed: Option<u32>,
    /// Seconds from each fault's end until its route answers again.
    #[serde(default)]
    pub max_recovery_s: Option<f64>,
    /// Routes that must have answered while a fault was on.
    #[serde(default)]
    pub fallback_routes: Vec<String>,
    /// Share of all requests answered (labelled `answered`).
    #[serde(default)]
    pub min_success_rate: Option<f64>,
    /// Seconds from each rollout's start to its rollback by the gate.
    #[serde(default)]
    pub rollback_within_s: Option<f64>,
}

impl Scenario {
    /// Reads and checks a scenario; errors name the key at fault.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut s: Scenario = toml::from_str(&text).with_context(|| format!("scenario {}", path.display()))?;
        let here = path.parent().unwrap_or(Path::new("."));
        if let Some(trace) = &s.traffic.trace {
            if trace.is_relative() {
                s.traffic.trace = Some(here.join(trace));
            }
        }
        for r in &mut s.rollouts {
            if r.policy.is_relative() {
                r.policy = here.join(&r.policy);
            }
        }
        s.check().with_context(|| format!("scenario {}", path.display()))?;
        Ok(s)
    }

    pub fn check(&self) -> anyhow::Result<()> {
        let t = &self.traffic;
        anyhow::ensure!(t.duration_s > 0.0, "`traffic.duration_s` must be positive");
        anyhow::ensure!((0.0..=1.0).contains(&t.stream_share), "`traffic.stream_share` is a share, from 0 to 1");
        anyhow::ensure!(t.time_scale > 0.0, "`traffic.time_scale` must be positive");
        match (&t.trace, t.rate_per_s) {
            (None, None) => anyhow::bail!("`traffic`: give `trace` (a bench trace file) or `rate_per_s`"),
            (Some(_), Some(_)) => anyhow::bail!("`traffic`: give `trace` or `rate_per_s`, not both"),
            (None, Some(r)) => anyhow::ensure!(r > 0.0, "`traffic.rate_per_s` must be positive"),
            (Some(_), None) => {}
        }
        for (i, f) in self.faults.iter().enumerate() {
            anyhow::ensure!(
                KINDS.contains(&f.kind.as_str()),
                "`faults[{i}].kind` = `{}`: kinds are {}",
                f.kind,
                KINDS.join(", ")
            );
            anyhow::ensure!(f.at_s >= 0.0 && f.for_s > 0.0, "`faults[{i}]`: `at_s` >= 0 and `for_s` > 0");
            anyhow::ensure!(
                f.at_s + f.for_s <= t.duration_s,
                "`faults[{i}]` ends at {} s, after the traffic (`traffic.duration_s` = {}): its recovery could not be seen",
                f.at_s + f.for_s,
                t.duration_s
            );
        }
        for (i, r) in self.rollouts.iter().enumerate() {
            anyhow::ensure!(
                r.at_s >= 0.0 && r.at_s < t.duration_s,
                "`rollouts[{i}].at_s` must fall within the traffic (0 to `traffic.duration_s`)"
            );
        }
        Ok(())
    }

    /// The requests to send, each marked streamed or not.
    pub fn requests(&self) -> anyhow::Result<(Trace, Vec<bool>)> {
        let t = &self.traffic;
        let mut trace = match (&t.trace, t.rate_per_s) {
            (Some(path), _) => Trace::from_jsonl(
                &std::fs::read_to_string(path).with_context(|| format!("`traffic.trace` {}", path.display()))?,
            )?,
            (None, Some(rate)) => Shape::Burst {
                duration_ms: t.duration_s * 1000.0,
                rate_per_s: rate,
                factor: 1.0,
                every_ms: t.duration_s * 1000.0,
                spike_ms: 0.0,
                input_tokens: t.input_tokens,
                max_tokens: t.max_tokens,
            }
            .generate(t.seed),
            (None, None) => anyhow::bail!("`traffic`: give `trace` or `rate_per_s`"),
        };
        for r in &mut trace.requests {
            for (k, v) in &t.headers {
                r.headers.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        let streamed = (0..trace.requests.len()).map(|i| streams(i, t.stream_share)).collect();
        Ok((trace, streamed))
    }
}

/// Whether the `i`-th request is streamed: spread evenly, `share` of them.
fn streams(i: usize, share: f64) -> bool {
    let before = (i as f64 * share).floor();
    let after = ((i + 1) as f64 * share).floor();
    after > before
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_of_streams_is_spread_evenly() {
        let picked: Vec<bool> = (0..8).map(|i| streams(i, 0.25)).collect();
        assert_eq!(picked.iter().filter(|s| **s).count(), 2);
        assert_eq!(picked, [false, false, false, true, false, false, false, true]);
        assert!((0..10).all(|i| !streams(i, 0.0)) && (0..10).all(|i| streams(i, 1.0)));
    }

    #[test]
    fn a_broken_scenario_names_its_key() {
        let base = "name = 'x'\n[traffic]\nrate_per_s = 2.0\nduration_s = 10.0\n";
        let ok: Scenario = toml::from_str(base).unwrap();
        ok.check().unwrap();
        let late: Scenario =
            toml::from_str(&format!("{base}[[faults]]\nroute = 'local'\nkind = 'die'\nat_s = 5.0\nfor_s = 8.0\n"))
                .unwrap();
        assert!(late.check().unwrap_err().to_string().contains("`faults[0]` ends at 13 s"));
        let unknown: Scenario =
            toml::from_str(&format!("{base}[[faults]]\nroute = 'local'\nkind = 'explode'\nat_s = 1.0\nfor_s = 1.0\n"))
                .unwrap();
        assert!(unknown.check().unwrap_err().to_string().contains("`faults[0].kind` = `explode`"));
        let neither: Scenario = toml::from_str("name = 'x'\n[traffic]\nduration_s = 10.0\n").unwrap();
        assert!(neither.check().unwrap_err().to_string().contains("give `trace`"));
    }
}
