//! What a run cost and how much energy it took.
//!
//! Dollars come from a price table (DESIGN's `[prices]`, keyed by route or
//! model): per token for a cloud, per hour of hardware for a local machine
//! (a request is charged its E2E time, shared over the machine's slots).
//! Energy is *measured* from RAPL package counters when the machine exposes
//! them (the whole package: everything running, not just the target), and
//! otherwise *modelled*: idle watts over the run plus watts per busy core
//! times the target process's CPU time. Every figure says which.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use switchyard_router::Prices;

use crate::replay::RequestResult;

/// Dollars over the measured (post-warm-up) requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostSummary {
    pub cost_usd: f64,
    pub per_1m_output_tokens_usd: Option<f64>,
    pub per_successful_task_usd: Option<f64>,
    /// What counted as a successful task.
    pub success: String,
    pub successful_tasks: usize,
    /// Successful requests with no price (no entry for their route or
    /// model) or no token counts in `usage`: left out of `cost_usd`, so a
    /// non-zero count means the cost is a lower bound.
    pub unpriced: usize,
}

/// Prices the answered requests sent after `warmup_ms`. A failed request
/// is charged nothing (no usage came back); a refused or handed-off one is
/// charged what it used but is not a successful task
/// ([`RequestResult::succeeded`]), so cost per successful task is what the
/// priced requests cost ÷ how many of them succeeded. The price key is the
/// `x-switchyard-route` a router answered with, else `model`.
pub fn summarize(results: &[RequestResult], warmup_ms: f64, prices: &Prices, model: &str) -> CostSummary {
    let ok: Vec<&RequestResult> = results.iter().filter(|r| r.sent_ms >= warmup_ms && r.ok()).collect();
    let (mut usd, mut output_tokens, mut unpriced, mut priced_successes) = (0.0, 0u64, 0, 0);
    for r in &ok {
        let price = prices.for_route(r.route.as_deref().unwrap_or(""), model);
        match (price, r.prompt_tokens, r.output_tokens.filter(|_| r.tokens_from.as_deref() == Some("usage"))) {
            (Some(p), Some(prompt), Some(completion)) => {
                usd += p.cost(prompt, completion, r.e2e_ms.unwrap_or(0.0)).usd;
                output_tokens += u64::from(completion);
                priced_successes += usize::from(r.succeeded());
            }
            _ => unpriced += 1,
        }
    }
    let labelled = ok.iter().any(|r| r.label.is_some());
    CostSummary {
        cost_usd: usd,
        per_1m_output_tokens_usd: (output_tokens > 0).then(|| usd / output_tokens as f64 * 1e6),
        per_successful_task_usd: (priced_successes > 0).then(|| usd / priced_successes as f64),
        success: if labelled {
            "answered without an error and labelled `answered` by the server (x-switchyard-label); no scorer on this run"
        } else {
            "answered without an error (no scorer on this run)"
        }
        .into(),
        successful_tasks: ok.iter().filter(|r| r.succeeded()).count(),
        unpriced,
    }
}

/// Watt-hours over the whole run (warm-up included: the machine drew power then too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Energy {
    pub wh: f64,
    /// `wh` ÷ successful requests of the whole run.
    pub per_task_wh: Option<f64>,
    /// `measured` or `modelled`.
    pub kind: String,
    /// Where the figure came from, in words.
    pub source: String,
}

/// The power model used when RAPL is not readable.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PowerModel {
    pub idle_watts: f64,
    pub watts_per_core: f64,
}

impl PowerModel {
    /// Parses `IDLE_W,W_PER_CORE` (e.g. `40,12`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<f64> = text
            .split(',')
            .map(|p| p.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("`{text}`: give IDLE_W,W_PER_CORE, e.g. 40,12"))?;
        match parts[..] {
            [idle_watts, watts_per_core] if idle_watts >= 0.0 && watts_per_core >= 0.0 => {
                Ok(Self { idle_watts, watts_per_core })
            }
            _ => Err(format!("`{text}`: give IDLE_W,W_PER_CORE (two numbers >= 0), e.g. 40,12")),
        }
    }

    /// Idle power for the run's length plus per-core power for the CPU time used.
    pub fn wh(&self, wall_s: f64, cpu_s: f64) -> f64 {
        (self.idle_watts * wall_s + self.watts_per_core * cpu_s) / 3600.0
    }
}

/// RAPL package energy counters (`/sys/class/powercap/intel-rapl:N`).
pub struct Rapl {
    zones: Vec<PathBuf>,
}

