//! The policy's `[protect]` section in the request path: a blocked finding
//! is a 400 that names its detectors (never the text); a route that may not
//! receive a redacted finding's class gets the prompt with placeholders
//! (each attempt and each shadow copy on its own terms); answers go out
//! through [`answer`], which puts placeholders back where the policy says
//! and redacts what the output guard finds.

pub mod answer;

use std::borrow::Cow;

use std::sync::OnceLock;

use switchyard_router::detect::{Detectors, Placeholders};
use switchyard_router::protect::{days_ms, redact_for, Found, Keep, ProtectAction};
use switchyard_router::{Decision, Policy, Route};
use switchyard_store::payload::PayloadRecord;
use switchyard_wire::{ChatMessage, MessageContent, Role};

use crate::backend::ChatRequest;
use crate::error::ApiError;
use crate::AppState;

/// The request with the policy's input rules applied (`[protect.input]`):
/// too many or too long messages are a 400 naming the parameter; control
/// characters and chat-template markers are taken out of the text every
/// route and detector then sees.
pub fn sanitised(mut req: ChatRequest, policy: &Policy) -> Result<ChatRequest, ApiError> {
    let Some(rules) = policy.protect.as_ref().and_then(|p| p.input) else { return Ok(req) };
    if let Some(max) = rules.max_messages.filter(|max| req.params.messages.len() > *max) {
        return Err(ApiError::invalid(
            Some("messages".into()),
            format!("{} messages; this server takes at most {max} in one request", req.params.messages.len()),
        )
        .with_code("too_many_messages"));
    }
    for (i, (_, text)) in req.params.messages.iter_mut().enumerate() {
        let chars = text.chars().count();
        if let Some(max) = rules.max_message_chars.filter(|max| chars > *max) {
            return Err(ApiError::invalid(
                Some(format!("messages[{i}].content")),
                format!("{chars} characters; this server takes at most {max} in one message"),
            )
            .with_code("message_too_long"));
        }
        let (clean, done) = switchyard_router::protect::sanitise(text, &rules);
        if done == Default::default() {
            continue;
        }
        for (what, n) in [("control", done.control_stripped), ("template_marker", done.markers_neutralised)] {
            metrics::counter!("switchyard_input_sanitised_total", "what" => what).increment(n as u64);
        }
        *text = clean;
        if let Some(m) = req.body.messages.get_mut(i) {
            m.content = Some(MessageContent::Text(text.clone()));
        }
    }
    Ok(req)
}

/// The 400 for a request with a finding whose class the policy blocks.
pub fn blocked(found: &[Found]) -> Option<ApiError> {
    let mut named: Vec<String> = Vec::new();
    let mut first_message = None;
    for f in found.iter().filter(|f| f.action == Some(ProtectAction::Block)) {
        first_message.get_or_insert(f.message);
        let what = format!("{} ({})", f.finding.detector, f.class.as_str());
        if !named.contains(&what) {
            named.push(what);
        }
    }
    let message = first_message?;
    Some(
        ApiError::invalid(
            Some(format!("messages[{message}].content")),
            format!(
                "this request contains {}, which this server's policy does not let through; remove it and send again",
                named.join(", ")
            ),
        )
        .with_code("sensitive_data"),
    )
}

/// A request made ready for one route.
pub struct Prepared<'a> {
    pub req: Cow<'a, ChatRequest>,
    /// Findings replaced by placeholders.
    pub redacted: usize,
    /// For restoring the answer, when the policy says to restore any of them.
    pub restore: Option<Placeholders>,
}

