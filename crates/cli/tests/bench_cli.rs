//! `switchyard bench trace`, run as the real binary.

use std::process::Command;

fn switchyard(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard")).args(args).output().expect("run switchyard")
}

#[test]
fn traces_are_generated_reproducibly_and_imported() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    for name in ["a.jsonl", "b.jsonl"] {
        let o = switchyard(&[
            "bench",
            "trace",
            "generate",
            "--scenario",
            "team",
            "--seed",
            "42",
            "--count",
            "5",
            "--out",
            &path(name),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stdout).contains("20 requests"));
    }
    assert_eq!(std::fs::read(path("a.jsonl")).unwrap(), std::fs::read(path("b.jsonl")).unwrap());

    let csv =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../datasets/traces/azure-llm-2023/v1/AzureLLMInferenceTrace_conv.csv");
    let o = switchyard(&["bench", "trace", "import", "--azure", csv, "--limit", "100", "--out", &path("azure.jsonl")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(path("azure.jsonl")).unwrap().lines().count(), 100);
    // Replaying against a target that is down: every request a counted failure, and the run completes.
    let o = switchyard(&[
        "bench",
        "run",
        "--trace",
        &path("a.jsonl"),
        "--target",
        "http://127.0.0.1:9/v1",
        "--concurrency",
        "4",
        "--out",
        &path("run"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("run/summary.json")).unwrap()).unwrap();
    assert_eq!((summary["summary"]["requests"].as_u64(), summary["summary"]["failed"].as_u64()), (Some(20), Some(20)));
    assert_eq!(summary["trace_sha256"].as_str().unwrap().len(), 64);
    let html = std::fs::read_to_string(dir.path().join("run/report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("request failed × 20"), "the report shows the failures");
    // Two runs over the same trace compare; a run over another trace is refused.
    let o = switchyard(&[
        "bench",
        "run",
        "--trace",
        &path("a.jsonl"),
        "--target",
        "http://127.0.0.1:9/v1",
        "--time-scale",
        "0.01",
        "--out",
        &path("run2"),
    ]);
    assert!(o.status.success());
    let cmp = switchyard(&["bench", "compare", &path("run"), &path("run2")]);
    assert!(cmp.status.success(), "{}", String::from_utf8_lossy(&cmp.stderr));
    let table = String::from_utf8_lossy(&cmp.stdout).to_string();
    assert!(table.contains("| system |") && table.contains("20/20"), "{table}");
    let o =
        switchyard(&["bench", "trace", "generate", "--scenario", "single", "--count", "3", "--out", &path("c.jsonl")]);
    assert!(o.status.success());
    let o = switchyard(&[
        "bench",
        "run",
        "--trace",
        &path("c.jsonl"),
        "--target",
        "http://127.0.0.1:9/v1",
        "--time-scale",
        "0.01",
        "--out",
        &path("run3"),
    ]);
    assert!(o.status.success());
    let cmp = switchyard(&["bench", "compare", &path("run"), &path("run3")]);
    assert!(!cmp.status.success() && String::from_utf8_lossy(&cmp.stderr).contains("different trace"));
    let bad = switchyard(&["bench", "trace", "import", "--azure", &path("a.jsonl"), "--out", &path("x.jsonl")]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("not an Azure"));
}

/// Starts `switchyard bench mock` (a first chunk after 5 ms, then one every
/// 2 ms, with `extra` flags) on a free port; returns its base URL and the child to kill.
fn delay_mock(extra: &[&str]) -> (String, std::process::Child) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["bench", "mock", "--port", "0", "--ttft-ms", "5", "--itl-ms", "2", "--chunks", "5"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the mock");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base =
        line.split_whitespace().find(|w| w.starts_with("http://")).expect("the mock prints its address").to_string();
    (base, child)
}

#[test]
fn a_sweep_runs_each_concurrency_and_sweeps_compare_level_by_level() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let (base, mut mock) = delay_mock(&[]);
    let o =
        switchyard(&["bench", "trace", "generate", "--scenario", "single", "--count", "12", "--out", &path("t.jsonl")]);
    assert!(o.status.success());
    std::fs::write(path("p.toml"), "[prices.default]\ninput_per_1m = 1.0\noutput_per_1m = 2.0\n").unwrap();
    for out in ["s1", "s2"] {
        let o = switchyard(&[
            "bench",
            "sweep",
            "--trace",
            &path("t.jsonl"),
            "--target",
            &base,
            "--concurrency",
            "4,1",
            "--prices",
            &path("p.toml"),
            "--out",
            &path(out),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let sweep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("s1/sweep.json")).unwrap()).unwrap();
    let levels = sweep["levels"].as_array().unwrap();
    assert_eq!(
        levels.iter().map(|l| l["concurrency"].as_u64().unwrap()).collect::<Vec<_>>(),
        [1, 4],
        "levels run in ascending order"
    );
    for l in levels {
        let s = &l["report"]["summary"];
        assert_eq!((s["ok"].as_u64(), s["failed"].as_u64()), (Some(12), Some(0)), "{s}");
        assert!(s["ttft_ms"]["p50"].as_f64().unwrap() >= 5.0, "the mock's injected first-chunk delay is a floor: {s}");
        assert!(l["report"]["load"].as_str().unwrap().contains(&format!("concurrency: {}", l["concurrency"])));
    }
    assert!(dir.path().join("s1/c4/report.html").exists() && dir.path().join("s1/c1/requests.jsonl").exists());
    let html = std::fs::read_to_string(dir.path().join("s1/sweep.html")).unwrap();
    assert!(
        html.contains("TTFT vs concurrency") && html.matches("<polyline").count() >= 9,
        "charts of percentiles against concurrency"
    );
    assert!(html.contains("Cost per successful task vs concurrency"), "priced levels get a cost chart");

    let cmp = switchyard(&["bench", "compare", &path("s1"), &path("s2")]);
    assert!(cmp.status.success(), "{}", String::from_utf8_lossy(&cmp.stderr));
    let table = String::from_utf8_lossy(&cmp.stdout).to_string();
    assert!(table.contains("tok/s @1") && table.contains("TTFT p50 ms @4") && table.contains("0/24"), "{table}");
    let mixed = switchyard(&["bench", "compare", &path("s1"), &path("s1/c1")]);
    assert!(!mixed.status.success() && String::from_utf8_lossy(&mixed.stderr).contains("not both"));
    // Conversations replayed by session: the load is recorded as such.
    let o = switchyard(&[
        "bench",
        "trace",
        "generate",
        "--scenario",
        "team",
        "--count",
        "2",
        "--turns",
        "2",
        "--think-ms",
        "5",
        "--out",
        &path("team.jsonl"),
    ]);
    assert!(o.status.success());
    let o = switchyard(&[
        "bench",
        "run",
        "--trace",
        &path("team.jsonl"),
        "--target",
        &base,
        "--sessions",
        "--out",
        &path("sessions"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("sessions/summary.json")).unwrap()).unwrap();
    assert!(report["load"].as_str().unwrap().starts_with("Sessions") && report["summary"]["ok"] == 4, "{report}");
    let both = switchyard(&[
        "bench",
        "run",
        "--trace",
        &path("team.jsonl"),
        "--target",
        &base,
        "--sessions",
        "--concurrency",
        "2",
        "--out",
        &path("x"),
    ]);
    assert!(!both.status.success() && String::from_utf8_lossy(&both.stderr).contains("--concurrency"));
    // The trace's requests are 3 s apart: in one second, one goes out.
    let o = switchyard(&[
        "bench",
        "run",
        "--trace",
        &path("t.jsonl"),
        "--target",
        &base,
        "--duration-s",
        "1",
        "--out",
        &path("bounded"),
    ]);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stderr).contains("1 of the trace's 12"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("bounded/summary.json")).unwrap()).unwrap();
    assert_eq!(
        (report["summary"]["requests"].as_u64(), report["summary"]["ok"].as_u64()),
        (Some(1), Some(1)),
        "{report}"
    );
    let backwards = switchyard(&[
        "bench",
        "run",
        "--trace",
        &path("t.jsonl"),
        "--target",
        &base,
        "--time-scale=-1",
        "--out",
        &path("x"),
    ]);
    assert!(!backwards.status.success() && String::from_utf8_lossy(&backwards.stderr).contains("--time-scale"));
    let early = switchyard(&["bench", "mock", "--port", "0", "--ttft-ms=-5"]);
    assert!(!early.status.success() && String::from_utf8_lossy(&early.stderr).contains("--ttft-ms"));
    let open_ramp = switchyard(&[
        "bench",
        "run",
        "--trace",
        &path("t.jsonl"),
        "--target",
        &base,
        "--ramp-up-s",
        "1",
        "--out",
        &path("x"),
    ]);
    assert!(!open_ramp.status.success() && String::from_utf8_lossy(&open_ramp.stderr).contains("--ramp-up-s"));
    let zero = switchyard(&[
        "bench",
        "sweep",
        "--trace",
        &path("t.jsonl"),
        "--target",
        &base,
        "--concurrency",
        "0",
        "--out",
        &path("s0"),
    ]);
    assert!(!zero.status.success() && String::from_utf8_lossy(&zero.stderr).contains("--concurrency"));
    mock.kill().unwrap();
}

#[test]
fn without_usage_output_tokens_are_counted_by_the_models_own_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let (base, mut mock) = delay_mock(&["--no-usage"]);
    let o = switchyard(&[
        "bench",
        "trace",
        "generate",
        "--scenario",
        "single",
        "--count",
        "4",
        "--think-ms",
        "0",
        "--out",
        &path("t.jsonl"),
    ]);
    assert!(o.status.success());
    let (trace, out) = (path("t.jsonl"), |expect: &str| path(expect));
    for (tokenizer, expect) in [(Some("smollm2-135m"), "tokenizer:smollm2-135m"), (None, "chunks")] {
        let out = out(expect);
        let mut args = vec!["bench", "run", "--trace", &trace, "--target", &base, "--concurrency", "2", "--out", &out];
        args.extend(tokenizer.iter().flat_map(|t| ["--tokenizer", *t]));
        let o = switchyard(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(expect).join("summary.json")).unwrap()).unwrap();
        assert_eq!(report["summary"]["tokens_from"], expect, "{report}");
        let html = std::fs::read_to_string(dir.path().join(expect).join("report.html")).unwrap();
        assert!(html.contains(expect), "the report says where token counts came from");
        let first: serde_json::Value = serde_json::from_str(
            std::fs::read_to_string(dir.path().join(expect).join("requests.jsonl")).unwrap().lines().next().unwrap(),
        )
        .unwrap();
        // The mock streams "t0 ", "t1 ", ... "t4 ": five chunks, more tokens.
        let model = switchyard_models::cached_path(&switchyard_models::cache_dir(), "smollm2-135m");
        let want = match tokenizer {
            Some(_) => switchyard_engine::Tokenizer::load(&model).unwrap().count("t0 t1 t2 t3 t4 ") as u64,
            None => 5,
        };
        assert_eq!(first["output_tokens"].as_u64(), Some(want), "{first}");
    }
    let o = switchyard(&[
        "bench",
        "run",
        "--trace",
        &path("t.jsonl"),
        "--target",
        &base,
        "--tokenizer",
        "no-such-model",
        "--out",
        &path("x"),
    ]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--tokenizer"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    mock.kill().unwrap();
}

#[test]
fn a_priced_run_reports_cost_per_task_and_energy_saying_how_it_was_taken() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let (base, mut mock) = delay_mock(&[]);
    let pid = mock.id().to_string();
    assert!(switchyard(&[
        "bench",
        "trace",
        "generate",
        "--scenario",
        "single",
        "--count",
        "6",
        "--out",
        &path("t.jsonl")
    ])
    .status
    .success());
    std::fs::write(path("prices.toml"), "[prices.mock-model]\ninput_per_1m = 1.0\noutput_per_1m = 2.0\n").unwrap();
    let o = switchyard(&[
        "bench",
        "run",
        "--trace",
        &path("t.jsonl"),
        "--target",
        &base,
        "--model",
        "mock-model",
        "--concurrency",
        "2",
        "--prices",
        &path("prices.toml"),
        "--power-model",
        "40,12",
        "--target-pid",
        &pid,
        "--out",
        &path("run"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("per successful task"));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("run/summary.json")).unwrap()).unwrap();
    // The mock reports 1 prompt and 5 completion tokens: ($1 × 1 + $2 × 5) / 1M per task.
    let cost = &report["cost"];
    assert!((cost["per_successful_task_usd"].as_f64().unwrap() - 11e-6).abs() < 1e-12, "{cost}");
    assert_eq!((cost["successful_tasks"].as_u64(), cost["unpriced"].as_u64()), (Some(6), Some(0)));
    let energy = &report["energy"];
    match energy["kind"].as_str().unwrap() {
        "modelled" => assert!(energy["source"].as_str().unwrap().contains(&format!("process {pid}")), "{energy}"),
        "measured" => assert!(energy["source"].as_str().unwrap().contains("RAPL"), "{energy}"),
        other => panic!("energy kind {other}"),
    }
    assert!(energy["wh"].as_f64().unwrap() > 0.0 && energy["per_task_wh"].as_f64().is_some(), "{energy}");
    let cmp = switchyard(&["bench", "compare", &path("run"), &path("run")]);
    assert!(String::from_utf8_lossy(&cmp.stdout).contains("| 0.000011 |"), "{}", String::from_utf8_lossy(&cmp.stdout));
    let o = switchyard(&[
        "bench",
        "run",
        "--trace",
        &path("t.jsonl"),
        "--target",
        &base,
        "--power-model",
        "40,12",
        "--out",
        &path("r2"),
    ]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--target-pid"),
        "the power model needs the target's process"
    );
    mock.kill().unwrap();
}

