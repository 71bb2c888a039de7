//! Prices: what an answer costs on each route or model, for cost lanes,
//! records, eval scorecards and the bench. One `[prices]` table (in
//! `switchyard.toml`, or a file given to the bench), keyed by route name or
//! model id.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Either a cloud price per token, or a local machine's price per hour and
/// power draw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Price {
    Tokens {
        /// Dollars per 1M prompt tokens.
        input_per_1m: f64,
        /// Dollars per 1M completion tokens.
        output_per_1m: f64,
    },
    Hardware {
        /// Dollars per hour for the machine (amortised purchase or rental).
        hardware_per_hour: f64,
        idle_watts: f64,
        busy_watts: f64,
        /// Dollars per kWh; 0 leaves energy out of the dollar cost.
        #[serde(default)]
        electricity_per_kwh: f64,
        /// Requests the machine serves at once (the engine's parallel slots):
        /// one request is charged its share of the machine while it runs.
        #[serde(default = "one")]
        slots: u32,
    },
}

fn one() -> u32 {
    1
}

/// What one answer cost.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Cost {
    pub usd: f64,
    /// Modelled, for local routes: the busy power for the request's share
    /// of the machine while it ran. `None` for cloud prices.
    pub energy_wh: Option<f64>,
}

impl Price {
    /// The cost of an answer with these token counts that took `busy_ms`.
    pub fn cost(&self, prompt_tokens: u32, completion_tokens: u32, busy_ms: f64) -> Cost {
        match *self {
            Price::Tokens { input_per_1m, output_per_1m } => Cost {
                usd: (f64::from(prompt_tokens) * input_per_1m + f64::from(completion_tokens) * output_per_1m) / 1e6,
                energy_wh: None,
            },
            Price::Hardware { hardware_per_hour, busy_watts, electricity_per_kwh, slots, .. } => {
                let hours = busy_ms / 3.6e6 / f64::from(slots.max(1));
                let energy_wh = busy_watts * hours;
                Cost {
                    usd: hardware_per_hour * hours + energy_wh / 1000.0 * electricity_per_kwh,
                    energy_wh: Some(energy_wh),
                }
            }
        }
    }

    fn check(&self, key: &str) -> Result<(), String> {
        let fields: &[(&str, f64)] = match self {
            Price::Tokens { input_per_1m, output_per_1m } => {
                &[("input_per_1m", *input_per_1m), ("output_per_1m", *output_per_1m)]
            }
            Price::Hardware { hardware_per_hour, idle_watts, busy_watts, electricity_per_kwh, .. } => &[
                ("hardware_per_hour", *hardware_per_hour),
                ("idle_watts", *idle_watts),
                ("busy_watts", *busy_watts),
                ("electricity_per_kwh", *electricity_per_kwh),
            ],
        };
        match fields.iter().find(|(_, v)| !(v.is_finite() && *v >= 0.0)) {
            Some((field, v)) => Err(format!("prices.{key}.{field} = {v}: must be a number >= 0")),
            None => Ok(()),
        }
    }
}

/// Route name or model id → price. A route's own name wins over its model's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Prices(pub BTreeMap<String, Price>);

impl Prices {
    pub fn validate(&self) -> Result<(), String> {
        self.0.iter().try_for_each(|(k, p)| p.check(k))
    }

    pub fn for_route(&self, route: &str, model: &str) -> Option<&Price> {
        self.0.get(route).or_else(|| self.0.get(model))
    }

    /// Parses a `[prices]` table from a TOML document (the bench's `--prices FILE`).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            prices: Prices,
        }
        let f: File = toml::from_str(text).map_err(|e| format!("prices: {e}"))?;
        f.prices.validate()?;
        Ok(f.prices)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_and_local_prices() {
        let p = Prices::from_toml(
            r#"
[prices.cloud]
input_per_1m = 0.15
output_per_1m = 0.60

[prices."qwen2.5-coder-0.5b"]
hardware_per_hour = 0.36
idle_watts = 40
busy_watts = 120
electricity_per_kwh = 0.25
slots = 4
"#,
        )
        .unwrap();
        let cloud = p.for_route("cloud", "gpt-4o-mini").unwrap().cost(1000, 500, 1234.0);
        assert!((cloud.usd - (1000.0 * 0.15 + 500.0 * 0.60) / 1e6).abs() < 1e-15);
        assert_eq!(cloud.energy_wh, None);
        // 36 s on one of 4 slots = 1/400 of an hour.
        let local = p.for_route("local-fast", "qwen2.5-coder-0.5b").unwrap().cost(10, 10, 36_000.0);
        assert!((local.energy_wh.unwrap() - 120.0 / 400.0).abs() < 1e-12);
        assert!((local.usd - (0.36 / 400.0 + 0.3 / 1000.0 * 0.25)).abs() < 1e-12);
        assert_eq!(p.for_route("other", "other"), None);
    }

    #[test]
    fn a_bad_price_names_its_key() {
        let e = Prices::from_toml("[prices.cloud]\ninput_per_1m = -1\noutput_per_1m = 1\n").unwrap_err();
        assert!(e.contains("prices.cloud.input_per_1m"), "{e}");
        let e = Prices::from_toml("[prices.cloud]\ninput_per_1m = 1\n").unwrap_err();
        assert!(e.contains("prices"), "{e}");
    }
}
