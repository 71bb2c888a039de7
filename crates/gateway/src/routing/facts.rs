//! What the caller says about a request besides its body: the routing
//! headers, read strictly (an unknown value is a 400 naming the header,
//! never silently ignored), then the decision the router crate makes of them.
//!
//! Headers narrow, never widen: a declared data class can only raise what
//! detection finds, and forcing a route is for operators (off unless the
//! server allows it) and still yields to safety rules and the data boundary.

use axum::http::{HeaderMap, StatusCode};
use switchyard_router::{classify, decide, decide_forced, DataClass, Decision, Declared, Lane, RequestFacts};

use super::Routing;
use crate::backend::ChatRequest;
use crate::error::ApiError;

// The headers read here (names in `switchyard_wire::headers`):
// - data class: asserted by the caller; detection may raise it;
// - lane: `interactive` (default), `batch` or `fallback`;
// - family: one the policy declares;
// - force route: this route alone, past the routing rules (never past safety
//   rules or the data boundary): how an operator or the eval runner measures
//   one route. Refused unless the server allows forcing.
use switchyard_wire::headers::{
    DATA_CLASS as DATA_CLASS_HEADER, FAMILY as FAMILY_HEADER, FORCE_ROUTE as FORCE_ROUTE_HEADER, LANE as LANE_HEADER,
};

impl Routing {
    pub(super) fn decide(&self, req: &ChatRequest, headers: &HeaderMap) -> Result<Decision, ApiError> {
        let declared = Declared {
            data_class: header_enum::<DataClass>(headers, DATA_CLASS_HEADER)?,
            family: self.family_header(headers)?,
        };
        let facts = RequestFacts { lane: header_enum::<Lane>(headers, LANE_HEADER)?.unwrap_or_default() };
        let messages: Vec<String> = req.params.messages.iter().map(|(_, text)| text.clone()).collect();
        let classification = classify(&messages, &declared, &self.policy);
        let Some(route) = headers.get(FORCE_ROUTE_HEADER) else {
            return Ok(decide(&facts, &classification, &self.policy));
        };
        if !self.options.allow_force_route {
            return Err(ApiError::invalid(
                Some(FORCE_ROUTE_HEADER.into()),
                format!("header {FORCE_ROUTE_HEADER}: forcing a route is turned off on this server; an operator can allow it with allow-force-route"),
            )
            .with_status(StatusCode::FORBIDDEN)
            .with_code("force_route_not_allowed"));
        }
        let route = route.to_str().unwrap_or_default();
        decide_forced(&facts, &classification, &self.policy, route).ok_or_else(|| {
            let known: Vec<_> = self.policy.routes.iter().map(|r| r.name.as_str()).collect();
            ApiError::invalid(
                Some(FORCE_ROUTE_HEADER.into()),
                format!("header {FORCE_ROUTE_HEADER}: unknown route `{route}`; this policy has: {}", known.join(", ")),
            )
            .with_code("invalid_header")
        })
    }

    fn family_header(&self, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
        let Some(value) = headers.get(FAMILY_HEADER) else { return Ok(None) };
        let name = value.to_str().unwrap_or_default();
        if self.policy.family(name).is_none() {
            let known: Vec<_> = self.policy.families.iter().map(|f| f.name.as_str()).collect();
            return Err(ApiError::invalid(
                Some(FAMILY_HEADER.into()),
                format!("header {FAMILY_HEADER}: unknown family `{name}`; this policy knows: {}", known.join(", ")),
            )
            .with_code("invalid_header"));
        }
        Ok(Some(name.to_string()))
    }
}

fn header_enum<T: serde::de::DeserializeOwned>(headers: &HeaderMap, name: &str) -> Result<Option<T>, ApiError> {
    let Some(value) = headers.get(name) else { return Ok(None) };
    let text = value.to_str().unwrap_or_default().to_ascii_lowercase();
    serde_json::from_value(serde_json::Value::String(text.clone())).map(Some).map_err(|_| {
        ApiError::invalid(Some(name.to_string()), format!("header {name}: unknown value `{text}`"))
            .with_code("invalid_header")
    })
}
