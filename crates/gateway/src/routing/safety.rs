//! The safety classifier in the request path: the policy's `[safety]`
//! head over the classifier model's embedding of the prompt, before any
//! route is chosen (forced or not).
//!
//! The policy's own patterns are the cheap first stage: a request they
//! already refuse or hand off never waits for the model. A request the
//! classifier cannot judge fails closed (503): it is never answered as if
//! it had been cleared.

use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use switchyard_engine::{EmbedInput, Engine};
use switchyard_router::safety::{Embedding, Pooling};
use switchyard_router::{decide, Classification, RequestFacts};
use tokio::sync::Semaphore;

use super::Routing;
use crate::backend::ChatRequest;
use crate::error::ApiError;

/// What a classifier stage embeds of `text`, as `[safety]` (or
/// `[safety.second]`) says: the same call `switchyard safety calibrate`
/// fitted the head on.
pub fn embed_input<'a>(how: Embedding<'a>, text: &'a str) -> EmbedInput<'a> {
    EmbedInput {
        text,
        max_tokens: how.max_tokens,
        rubric: how.rubric,
        pooling: match how.pooling {
            Pooling::Mean => switchyard_engine::Pooling::Mean,
            Pooling::Last => switchyard_engine::Pooling::Last,
        },
    }
}

/// A classifier stage's model, and the one permit to run it: on a CPU,
/// classifications one at a time finish sooner than several sharing the
/// cores. Two stages on one engine share its permit.
pub(super) type Stage = (Arc<Engine>, Arc<Semaphore>);

/// The permit already held for `engine` by one of `stages`: a second stage
/// on the first's model, or a stage a policy swap keeps, must not add a
/// second embedding at a time on the same cores.
pub(super) fn held_permit<'a, E: 'a>(
    engine: &Arc<E>,
    stages: impl IntoIterator<Item = &'a (Arc<E>, Arc<Semaphore>)>,
) -> Option<Arc<Semaphore>> {
    stages.into_iter().find(|(e, _)| Arc::ptr_eq(e, engine)).map(|(_, permit)| permit.clone())
}

fn unavailable(why: String) -> ApiError {
    ApiError::internal(format!("the safety classifier could not judge this request: {why}"))
        .with_status(StatusCode::SERVICE_UNAVAILABLE)
        .with_code("safety_unavailable")
}

/// `text` embedded by `stage` as `how` says.
async fn embed(stage: &Stage, how: Embedding<'_>, text: &Arc<str>) -> Result<Vec<f32>, ApiError> {
    let (engine, permit) = stage.clone();
    let permit = permit.acquire_owned().await.map_err(|_| unavailable("the classifier has stopped".into()))?;
    let (rubric, text) = (how.rubric.map(str::to_owned), text.clone());
    let Embedding { max_tokens, pooling, .. } = how;
    // The permit goes with the work: a client that leaves mid-way does
    // not free it while the embedding still runs.
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        engine.embed(embed_input(Embedding { max_tokens, pooling, rubric: rubric.as_deref() }, &text))
    })
    .await
    .map_err(|e| unavailable(e.to_string()))?
    .map_err(|e| unavailable(e.to_string()))
}

