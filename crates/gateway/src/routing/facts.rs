//! What the caller says about a request besides its body: the routing
//! headers, read strictly (an unknown value is a 400 naming the header,
//! never silently ignored), then the decision the router crate makes of them.
//!
//! Headers narrow, never widen: a declared data class can only raise what
//! detection finds, and forcing a route is for operators (off unless the
//! server allows it) and still yields to safety rules and the data boundary.

use axum::http::{HeaderMap, StatusCode};
use switchyard_auth::Permission;
use switchyard_router::{classify_with, decide, decide_forced, DataClass, Decision, Declared, Lane, RequestFacts};

use super::Routing;
use crate::auth::{forbidden, Caller};
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
    /// The decision for `req`, from its text, its headers and who sent it.
    /// A key's lane, data-class floor, families and routes bound what its
    /// headers may ask for: a header outside them is a 403 naming it.
    pub(super) async fn decide(
        &self,
        req: &ChatRequest,
        headers: &HeaderMap,
        caller: &Caller,
    ) -> Result<Decision, ApiError> {
        let key = match caller {
            Caller::Key(k) => Some(k.as_ref()),
            Caller::Open => None,
        };
        let asked_class = header_enum::<DataClass>(headers, DATA_CLASS_HEADER)?;
        let floor = key.and_then(|k| k.floor);
        if let (Some(asked), Some(floor)) = (asked_class, floor) {
            if asked < floor {
                return Err(narrowing(
                    DATA_CLASS_HEADER,
                    format!("`{}` is below this key's floor `{}`", asked.as_str(), floor.as_str()),
                ));
            }
        }
        let family = self.family_header(headers)?;
        if let (Some(f), Some(k)) = (&family, key) {
            if !k.families.is_empty() && !k.families.contains(f) {
                return Err(narrowing(
                    FAMILY_HEADER,
                    format!("this key may declare {}, not `{f}`", k.families.join(", ")),
                ));
            }
        }
        let lane = match (header_enum::<Lane>(headers, LANE_HEADER)?, key.and_then(|k| k.lane)) {
            (Some(asked), Some(own)) if asked != own => {
                return Err(narrowing(LANE_HEADER, format!("this key's requests go in the `{}` lane", own.as_str())));
            }
            (asked, own) => asked.or(own).unwrap_or_default(),
        };
        let declared = Declared { data_class: asked_class.max(floor), family };
        let facts = RequestFacts { lane };
        let messages: Vec<String> = req.params.messages.iter().map(|(_, text)| text.clone()).collect();
        let span = req.trace.child("classify");
        let tenant = key.and_then(|k| k.tenant_protect.as_deref()).and_then(|p| p.lists.as_ref());
        let mut classification = classify_with(&messages, &declared, &self.policy, tenant);
        span.end();
        if let Some(e) = crate::protect::blocked(&classification.found) {
            return Err(e);
        }
        let Some(route) = headers.get(FORCE_ROUTE_HEADER) else {
            self.judge_safety(req, &facts, &mut classification).await?;
            let _span = req.trace.child("decide");
            return Ok(decide(&facts, &classification, &self.policy));
        };
        let route = route.to_str().unwrap_or_default();
        match key {
            None if !self.options.allow_force_route => {
                return Err(ApiError::invalid(
                    Some(FORCE_ROUTE_HEADER.into()),
                    format!("header {FORCE_ROUTE_HEADER}: forcing a route is turned off on this server; an operator can allow it with allow-force-route"),
                )
                .with_status(StatusCode::FORBIDDEN)
                .with_code("force_route_not_allowed"));
            }
            Some(k) if !k.role.may(Permission::ForceRoute) => {
                let why = format!("forcing a route needs the operator or admin role; this key is {}", k.role.as_str());
                return Err(narrowing(FORCE_ROUTE_HEADER, why));
            }
            Some(k) if !k.routes.is_empty() && !k.routes.iter().any(|r| r == route) => {
                return Err(narrowing(
                    FORCE_ROUTE_HEADER,
                    format!("this key may force {}, not `{route}`", k.routes.join(", ")),
                ));
            }
            _ => {}
        }
        // After the caller may force a route (a refused header costs no
        // classification), before the route is taken: forcing never skips
        // the classifier.
        self.judge_safety(req, &facts, &mut classification).await?;
        let _span = req.trace.child("decide");
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

/// A header asking for more than the caller's key allows.
fn narrowing(header: &str, why: String) -> ApiError {
    ApiError { param: Some(header.to_string()), ..forbidden(format!("header {header}: {why}")) }
}

fn header_enum<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> Result<Option<T>, ApiError> {
    let Some(value) = headers.get(name) else { return Ok(None) };
    let text = value.to_str().unwrap_or_default().to_ascii_lowercase();
    text.parse().map(Some).map_err(|_| {
        ApiError::invalid(Some(name.to_string()), format!("header {name}: unknown value `{text}`"))
            .with_code("invalid_header")
    })
}
