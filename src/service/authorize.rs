//! Stage: whether the ACL lets the caller do what the operation asks, on
//! every topic it touches. Decided before any body is read.

use std::net::IpAddr;

use super::Service;
use crate::acl::{Access, Action, Effect};
use crate::auth::Identity;
use crate::config::RuleSet;
use crate::contract::{ApiError, ErrorCode, Qos, Topic};
use crate::publish::Publisher;

/// One thing an operation asks to do, as the ACL decides it.
pub(super) struct Wanted<'a> {
    /// Publish or subscribe.
    pub action: Action,
    /// Where.
    pub topic: &'a Topic,
    /// At which QoS.
    pub qos: Qos,
    /// Whether as a retained message.
    pub retain: bool,
    /// The 401's message when the ACL denies it.
    pub denied: &'static str,
}

/// A caller the ACL let through: what the operation's execute takes.
pub(super) struct Authorized {
    /// Who the caller is.
    pub identity: Identity,
    /// Where the caller is, for `source_ips` rules.
    source_ip: Option<IpAddr>,
}

impl Authorized {
    /// Whether the ACL also allows `wanted`, which the operation learns of
    /// later (the response topic of a reply); 401 if not.
    pub fn also(&self, rules: &RuleSet, wanted: &Wanted<'_>) -> Result<(), ApiError> {
        self.also_as(rules, wanted, self.identity.client_id.as_str())
    }

    /// [`Authorized::also`] for the caller under `client_id`: the one a
    /// server-made client id takes when a retry acts under the first request's id.
    pub fn also_as(&self, rules: &RuleSet, wanted: &Wanted<'_>, client_id: &str) -> Result<(), ApiError> {
        let identity = &self.identity;
        let access = Access {
            topic: wanted.topic,
            username: identity.username(),
            client_id,
            source_ip: self.source_ip,
            qos: wanted.qos,
            retain: wanted.retain,
            basic: identity.basic(),
            certificate: identity.certificate(),
            action: wanted.action,
        };
        match rules.acl.decide(&access) {
            Effect::Allow => Ok(()),
            Effect::Deny => Err(ApiError::unauthorized(ErrorCode::NotAuthorized, wanted.denied)),
        }
    }
}

impl<P: Publisher> Service<P> {
    /// The caller, authorized for everything in `wanted`; 401 for the first the ACL denies.
    pub(super) fn authorize<'a>(
        &self,
        rules: &RuleSet,
        identity: Identity,
        source_ip: Option<IpAddr>,
        mut wanted: impl Iterator<Item = Wanted<'a>>,
    ) -> Result<Authorized, ApiError> {
        let authorized = Authorized { identity, source_ip };
        wanted.try_for_each(|wanted| authorized.also(rules, &wanted))?;
        Ok(authorized)
    }
}
