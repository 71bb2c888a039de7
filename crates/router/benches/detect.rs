//! Detector cost: every built-in detector over a 2 KB prompt, clean and
//! with one item of each kind planted, in one pass.
//!
//! `cargo bench -p switchyard-router --bench detect`. Criterion reports the
//! mean; the p99 the issue budgets (50 µs) comes from a plain loop of
//! single scans after it, printed with its ratio to the budget.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, Criterion};
use std::sync::Arc;

use switchyard_router::detect::{prefix_automaton, Detectors, Guard};

const BUDGET_P99_US: f64 = 50.0;

/// About 2 KB of support-style text; `planted` adds an email, a phone, a
/// card, an IBAN, an IP, a provider key and a JWT to it.
fn prompt(planted: bool) -> String {
    let para =
        "Our billing export fails for some customers since the last deploy. The job reads invoices for the month, \
                groups them by account and writes a CSV; for 3 of 120 accounts it stops with a timeout after 30 s. ";
    let mut text = para.repeat(if planted { 7 } else { 9 });
    if planted {
        text.push_str("Contact jane.doe@example.com or +44 20 7946 0958; card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00, \
                       host 10.20.30.40, key AKIAIOSFODNN7EXAMPLE, token eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U. ");
    }
    text.push_str("```python\nfor inv in invoices:\n    total += inv.amount * (1 + inv.tax_rate)\n```\nWhy would only some accounts time out, and what should we check first?");
    assert!((1800..2300).contains(&text.len()), "{}", text.len());
    text
}

fn bench(c: &mut Criterion) {
    let d = Detectors::all();
    for (name, planted) in [("scan 2KB clean", false), ("scan 2KB planted", true)] {
        let text = prompt(planted);
        c.bench_function(name, |b| b.iter(|| d.scan(black_box(&text))));
    }
}

fn p99() {
    let d = Detectors::all();
    for planted in [false, true] {
        let text = prompt(planted);
        let mut us: Vec<f64> = (0..20_000)
            .map(|_| {
                let t = Instant::now();
                black_box(d.scan(black_box(&text)));
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        us.sort_by(f64::total_cmp);
        let at = |q: f64| us[((us.len() - 1) as f64 * q) as usize];
        println!(
            "scan 2KB {} ({} findings) over {} runs: p50 {:.1} us, p99 {:.1} us; p99 / budget ({BUDGET_P99_US} us) = {:.2}x",
            if planted { "planted" } else { "clean" },
            d.scan(&text).len(),
            us.len(),
            at(0.5),
            at(0.99),
            at(0.99) / BUDGET_P99_US
        );
    }
}

/// The output guard's cost to a stream: an answer of about 2 KB (prose,
/// a code block, an email and a card number) sent in 4-byte chunks, as a
/// model's tokens arrive. Reports how much the guard holds back after each
/// chunk (the delay a reader sees, in bytes and in ~4-byte tokens) and its
/// CPU per chunk, against copying the chunk through (the anchor).
fn guard_delay() {
    let answer = format!(
        "{}Send it to jane.doe@example.com and charge 4111 1111 1111 1111 when ready.\n```rust\nfn main() {{ println!(\"ok\"); }}\n```\n",
        "The export job groups invoices by account and writes one CSV per month; a timeout means the query ran long. ".repeat(17)
    );
    let chunks: Vec<&str> = answer.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).unwrap_or("")).collect();
    let all = Arc::new(Detectors::all());
    let dfa = Arc::new(prefix_automaton(&all).expect("automaton"));
    let (mut held, mut guard_us, mut copy_us) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..50 {
        let mut g = Guard::new(all.clone(), dfa.clone());
        let (mut pushed, mut released) = (0usize, 0usize);
        let mut copied = String::new();
        for c in &chunks {
            let t = Instant::now();
            copied.push_str(black_box(c));
            copy_us.push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            let out = g.push(black_box(c));
            guard_us.push(t.elapsed().as_secs_f64() * 1e6);
            pushed += c.len();
            released += out.len();
            // Redaction changes lengths; what is held is what has not come out.
            held.push(pushed.saturating_sub(released) as f64);
        }
        black_box(g.finish());
    }
    for v in [&mut held, &mut guard_us, &mut copy_us] {
        v.sort_by(f64::total_cmp);
    }
    let at = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q) as usize];
    println!(
        "stream guard, {} B answer in 4 B chunks: held p50 {:.0} B, p99 {:.0} B, max {:.0} B (p99 ~{:.0} tokens); CPU per chunk p50 {:.1} us, p99 {:.1} us; copy anchor p50 {:.2} us, p99 {:.2} us",
        answer.len(),
        at(&held, 0.5),
        at(&held, 0.99),
        held[held.len() - 1],
        at(&held, 0.99) / 4.0,
        at(&guard_us, 0.5),
        at(&guard_us, 0.99),
        at(&copy_us, 0.5),
        at(&copy_us, 0.99),
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    p99();
    guard_delay();
}