impl Rapl {
    pub const ROOT: &'static str = "/sys/class/powercap";

    /// The top-level package zones under `root` whose counter is readable;
    /// `None` if there are none (a VM, or no permission).
    pub fn open(root: &Path) -> Option<Self> {
        let mut zones: Vec<PathBuf> = std::fs::read_dir(root)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("intel-rapl:") && n.matches(':').count() == 1)
            })
            .filter(|p| read_u64(&p.join("energy_uj")).is_some())
            .collect();
        zones.sort();
        (!zones.is_empty()).then_some(Self { zones })
    }

    /// Each zone's counter, in µJ.
    pub fn read(&self) -> Vec<u64> {
        self.zones.iter().map(|z| read_u64(&z.join("energy_uj")).unwrap_or(0)).collect()
    }

    /// Watt-hours between two readings; a counter that wrapped around is
    /// corrected with the zone's `max_energy_range_uj`.
    pub fn wh_between(&self, before: &[u64], after: &[u64]) -> f64 {
        let uj: u64 = self
            .zones
            .iter()
            .zip(before.iter().zip(after))
            .map(|(zone, (&b, &a))| {
                if a >= b {
                    a - b
                } else {
                    read_u64(&zone.join("max_energy_range_uj")).unwrap_or(0).saturating_sub(b) + a
                }
            })
            .sum();
        uj as f64 / 3.6e9
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// CPU seconds (user + system, all threads) a process has used so far.
pub fn process_cpu_s(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("reading /proc/{pid}/stat: {e} (is --target-pid running?)"))?;
    // The command name (field 2) may hold spaces; the fields after it don't.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or("unexpected /proc stat format")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).ok_or("unexpected /proc stat format");
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let total = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf only reads a configuration value.
    #[expect(unsafe_code, reason = "sysconf has no safe wrapper; see SAFETY")]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    Ok(total as f64 / hz as f64)
}

/// How a run's energy is taken: chosen before the run, read after it.
pub enum Meter {
    Rapl(Rapl, Vec<u64>),
    Model { model: PowerModel, pid: u32, cpu_before: f64 },
}

impl Meter {
    /// RAPL when readable, else the power model for `pid`; `None` when
    /// neither is available (no energy figure rather than a made-up one).
    pub fn start(rapl_root: &Path, model: Option<PowerModel>, pid: Option<u32>) -> Result<Option<Self>, String> {
        if let Some(rapl) = Rapl::open(rapl_root) {
            let before = rapl.read();
            return Ok(Some(Meter::Rapl(rapl, before)));
        }
        match (model, pid) {
            (Some(model), Some(pid)) => Ok(Some(Meter::Model { model, pid, cpu_before: process_cpu_s(pid)? })),
            _ => Ok(None),
        }
    }

