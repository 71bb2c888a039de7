//! Who is calling: API keys and roles. Pure, apart from drawing random
//! bytes for a new key: storing keys is the store's job, checking them on
//! a request the gateway's.
//!
//! A key reads `sy-<id>_<secret>`: the id (8 hex digits) is public, so a
//! key can be named in logs, lists and revocations; the secret (256 random
//! bits) is shown once, when the key is made, and kept only as its SHA-256.
//! Invariant: a presented secret is compared with the stored hash in
//! constant time, so how long a refusal takes says nothing about how close
//! a guess was.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What every switchyard key starts with.
pub const KEY_PREFIX: &str = "sy-";
const ID_BYTES: usize = 4;
const SECRET_BYTES: usize = 32;

/// A key just made: the whole key (to show once) and what is kept of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    /// The public id.
    pub id: String,
    /// `sy-<id>_<secret>`: shown to its owner once, never stored.
    pub key: String,
    /// SHA-256 of the secret, hex: all that is stored of it.
    pub hash: String,
}

/// Draws a new key from the operating system's random source.
pub fn generate() -> Result<NewKey, getrandom::Error> {
    let mut bytes = [0u8; ID_BYTES + SECRET_BYTES];
    getrandom::fill(&mut bytes)?;
    let (id, secret) = (hex::encode(&bytes[..ID_BYTES]), hex::encode(&bytes[ID_BYTES..]));
    Ok(NewKey { key: format!("{KEY_PREFIX}{id}_{secret}"), hash: hash(&secret), id })
}

/// The id and the secret of a presented key, if it has a key's shape.
pub fn parse(presented: &str) -> Option<(&str, &str)> {
    let (id, secret) = presented.strip_prefix(KEY_PREFIX)?.split_once('_')?;
    let hex_of = |s: &str, bytes: usize| s.len() == 2 * bytes && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_of(id, ID_BYTES) && hex_of(secret, SECRET_BYTES)).then_some((id, secret))
}

/// Does `secret` hash to `stored` (hex)? Constant time in the contents of
/// both: every byte of the digests is compared, whatever differs first.
pub fn verify(secret: &str, stored: &str) -> bool {
    let Ok(stored) = hex::decode(stored) else { return false };
    let presented = Sha256::digest(secret.as_bytes());
    stored.len() == presented.len() && bool::from(presented.as_slice().ct_eq(&stored))
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Routes, models, policy (apply, roll back), faults (game days), forcing
    /// a route; reads decisions and handoffs.
    Operator,
    /// Reads decisions (no payloads) and the audit trail; changes nothing.
    Auditor,
    /// Inference, and its own tenant's decisions and handoffs.
    Tenant,
}

/// Something a caller may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// `POST /v1/chat/completions`.
    Infer,
    /// Send `x-switchyard-force-route`.
    ForceRoute,
    /// Read any tenant's decisions and shadows.
    ReadAllDecisions,
    /// Read any tenant's handoffs (their payloads included).
    ReadAllHandoffs,
    /// Answer a handoff.
    ResolveHandoffs,
    /// Create, list, revoke and rotate keys.
    ManageKeys,
    /// Set tenants' limits.
    ManageTenants,
    /// Read the audit trail.
    ReadAudit,
    /// Apply and roll back the routing policy.
    ManagePolicy,
    /// Inject faults into routes (game days).
    InjectFaults,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::Auditor, Role::Tenant];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
            Role::Tenant => "tenant",
        }
    }

    pub fn may(self, p: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Admin => true,
            Role::Operator => matches!(
                p,
                Infer | ForceRoute | ReadAllDecisions | ReadAllHandoffs | ResolveHandoffs | ManagePolicy | InjectFaults
            ),
            Role::Auditor => matches!(p, ReadAllDecisions | ReadAudit),
            Role::Tenant => matches!(p, Infer),
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| {
            let known: Vec<_> = Role::ALL.iter().map(|r| r.as_str()).collect();
            format!("unknown role `{s}`; roles are {}", known.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_parses_and_verifies_and_nothing_else_does() {
        let k = generate().unwrap();
        assert!(k.key.starts_with("sy-") && k.key.len() == 3 + 8 + 1 + 64, "{}", k.key);
        let (id, secret) = parse(&k.key).unwrap();
        assert_eq!(id, k.id);
        assert!(verify(secret, &k.hash));
        assert!(!k.hash.contains(secret), "only the hash is kept");
        // One flipped digit anywhere in the secret fails.
        for i in [0, 31, 63] {
            let mut wrong = secret.as_bytes().to_vec();
            wrong[i] = if wrong[i] == b'0' { b'1' } else { b'0' };
            assert!(!verify(std::str::from_utf8(&wrong).unwrap(), &k.hash));
        }
        assert_ne!(generate().unwrap().key, k.key, "keys are random");
        for bad in
            ["", "sy-", "sk-abc", "sy-1234567_00", "sy-zzzzzzzz_00", &k.key[..k.key.len() - 1], &format!("{}0", k.key)]
        {
            assert!(parse(bad).is_none(), "{bad}");
        }
        assert!(!verify(secret, "not hex"));
        assert!(!verify(secret, "abcd"), "a stored hash of the wrong length never matches");
    }

    #[test]
    fn roles_grant_what_the_table_says() {
        use Permission::*;
        assert!(Role::ALL.iter().all(|r| r.may(Infer) != (*r == Role::Auditor)));
        assert!(Role::Operator.may(ForceRoute) && !Role::Tenant.may(ForceRoute) && !Role::Auditor.may(ForceRoute));
        assert!(Role::Auditor.may(ReadAllDecisions) && !Role::Auditor.may(ReadAllHandoffs));
        assert!(Role::ALL.iter().all(|r| r.may(ManageKeys) == (*r == Role::Admin)));
        assert!(Role::ALL.iter().all(|r| r.may(ManageTenants) == (*r == Role::Admin)));
        assert!(Role::ALL.iter().all(|r| r.may(ReadAudit) == matches!(r, Role::Admin | Role::Auditor)));
        for p in [ManagePolicy, InjectFaults] {
            assert!(Role::ALL.iter().all(|r| r.may(p) == matches!(r, Role::Admin | Role::Operator)), "{p:?}");
        }
        assert_eq!("operator".parse::<Role>(), Ok(Role::Operator));
        assert!("root".parse::<Role>().unwrap_err().contains("admin, operator, auditor, tenant"));
    }
}
