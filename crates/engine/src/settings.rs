use serde::{Deserialize, Serialize};

/// Which work a scheduler step serves first when the batch budget is short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Priority {
    /// Every decoding sequence gets its token each step; prompts fill what is
    /// left. Keeps inter-token latency flat under load.
    #[default]
    Decode,
    /// Prompt chunks go first; decoding sequences share what is left. Lowers
    /// time to first token at the cost of inter-token latency spikes.
    Prefill,
}

/// Engine settings: the one declaration of them. `switchyard.toml` reads
/// them under these (kebab-case) keys, beside the server's own; the `serve`
/// flags of the same names override them. Defaults suit a small CPU machine
/// (2 cores, a few GiB).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct EngineSettings {
    /// Threads for decode and prompt evaluation. 0 = physical cores.
    /// More threads than cores makes llama.cpp about 3x slower.
    pub threads: usize,
    /// Total KV cache size in tokens, shared evenly by the parallel sequences.
    pub ctx_size: u32,
    /// Sequences decoded together (continuous-batching slots).
    pub parallel: u32,
    /// Most tokens in one llama.cpp decode call.
    pub batch_size: u32,
    /// Most prompt tokens evaluated in one scheduler step, across all
    /// sequences, while any sequence decodes (chunked prefill). Smaller
    /// keeps decoders responsive; with none decoding, a step evaluates up
    /// to `batch-size` prompt tokens.
    pub prefill_chunk: u32,
    /// Which work goes first within a step.
    pub priority: Priority,
    /// Requests waiting for a slot before new ones get 429.
    pub max_queue: usize,
    /// Keep a finished sequence's KV so a request sharing its prefix (a
    /// chat's next turn, a common system prompt) prefills only the rest.
    pub prefix_cache: bool,
    /// Host memory, in MiB, for conversations' KV moved out of their slots
    /// by others (0: the prefix cache lives in the slots only).
    pub host_cache_mib: u32,
    /// Most tokens one step guesses by prompt lookup for greedy requests,
    /// shared among the sequences decoding (0: no drafting). Answers that
    /// quote their context then take several tokens a step.
    pub lookup_draft: u32,
    /// With a draft model: most tokens it guesses a step for one greedy
    /// sequence. How many it does guess follows the measured acceptance
    /// and step costs, down to `draft-min`.
    pub draft_max: u32,
    /// With a draft model: fewest tokens it guesses a step (0: as the cost
    /// model says, which may be none). `draft-min` = `draft-max` pins the
    /// draft length, for measuring.
    pub draft_min: u32,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            threads: 0,
            ctx_size: 8192,
            parallel: 4,
            batch_size: 512,
            prefill_chunk: 256,
            priority: Priority::Decode,
            max_queue: 64,
            prefix_cache: true,
            host_cache_mib: 2048,
            lookup_draft: 0,
            draft_max: 8,
            draft_min: 0,
        }
    }
}

impl EngineSettings {
    /// Threads to hand llama.cpp: the configured count, or the physical cores.
    pub fn effective_threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            physical_cores()
        }
    }

    /// Checks that the settings can make a working context. On failure,
    /// names the setting at fault (its config key) and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.parallel == 0 {
            return Err(("parallel", "must be at least 1".into()));
        }
        if self.ctx_size / self.parallel < 64 {
            return Err((
                "ctx-size",
                format!(
                    "{} tokens over {} parallel sequences is under 64 each; raise ctx-size or lower parallel",
                    self.ctx_size, self.parallel
                ),
            ));
        }
        if self.batch_size < self.parallel {
            return Err(("batch-size", format!("{} must be at least parallel ({})", self.batch_size, self.parallel)));
        }
        if self.prefill_chunk == 0 {
            return Err(("prefill-chunk", "must be at least 1".into()));
        }
        if self.draft_min > self.draft_max {
            return Err((
                "draft-min",
                format!("{} is above draft-max ({}); lower it or raise draft-max", self.draft_min, self.draft_max),
            ));
        }
        if self.max_queue == 0 {
            return Err(("max-queue", "must be at least 1".into()));
        }
        Ok(())
    }
}

/// Physical cores, from /proc/cpuinfo where it says; otherwise logical CPUs.
fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else { return logical };
    let mut cores = std::collections::HashSet::new();
    let (mut phys, mut core) = (None, None);
    for line in info.lines() {
        let mut kv = line.splitn(2, ':').map(str::trim);
        match (kv.next(), kv.next()) {
            (Some("physical id"), Some(v)) => phys = Some(v.to_string()),
            (Some("core id"), Some(v)) => core = Some(v.to_string()),
            (Some(""), _) | (None, _) => {
                if let (Some(p), Some(c)) = (phys.take(), core.take()) {
                    cores.insert((p, c));
                }
            }
            _ => {}
        }
    }
    if let (Some(p), Some(c)) = (phys, core) {
        cores.insert((p, c));
    }
    // A cgroup or affinity mask may allow fewer CPUs than the package has.
    if cores.is_empty() {
        logical
    } else {
        cores.len().min(logical)
    }
}
