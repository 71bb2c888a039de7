//! Routing decision cost: classification + decide for a 2 KB prompt under
//! the example policy (every class, category and family pattern runs).
//!
//! `cargo bench -p switchyard-router --bench decide`. Criterion reports the
//! mean; the p99 the issue budgets (50 µs) comes from a plain loop of
//! single-decision timings after it, printed with its ratio to the budget.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, Criterion};
use switchyard_router::{classify, decide, Declared, Lane, Policy, RequestFacts};

const BUDGET_P99_US: f64 = 50.0;

fn policy() -> Policy {
    Policy::from_toml(include_str!("../../../config/policy.example.toml")).expect("example policy is valid")
}

/// About 2 KB of support-style text with a code block and numbers.
fn prompt() -> Vec<String> {
    let para =
        "Our billing export fails for some customers since the last deploy. The job reads invoices for the month, \
                groups them by account and writes a CSV; for 3 of 120 accounts it stops with a timeout after 30 s. ";
    let mut text = para.repeat(9);
    text.push_str("```python\nfor inv in invoices:\n    total += inv.amount * (1 + inv.tax_rate)\n```\nWhy would only some accounts time out, and what should we check first?");
    assert!((1900..2300).contains(&text.len()), "{}", text.len());
    vec!["You are a helpful assistant for the finance team.".into(), text]
}

fn bench(c: &mut Criterion) {
    let (p, messages) = (policy(), prompt());
    let facts = RequestFacts { lane: Lane::Interactive };
    c.bench_function("classify+decide 2KB", |b| {
        b.iter(|| decide(&facts, &classify(black_box(&messages), &Declared::default(), &p), &p))
    });
}

fn p99() {
    let (p, messages) = (policy(), prompt());
    let facts = RequestFacts { lane: Lane::Interactive };
    let mut us: Vec<f64> = (0..50_000)
        .map(|_| {
            let t = Instant::now();
            black_box(decide(&facts, &classify(black_box(&messages), &Declared::default(), &p), &p));
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    us.sort_by(f64::total_cmp);
    let at = |q: f64| us[((us.len() - 1) as f64 * q) as usize];
    println!(
        "classify+decide 2KB over {} runs: p50 {:.1} us, p99 {:.1} us, max {:.1} us; p99 / budget ({BUDGET_P99_US} us) = {:.2}x",
        us.len(),
        at(0.5),
        at(0.99),
        us[us.len() - 1],
        at(0.99) / BUDGET_P99_US
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    p99();
}
