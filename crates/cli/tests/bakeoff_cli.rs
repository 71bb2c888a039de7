//! `switchyard models quantize` and `switchyard bakeoff`, run as the real
//! binary: SmolLM2 as shipped (Q4_1) against its own Q8_0 requantization,
//! both served by the engine, plus an endpoint that is down; the verdict
//! names who meets the SLAs, a second run resumes instead of measuring
//! again, and `--render` judges the same measurements against other SLAs.

use std::process::Command;

use serde_json::Value;

fn switchyard(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard")).args(args).output().expect("run switchyard")
}

fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_bakeoff_of_two_quantization_paths_and_a_dead_endpoint_names_who_meets_the_slas() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();

    let out = ok(&switchyard(&["models", "quantize", "smollm2-135m", "--type", "q8_0", "--out", &path("q8.gguf")]));
    assert!(out.contains("type     Q8_0 (from") && out.contains(": Q4_1)"), "{out}");
    assert!(out.contains("requantized from Q4_1"), "a derived path says so: {out}");
    let again = switchyard(&["models", "quantize", "smollm2-135m", "--type", "q8_0", "--out", &path("q8.gguf")]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("exists"));

    ok(&switchyard(&[
        "bench",
        "trace",
        "generate",
        "--scenario",
        "single",
        "--count",
        "4",
        "--input-tokens",
        "48",
        "--max-tokens",
        "8",
        "--think-ms",
        "0",
        "--out",
        &path("trace.jsonl"),
    ]));
    let dataset = concat!(env!("CARGO_MANIFEST_DIR"), "/../../datasets/eval/core/v1");
    let q8 = format!("q8=engine:{}", path("q8.gguf"));
    let args = [
        "bakeoff",
        "--variant",
        "base=engine:smollm2-135m",
        "--variant",
        &q8,
        "--variant",
        "down=url:http://127.0.0.1:9/v1@m",
        "--trace",
        &path("trace.jsonl"),
        "--dataset",
        dataset,
        "--eval-limit",
        "6",
        "--concurrency",
        "1,2",
        "--threads",
        "2",
        "--parallel",
        "2",
        "--ctx-size",
        "2048",
        "--max-ttft-p95-ms",
        "60000",
        "--min-retention",
        "0.5",
        "--sla-concurrency",
        "2",
        "--out",
        &path("bake"),
    ];
    let table = ok(&switchyard(&args));
    let verdict: Value = serde_json::from_str(&std::fs::read_to_string(path("bake/bakeoff.json")).unwrap()).unwrap();
    let judged = |name: &str| verdict["judged"].as_array().unwrap().iter().find(|j| j["name"] == name).unwrap().clone();
    let down = judged("down");
    assert_eq!(down["meets"], false, "{down}");
    assert!(down["misses"].to_string().contains("no TTFT measured at c=2"), "{down}");
    for name in ["base", "q8"] {
        let j = judged(name);
        assert!(j["peak_rss_bytes"].as_u64().unwrap() > 50_000_000, "a served model's memory is measured: {j}");
        assert!(j["ttft_p95_ms"].as_f64().is_some(), "{j}");
    }
    assert_eq!(judged("base")["retention"].as_f64(), Some(1.0), "the reference keeps all of itself");
    let meeting: Vec<&str> = ["base", "q8"].into_iter().filter(|n| judged(n)["meets"] == true).collect();
    let recommended = verdict["recommended"].as_str();
    assert!(recommended.is_some_and(|r| meeting.contains(&r)), "the recommendation meets the SLAs: {verdict}");
    if meeting.len() == 2 {
        // Neither run was priced or metered, so memory decides; Q8_0 weighs more.
        assert_eq!(recommended, Some("base"), "{verdict}");
    }
    for file in
        ["bakeoff.md", "bakeoff.html", "plan.json", "q8/variant.json", "q8/sweep/sweep.json", "q8/eval/scorecard.json"]
    {
        assert!(dir.path().join("bake").join(file).exists(), "{file}");
    }
    let md = std::fs::read_to_string(path("bake/bakeoff.md")).unwrap();
    assert!(
        md.contains("| q8 | switchyard engine | Q8_0 |") && md.contains("| base | switchyard engine | Q4_1 |"),
        "{table}"
    );
    let html = std::fs::read_to_string(path("bake/bakeoff.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("Recommended:"), "the page has charts and the verdict");

    // Again: every variant is kept, nothing is served or measured anew.
    let resumed = switchyard(&args);
    ok(&resumed);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert_eq!(stderr.matches("already measured; kept").count(), 3, "{stderr}");

    // The same measurements under an SLA nobody meets.
    let render = ok(&switchyard(&["bakeoff", "--render", "--min-retention", "2", "--out", &path("bake")]));
    assert!(render.contains("Recommended: none (no variant meets every SLA)"), "{render}");
}
