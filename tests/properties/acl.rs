//! The ACL's first-match semantics: a rule set compiled from config entries
//! decides as a linear scan in priority order with reference matchers for
//! every condition.

use std::net::IpAddr;

use mqtt_http_publish::acl::{Access, Action, Effect};
use mqtt_http_publish::config::{ActionEntry, AuthEntry, EffectEntry, Limits, RuleEntry, RuleSet};
use mqtt_http_publish::contract::Qos;
use proptest::prelude::*;
use proptest::sample::select;

use crate::topic_filters::{filter_strategy, reference_matches, topic, topic_strategy, username_strategy};

/// `*` any run of characters, `?` exactly one: the plain recursive definition.
fn reference_glob(pattern: &[char], text: &[char]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some(('*', rest)) => (0..=text.len()).any(|skip| reference_glob(rest, &text[skip..])),
        Some(('?', rest)) => !text.is_empty() && reference_glob(rest, &text[1..]),
        Some((c, rest)) => text.first() == Some(c) && reference_glob(rest, &text[1..]),
    }
}

/// A block contains an address when their first `prefix` bits agree; an
/// IPv4-mapped IPv6 address is its IPv4 address (docs/configuration.md, `source_ips`).
fn reference_cidr(block: &str, ip: IpAddr) -> bool {
    let (net, prefix) = block.split_once('/').expect("generated blocks carry a prefix");
    let net: IpAddr = net.parse().unwrap();
    let prefix: u32 = prefix.parse().unwrap();
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let bits = |a: IpAddr| -> (u128, u32) {
        match a {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        }
    };
    let ((n, n_len), (a, a_len)) = (bits(net), bits(ip));
    let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix) };
    n_len == a_len && n & mask == a & mask
}

/// The caller, as the reference sees it.
#[derive(Debug, Clone)]
struct Caller {
    topic: String,
    username: Option<&'static str>,
    client_id: &'static str,
    source_ip: Option<IpAddr>,
    qos: u8,
    retain: bool,
    basic: bool,
    certificate: bool,
    /// Waiting for a reply there, rather than publishing.
    subscribe: bool,
}

/// A rule entry holds when a filter matches and every condition given holds.
fn reference_rule_matches(rule: &RuleEntry, c: &Caller) -> bool {
    rule.topics.iter().any(|f| reference_matches(f, &c.topic, c.username, c.client_id))
        && rule.usernames.as_ref().is_none_or(|names| c.username.is_some_and(|u| names.iter().any(|n| n == u)))
        && rule.client_ids.as_ref().is_none_or(|globs| {
            let id: Vec<char> = c.client_id.chars().collect();
            globs.iter().any(|g| reference_glob(&g.chars().collect::<Vec<_>>(), &id))
        })
        && rule
            .source_ips
            .as_ref()
            .is_none_or(|blocks| c.source_ip.is_some_and(|ip| blocks.iter().any(|b| reference_cidr(b, ip))))
        && rule.qos.as_ref().is_none_or(|q| q.contains(&c.qos))
        && rule.retain.is_none_or(|r| r == c.retain)
        && rule.auth.is_none_or(|a| match a {
            AuthEntry::Basic => c.basic,
            AuthEntry::Certificate => c.certificate,
        })
        && match &rule.actions {
            None => !c.subscribe,
            Some(actions) => {
                actions.contains(if c.subscribe { &ActionEntry::Subscribe } else { &ActionEntry::Publish })
            }
        }
}

/// Sort by priority, take the first rule that holds; none is deny.
fn linear(rules: &[RuleEntry], caller: &Caller) -> Effect {
    let mut sorted: Vec<&RuleEntry> = rules.iter().collect();
    sorted.sort_by_key(|r| r.priority);
    match sorted.into_iter().find(|r| reference_rule_matches(r, caller)).map(|r| r.effect) {
        Some(EffectEntry::Allow) => Effect::Allow,
        Some(EffectEntry::Deny) | None => Effect::Deny,
    }
}