/// The request as `route` receives it: findings the policy redacts, of a
/// class the route may not receive, replaced by placeholders; then the
/// route's `system_prompt`, if it has one, put first (after redaction, so
/// the operator's prompt is never rewritten).
pub fn for_route<'a>(req: &'a ChatRequest, decision: &Decision, policy: &Policy, route: &Route) -> Prepared<'a> {
    let texts: Vec<String> = req.params.messages.iter().map(|(_, text)| text.clone()).collect();
    let redacted = redact_for(&texts, &decision.found, &route.allowed_classes);
    if redacted.is_none() && route.system_prompt.is_none() {
        return Prepared { req: Cow::Borrowed(req), redacted: 0, restore: None };
    }
    let mut sent = req.clone();
    let (count, restore) = match redacted {
        None => (0, None),
        Some(redacted) => {
            for (i, ((_, text), new)) in sent.params.messages.iter_mut().zip(redacted.texts).enumerate() {
                if *text != new {
                    *text = new;
                    if let Some(m) = sent.body.messages.get_mut(i) {
                        m.content = Some(MessageContent::Text(text.clone()));
                    }
                }
            }
            let restore = policy.protect.as_ref().is_some_and(|p| redacted.classes.iter().any(|c| p.restores(*c)));
            (redacted.count, restore.then_some(redacted.placeholders))
        }
    };
    if let Some(prompt) = &route.system_prompt {
        with_system_prompt(&mut sent, prompt);
    }
    Prepared { req: Cow::Owned(sent), redacted: count, restore }
}

/// Puts a route's system prompt first: before the text of the client's
/// leading system message, or as a system message of its own.
fn with_system_prompt(req: &mut ChatRequest, prompt: &str) {
    match req.params.messages.first_mut() {
        Some((role, text)) if *role == "system" => {
            *text = format!("{prompt}\n\n{text}");
            if let Some(m) = req.body.messages.first_mut() {
                m.content = Some(MessageContent::Text(text.clone()));
            }
        }
        _ => {
            req.params.messages.insert(0, ("system", prompt.to_string()));
            let message =
                ChatMessage { role: Role::System, content: Some(MessageContent::Text(prompt.into())), name: None };
            req.body.messages.insert(0, message);
        }
    }
}

/// Keeps the request's payload where the policy says (by the route that
/// answered and the data class), queued without waiting: redacted by every
/// built-in detector, or sealed with the payload key. What [`replay`]
/// needs comes with it: the lane, family and class the decision saw.
/// A tenant's own retention shortens the policy's, never lengthens it.
pub fn keep_payload(
    state: &AppState,
    policy: &Policy,
    req: &ChatRequest,
    decision: &Decision,
    route: &str,
    tenant_days: Option<f64>,
) {
    let (Some(protect), Some(recorder)) = (&policy.protect, &state.recorder) else { return };
    let Some(rule) = protect.payload_rule(route, decision.data_class) else { return };
    let days = tenant_days.map_or(rule.retention_days, |t| t.min(rule.retention_days));
    let redact = rule.keep == Keep::Redacted;
    // One set of placeholders for the request: `[EMAIL_1]` is one address
    // in every message.
    let mut placeholders = Placeholders::default();
    let messages: Vec<serde_json::Value> = req
        .params
        .messages
        .iter()
        .map(|(role, text)| {
            let text = if redact {
                static ALL: OnceLock<Detectors> = OnceLock::new();
                let all = ALL.get_or_init(Detectors::all);
                placeholders.redact(text, &all.scan(text))
            } else {
                text.clone()
            };
            serde_json::json!({"role": role, "content": text})
        })
        .collect();
    let payload = serde_json::json!({
        "messages": messages,
        "lane": decision.lane.as_str(),
        "family": decision.family,
        "data_class": decision.data_class.as_str(),
    })
    .to_string();
    let created_ms = switchyard_wire::unix_ms();
    let mut record = PayloadRecord {
        request_id: req.id.clone(),
        created_ms,
        route: route.to_string(),
        data_class: decision.data_class.as_str().to_string(),
        kind: if redact { "redacted" } else { "encrypted" }.to_string(),
        key_id: None,
        nonce: None,
        body: payload,
        expires_ms: created_ms + days_ms(days),
    };
    if !redact {
        // Checked at start: a policy that keeps encrypted payloads needs a key.
        let Some(keys) = &state.payload_keys else { return };
        match keys.seal(record.body.as_bytes()) {
            Ok((key_id, nonce, body)) => (record.key_id, record.nonce, record.body) = (Some(key_id), Some(nonce), body),
            Err(e) => {
                tracing::error!(request_id = %req.id, "payload not kept: {e}");
                return;
            }
        }
    }
    recorder.payload(record);
}