#[test]
fn recorded_traffic_is_turned_into_a_trace_that_keeps_its_routing_headers() {
    use switchyard_store::{DecisionRecord, JsonText, Store};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("switchyard.db");
    let record = |id: &str, at: i64, decision: serde_json::Value, tokens: Option<(u32, u32)>| DecisionRecord {
        request_id: id.into(),
        created_ms: at,
        policy_id: "p+1".into(),
        rule_id: None,
        route: "local".into(),
        status: 200,
        reason: "r".into(),
        decision: JsonText::of(&decision).unwrap(),
        label: switchyard_wire::ResultLabel::Answered.to_string(),
        execution: JsonText::of(&serde_json::json!({})).unwrap(),
        tenant: None,
        model: None,
        runtime: None,
        node: None,
        stream: false,
        retries: 0,
        fallbacks: 0,
        cascade: None,
        measured: switchyard_store::Measured {
            prompt_tokens: tokens.map(|t| t.0),
            completion_tokens: tokens.map(|t| t.1),
            ..Default::default()
        },
        measured_ms: None,
    };
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let store = Store::open(&db).await.unwrap();
        store
            .record_decision(&record(
                "a",
                5_000,
                serde_json::json!({"lane": "interactive", "data_class": "public"}),
                Some((30, 9)),
            ))
            .await
            .unwrap();
        store
            .record_decision(&record(
                "b",
                5_400,
                serde_json::json!({"lane": "batch", "family": "code", "data_class": "internal"}),
                None,
            ))
            .await
            .unwrap();
        store.record_decision(&record("old", 10, serde_json::json!({}), None)).await.unwrap();
    });
    let out = dir.path().join("recorded.jsonl");
    let o = switchyard(&[
        "bench",
        "trace",
        "record",
        "--db",
        db.to_str().unwrap(),
        "--since-ms",
        "1000",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("1 of 2 requests had no token counts"));
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "the record before --since-ms is left out");
    assert_eq!(
        (lines[0]["at_us"].as_u64(), lines[0]["input_tokens"].as_u64(), lines[0]["max_tokens"].as_u64()),
        (Some(0), Some(30), Some(9))
    );
    assert_eq!(
        lines[0]["headers"],
        serde_json::json!({"x-switchyard-data-class": "public"}),
        "the default lane is not repeated"
    );
    assert_eq!(lines[1]["at_us"].as_u64(), Some(400_000));
    assert_eq!(
        lines[1]["headers"],
        serde_json::json!({"x-switchyard-lane": "batch", "x-switchyard-family": "code", "x-switchyard-data-class": "internal"})
    );
    let missing = switchyard(&[
        "bench",
        "trace",
        "record",
        "--db",
        dir.path().join("nope.db").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("--data-dir"));
}