fn rule_strategy() -> impl Strategy<Value = RuleEntry> {
    (
        any::<bool>(),
        prop::collection::vec(filter_strategy(), 1..3),
        prop::option::weighted(0.3, prop::collection::vec(select(vec!["user0", "a", ""]), 1..3)),
        prop::option::weighted(0.3, prop::collection::vec(select(vec!["dev-*", "?", "*", "a", "d*-?", ""]), 1..3)),
        prop::option::weighted(
            0.3,
            prop::collection::vec(
                select(vec!["10.0.0.0/8", "10.1.2.3/32", "0.0.0.0/0", "2001:db8::/32", "::/0", "10.1.2.0/25"]),
                1..3,
            ),
        ),
        prop::option::weighted(0.3, prop::collection::vec(0u8..=2, 1..3)),
        prop::option::weighted(0.2, any::<bool>()),
        prop::option::weighted(0.2, select(vec![AuthEntry::Basic, AuthEntry::Certificate])),
        prop::option::weighted(
            0.4,
            select(vec![
                vec![ActionEntry::Publish],
                vec![ActionEntry::Subscribe],
                vec![ActionEntry::Subscribe, ActionEntry::Publish],
            ]),
        ),
    )
        .prop_map(|(allow, topics, usernames, client_ids, source_ips, qos, retain, auth, actions)| {
            let strings = |v: Vec<&str>| v.into_iter().map(str::to_owned).collect::<Vec<_>>();
            RuleEntry {
                priority: 0,
                effect: if allow { EffectEntry::Allow } else { EffectEntry::Deny },
                topics,
                usernames: usernames.map(strings),
                client_ids: client_ids.map(strings),
                source_ips: source_ips.map(strings),
                qos,
                retain,
                auth,
                actions,
            }
        })
}

/// Rules with unique priorities in a random order, negative ones included.
fn rule_set_strategy() -> impl Strategy<Value = Vec<RuleEntry>> {
    prop::collection::vec(rule_strategy(), 0..12).prop_flat_map(|rules| {
        let n = rules.len();
        (Just(rules), Just((0..n as i64).collect::<Vec<_>>()).prop_shuffle()).prop_map(|(mut rules, order)| {
            for (rule, p) in rules.iter_mut().zip(order) {
                rule.priority = (p - 4) * 3;
            }
            rules
        })
    })
}

fn caller_strategy() -> impl Strategy<Value = Caller> {
    (
        topic_strategy(),
        username_strategy(),
        select(vec!["dev-1", "a", "d1-x", "curl-x"]),
        select(vec![
            Some("10.1.2.3"),
            Some("10.1.2.200"),
            Some("11.0.0.1"),
            Some("::ffff:10.1.2.3"),
            Some("2001:db8::1"),
            Some("2001:db9::1"),
            None,
        ]),
        0u8..=2,
        any::<bool>(),
        any::<(bool, bool)>(),
        any::<bool>(),
    )
        .prop_map(|(topic, username, client_id, ip, qos, retain, (basic, certificate), subscribe)| Caller {
            topic,
            username,
            client_id,
            source_ip: ip.map(|ip| ip.parse().unwrap()),
            qos,
            retain,
            basic,
            certificate,
            subscribe,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_acl_decides_as_a_linear_first_match_scan(
        rules in rule_set_strategy(),
        callers in prop::collection::vec(caller_strategy(), 16),
    ) {
        let compiled = RuleSet::new(rules.clone(), Limits::default()).expect("generated rules are valid");
        for caller in &callers {
            let t = topic(&caller.topic);
            let access = Access {
                topic: &t,
                username: caller.username,
                client_id: caller.client_id,
                source_ip: caller.source_ip,
                qos: Qos::from_level(caller.qos).unwrap(),
                retain: caller.retain,
                basic: caller.basic,
                certificate: caller.certificate,
                action: if caller.subscribe { Action::Subscribe } else { Action::Publish },
            };
            prop_assert_eq!(compiled.acl.decide(&access), linear(&rules, caller), "{:?}", caller);
        }
    }
}