impl Routing {
    /// Fills `c.safety` unless the policy has no classifier or its patterns
    /// already decide the request is unsafe.
    pub(super) async fn judge_safety(
        &self,
        req: &ChatRequest,
        facts: &RequestFacts,
        c: &mut Classification,
    ) -> Result<(), ApiError> {
        let Some(safety) = self.policy.safety.clone() else { return Ok(()) };
        // A pattern rule settles it only where no rule reading the
        // classifier comes first (an earlier `unsafe` handoff must still
        // be able to take the request).
        let first_unsafe = self.policy.rules.iter().position(|r| r.when.unsafe_.is_some()).unwrap_or(usize::MAX);
        let by_patterns = decide(facts, c, &self.policy);
        let caught = by_patterns
            .rule_id
            .as_deref()
            .and_then(|id| self.policy.rules.iter().position(|r| r.id == id))
            .is_some_and(|i| i < first_unsafe && self.policy.rules[i].then.is_safety());
        if caught {
            metrics::counter!("switchyard_safety_checks_total", "stage" => "patterns").increment(1);
            return Ok(());
        }
        let Some(first) = self.classifier.as_ref() else {
            return Err(unavailable(format!("its model `{}` is not loaded", safety.file.model)));
        };
        // Every message the client sent, whatever its role (an ask can sit
        // in a system turn or a made-up assistant turn as well), in order:
        // the last turn's text is what the token budget keeps. The route's
        // own system prompt is added later and never judged.
        let text: Vec<&str> =
            req.params.messages.iter().map(|(_, t)| t.as_str()).filter(|t| !t.trim().is_empty()).collect();
        if text.is_empty() {
            // Nothing was said, so nothing can be unsafe.
            return Ok(());
        }
        let text: Arc<str> = text.join("\n\n").into();
        let span = req.trace.child("safety");
        let began = Instant::now();
        let embedding = embed(first, safety.file.embedding(), &text).await?;
        let mut verdict =
            safety.head.verdict(&embedding).ok_or_else(|| unavailable("the embedding could not be scored".into()))?;
        metrics::counter!("switchyard_safety_checks_total", "stage" => "classifier").increment(1);
        if let Some(second) = safety.second_for(&verdict) {
            let Some(stage) = self.second_classifier.as_ref() else {
                return Err(unavailable(format!("its second model `{}` is not loaded", second.file.model)));
            };
            let embedding = embed(stage, second.file.embedding(), &text).await?;
            verdict = second
                .verdict(&verdict, &embedding)
                .ok_or_else(|| unavailable("the second stage's embedding could not be scored".into()))?;
            metrics::counter!("switchyard_safety_checks_total", "stage" => "second").increment(1);
            span.set("switchyard.safety.first_score", format!("{:.4}", verdict.first_score.unwrap_or_default()));
        }
        metrics::histogram!("switchyard_safety_seconds").record(began.elapsed().as_secs_f64());
        span.set("switchyard.safety.score", format!("{:.4}", verdict.score));
        span.set("switchyard.safety.category", verdict.category.clone());
        span.end();
        c.safety = Some(verdict);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_on_an_engine_already_held_takes_its_permit() {
        let (small, large) = (Arc::new("small"), Arc::new("large"));
        let first = (small.clone(), Arc::new(Semaphore::new(1)));
        let shared = held_permit(&small, [&first]).unwrap();
        assert!(Arc::ptr_eq(&shared, &first.1), "one engine, one permit");
        assert!(held_permit(&large, [&first]).is_none(), "another engine keeps its own");
        // An equal value behind another Arc is another engine.
        assert!(held_permit(&Arc::new("small"), [&first]).is_none());
    }

    /// What `held_permit` is for, on a real policy: both stages of a
    /// policy on SmolLM2 run under one permit, and so does the version
    /// that replaces it.
    #[test]
    fn two_stages_on_one_model_hold_one_permit_across_a_swap() {
        use std::collections::BTreeMap;
        use switchyard_router::safety::train::{fit, Example};
        use switchyard_router::safety::{SafetyFile, SecondFile};

        let spec = switchyard_models::ModelSpec::parse("smollm2-135m").unwrap();
        let path = spec.ensure(&switchyard_models::cache_dir(), switchyard_models::Progress::Quiet).unwrap();
        let settings = switchyard_engine::EngineSettings { threads: 2, parallel: 1, ..Default::default() };
        let engine = Arc::new(Engine::load(&spec.id(), &path, settings).unwrap());
        let examples = [(0.0, 0), (1.0, 1)].map(|(x, class)| Example { embedding: vec![x; engine.n_embd()], class });
        let head = fit(&examples, &["safe".into(), "violence".into()], 0.1).encode();
        let file = SafetyFile {
            model: spec.id(),
            max_tokens: 64,
            pooling: Pooling::Mean,
            rubric: None,
            escalate_over_refusals: false,
            head: head.clone(),
            second: Some(SecondFile {
                model: spec.id(),
                max_tokens: 64,
                pooling: Pooling::Last,
                rubric: Some("Is this safe?".into()),
                band: [0.2, 0.8],
                head,
            }),
            calibration: None,
        };
        let safety = toml::to_string(&toml::Value::try_from(serde_json::json!({ "safety": file })).unwrap()).unwrap();
        let routes = format!(
            r#"
version = "permits.1"
default_route = "local"

[[routes]]
name = "local"
backend = "embedded"
model = "{}"
allowed_classes = ["public"]
"#,
            spec.id()
        );
        let policy = switchyard_router::Policy::from_toml(&format!("{routes}\n{safety}")).unwrap();
        let engines = BTreeMap::from([(spec.id(), engine)]);
        let serve = || {
            Routing::new(policy.clone(), switchyard_router::Prices::default(), &engines, Default::default()).unwrap()
        };
        let permits = |r: &Routing| [&r.classifier, &r.second_classifier].map(|s| s.as_ref().unwrap().1.clone());

        let old = serve();
        let [first, second] = permits(&old);
        assert!(Arc::ptr_eq(&first, &second), "two stages on one model, one permit");
        let mut new = serve();
        assert!(!Arc::ptr_eq(&permits(&new)[0], &first), "a version built alone has its own permit");
        new.inherit(&old);
        for permit in permits(&new) {
            assert!(Arc::ptr_eq(&permit, &first), "the version that replaces it keeps the one permit");
        }
    }
}