    pub fn finish(self, wall_s: f64, successful: usize) -> Result<Energy, String> {
        let (wh, kind, source) = match self {
            Meter::Rapl(rapl, before) => (
                rapl.wh_between(&before, &rapl.read()),
                "measured",
                "RAPL package counters: the whole machine, the load generator included".to_string(),
            ),
            Meter::Model { model, pid, cpu_before } => {
                let cpu_s = process_cpu_s(pid)? - cpu_before;
                (
                    model.wh(wall_s, cpu_s),
                    "modelled",
                    format!(
                        "power model: {} W idle × {wall_s:.1} s + {} W per core × {cpu_s:.2} CPU-s of process {pid} (RAPL not readable here)",
                        model.idle_watts, model.watts_per_core
                    ),
                )
            }
        };
        Ok(Energy { wh, per_task_wh: (successful > 0).then(|| wh / successful as f64), kind: kind.into(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(route: Option<&str>, prompt: u32, completion: u32, e2e_ms: f64) -> RequestResult {
        RequestResult {
            status: Some(200),
            e2e_ms: Some(e2e_ms),
            prompt_tokens: Some(prompt),
            output_tokens: Some(completion),
            tokens_from: Some("usage".into()),
            route: route.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn token_prices_charge_usage_and_failures_cost_nothing() {
        let prices = Prices::from_toml("[prices.cloud]\ninput_per_1m = 1.0\noutput_per_1m = 4.0\n").unwrap();
        let failed = RequestResult { error: Some("HTTP 500".into()), ..Default::default() };
        let results = [done(Some("cloud"), 1000, 500, 10.0), done(Some("cloud"), 3000, 1500, 10.0), failed];
        let c = summarize(&results, 0.0, &prices, "m");
        // (4000 × $1 + 2000 × $4) / 1M = $0.012
        assert!((c.cost_usd - 0.012).abs() < 1e-12, "{c:?}");
        assert!((c.per_1m_output_tokens_usd.unwrap() - 6.0).abs() < 1e-9);
        assert!((c.per_successful_task_usd.unwrap() - 0.006).abs() < 1e-12);
        assert_eq!((c.successful_tasks, c.unpriced), (2, 0));
        assert!(!c.success.contains("label"));

        // A router's refusal costs what it used, but is no task done.
        let labelled =
            |label: &str| RequestResult { label: Some(label.into()), ..done(Some("cloud"), 1000, 500, 10.0) };
        let c = summarize(&[labelled("answered"), labelled("refused"), labelled("human-escalated")], 0.0, &prices, "m");
        assert!(
            (c.cost_usd - 0.009).abs() < 1e-12 && (c.per_successful_task_usd.unwrap() - 0.009).abs() < 1e-12,
            "{c:?}"
        );
        assert_eq!(c.successful_tasks, 1);
        assert!(c.success.contains("x-switchyard-label"), "{}", c.success);
        let none = summarize(&[labelled("refused")], 0.0, &prices, "m");
        assert_eq!((none.successful_tasks, none.per_successful_task_usd), (0, None));
    }

    #[test]
    fn hardware_prices_charge_time_and_unknown_prices_are_counted_not_guessed() {
        let prices = Prices::from_toml(
            "[prices.local-model]\nhardware_per_hour = 3.6\nidle_watts = 10\nbusy_watts = 100\nslots = 2\n",
        )
        .unwrap();
        // One hour of E2E on a 2-slot machine at $3.6/h: $1.8.
        let mut unrouted = done(None, 1, 1, 3.6e6);
        unrouted.sent_ms = 5.0;
        let counted = RequestResult { tokens_from: Some("chunks".into()), ..done(None, 1, 1, 1.0) };
        let results = [unrouted, counted];
        let c = summarize(&results, 0.0, &prices, "local-model");
        assert!((c.cost_usd - 1.8).abs() < 1e-9, "{c:?}");
        assert_eq!(c.unpriced, 1, "tokens counted from chunks are not priced: {c:?}");
        let elsewhere = summarize(&[done(Some("elsewhere"), 1, 1, 10.0)], 0.0, &prices, "unknown-model");
        assert_eq!(
            (elsewhere.unpriced, elsewhere.cost_usd, elsewhere.per_successful_task_usd),
            (1, 0.0, None),
            "no price: counted, not guessed"
        );
        // Warm-up requests are left out.
        assert_eq!(summarize(&results, 6.0, &prices, "local-model").successful_tasks, 0);
    }

    #[test]
    fn the_power_model_and_its_flag() {
        let m = PowerModel::parse("40, 12").unwrap();
        assert!((m.wh(3600.0, 1800.0) - 46.0).abs() < 1e-9, "40 W for 1 h + 12 W × 0.5 core-h");
        for bad in ["40", "40,x", "-1,2", "1,2,3"] {
            assert!(PowerModel::parse(bad).unwrap_err().contains("IDLE_W,W_PER_CORE"), "{bad}");
        }
    }

    #[test]
    fn rapl_counters_are_read_per_package_and_wraparound_is_corrected() {
        let root = tempfile::tempdir().unwrap();
        for (zone, energy, max) in
            [("intel-rapl:0", "1000", "5000000"), ("intel-rapl:1", "4999000", "5000000"), ("intel-rapl:0:0", "7", "9")]
        {
            let dir = root.path().join(zone);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("energy_uj"), energy).unwrap();
            std::fs::write(dir.join("max_energy_range_uj"), max).unwrap();
        }
        let rapl = Rapl::open(root.path()).expect("two package zones (the subzone is part of its package)");
        let before = rapl.read();
        assert_eq!(before, [1000, 4_999_000]);
        // Package 0 gains 3.6e9 µJ (1 Wh); package 1 wraps: 1000 µJ to the top, 2000 after.
        let after = [1000 + 3_600_000_000, 2000];
        assert!((rapl.wh_between(&before, &after) - (1.0 + 3000.0 / 3.6e9)).abs() < 1e-12);
        assert!(Rapl::open(&root.path().join("nothing-here")).is_none());
    }

    #[test]
    fn a_process_cpu_time_is_read_from_proc() {
        let before = process_cpu_s(std::process::id()).unwrap();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(process_cpu_s(std::process::id()).unwrap() >= before);
        assert!(process_cpu_s(u32::MAX).unwrap_err().contains("--target-pid"));
    }
}