#[test]
fn a_burst_against_switchyard_with_a_tiny_queue_counts_its_429s_and_retries_nothing() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    // One slot and one queue place: most of a burst must be turned away.
    let mut server = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "serve",
            "--model",
            "smollm2-135m",
            "--port",
            "0",
            "--threads",
            "2",
            "--parallel",
            "1",
            "--max-queue",
            "1",
            "--ctx-size",
            "1024",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start switchyard");
    let line = BufReader::new(server.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("listening on "))
        .expect("switchyard listens");
    let base = format!("{}/v1", line.split("listening on ").nth(1).unwrap().split_whitespace().next().unwrap());
    let o = switchyard(&[
        "bench",
        "trace",
        "generate",
        "--scenario",
        "burst",
        "--rate",
        "10",
        "--factor",
        "4",
        "--duration-s",
        "2",
        "--input-tokens",
        "16",
        "--max-tokens",
        "24",
        "--seed",
        "5",
        "--out",
        &path("burst.jsonl"),
    ]);
    assert!(o.status.success());
    let sent = std::fs::read_to_string(path("burst.jsonl")).unwrap().lines().count() as u64;
    let o = switchyard(&[
        "bench",
        "run",
        "--trace",
        &path("burst.jsonl"),
        "--target",
        &base,
        "--model",
        "smollm2-135m",
        "--out",
        &path("run"),
    ]);
    let _ = server.kill();
    let _ = server.wait();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("run/summary.json")).unwrap()).unwrap();
    let s = &report["summary"];
    let refused = s["failures"]["HTTP 429 Too Many Requests"].as_u64().unwrap_or(0);
    assert!(refused >= 1 && s["ok"].as_u64().unwrap() >= 1, "some answered, some turned away: {s}");
    assert_eq!(s["requests"].as_u64(), Some(sent), "one attempt per request in the trace, no retries");
    assert_eq!(s["ok"].as_u64().unwrap() + s["failed"].as_u64().unwrap(), sent);
    let html = std::fs::read_to_string(dir.path().join("run/report.html")).unwrap();
    assert!(html.contains("HTTP 429 Too Many Requests"), "the report shows the 429s");
}
