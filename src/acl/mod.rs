//! The ACL (docs/configuration.md): rules in priority order, the first match decides,
//! no match is deny.
//!
//! Rules are indexed in a trie of their filters' levels, so a decision visits
//! only the rules whose filters can match the topic, however many rules there
//! are; of those, the first by priority whose conditions hold decides. A
//! decision runs on every request and allocates nothing.

pub mod filter;
pub mod pattern;

use std::collections::HashMap;
use std::net::IpAddr;

use crate::contract::{Qos, Topic};

pub use self::filter::{Level, Placeholders, TopicFilter};
pub use self::pattern::{Cidr, Glob, PatternError};

/// What a matching rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// The publish may go ahead.
    Allow,
    /// The publish is refused (401).
    Deny,
}

/// What a caller asks to do on a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Publish to it (every request).
    Publish,
    /// Receive on it: wait for a reply there (`ResponseTimeout`).
    Subscribe,
}

/// The actions a rule covers; a rule says nothing about the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actions {
    /// The rule decides publishes.
    pub publish: bool,
    /// The rule decides subscriptions (waiting for replies).
    pub subscribe: bool,
}

impl Actions {
    /// `["publish"]`: what a rule covers unless it says otherwise.
    pub const PUBLISH: Actions = Actions { publish: true, subscribe: false };

    /// Whether the rule covers `action`.
    pub fn covers(self, action: Action) -> bool {
        match action {
            Action::Publish => self.publish,
            Action::Subscribe => self.subscribe,
        }
    }
}

/// How a caller proved who it is, for the `auth` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// A verified Basic header.
    Basic,
    /// A verified client certificate.
    Certificate,
}

/// One rule, validated. Conditions left `None` always hold.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Smaller is checked first; unique within a config.
    pub priority: i64,
    /// What the rule decides when it matches.
    pub effect: Effect,
    /// The topics it covers; at least one.
    pub topics: Vec<TopicFilter>,
    /// Verified user names, sorted for binary search.
    pub usernames: Option<Vec<String>>,
    /// client_id patterns.
    pub client_ids: Option<Vec<Glob>>,
    /// Source address blocks.
    pub source_ips: Option<Vec<Cidr>>,
    /// Allowed QoS values.
    pub qos: Option<Vec<u8>>,
    /// `true`: only retained publishes; `false`: only non-retained.
    pub retain: Option<bool>,
    /// How the caller must have authenticated.
    pub auth: Option<AuthMethod>,
    /// The actions it decides: publish unless it says otherwise.
    pub actions: Actions,
}

/// Everything a decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    /// The topic to publish to.
    pub topic: &'a Topic,
    /// The verified user name, if any.
    pub username: Option<&'a str>,
    /// The client_id in effect.
    pub client_id: &'a str,
    /// The caller's address, if known.
    pub source_ip: Option<IpAddr>,
    /// Requested QoS.
    pub qos: Qos,
    /// Requested retain flag.
    pub retain: bool,
    /// A Basic header was verified.
    pub basic: bool,
    /// A client certificate was verified.
    pub certificate: bool,
    /// Publish to the topic, or subscribe to it (for a reply: QoS 1, not retained).
    pub action: Action,
}

impl Access<'_> {
    fn placeholders(&self) -> Placeholders<'_> {
        Placeholders { username: self.username, client_id: self.client_id }
    }
}

impl Rule {
    /// A rule on `topics` with no other condition.
    pub fn new(priority: i64, effect: Effect, topics: Vec<TopicFilter>) -> Rule {
        Rule {
            priority,
            effect,
            topics,
            usernames: None,
            client_ids: None,
            source_ips: None,
            qos: None,
            retain: None,
            auth: None,
            actions: Actions::PUBLISH,
        }
    }

    /// Whether every condition of the rule holds (topics aside).
    pub fn conditions_hold(&self, access: &Access<'_>) -> bool {
        self.actions.covers(access.action)
            && self.usernames.as_ref().is_none_or(|names| {
                access.username.is_some_and(|u| names.binary_search_by(|n| n.as_str().cmp(u)).is_ok())
            })
            && self.client_ids.as_ref().is_none_or(|globs| globs.iter().any(|g| g.matches(access.client_id)))
            && self
                .source_ips
                .as_ref()
                .is_none_or(|blocks| access.source_ip.is_some_and(|ip| blocks.iter().any(|b| b.contains(ip))))
            && self.qos.as_ref().is_none_or(|q| q.contains(&access.qos.level()))
            && self.retain.is_none_or(|r| r == access.retain)
            && self.auth.is_none_or(|a| match a {
                AuthMethod::Basic => access.basic,
                AuthMethod::Certificate => access.certificate,
            })
    }

    /// Whether the rule matches: one of its filters covers the topic and its conditions hold.
    pub fn matches(&self, access: &Access<'_>) -> bool {
        let values = access.placeholders();
        self.topics.iter().any(|f| f.matches(access.topic, &values)) && self.conditions_hold(access)
    }
}

/// A trie node: children by level kind, and the rules whose filter ends here.
#[derive(Default, Debug)]
struct Node {
    literal: HashMap<String, Node>,
    plus: Option<Box<Node>>,
    templates: Vec<(Level, Node)>,
    /// Rules (by index) whose filter ends with `#` at this node.
    hash: Vec<u32>,
    /// Rules (by index) whose filter ends exactly at this node.
    end: Vec<u32>,
}

/// The compiled rule set.
#[derive(Debug, Default)]
pub struct Acl {
    /// Rules sorted by priority: an index into this is a rank.
    rules: Vec<Rule>,
    root: Node,
}

impl Acl {
    /// Builds the index. Priorities must already be unique (the config checks it).
    pub fn new(mut rules: Vec<Rule>) -> Acl {
        rules.sort_by_key(|r| r.priority);
        let mut root = Node::default();
        for (rank, rule) in rules.iter().enumerate() {
            let rank = u32::try_from(rank).expect("fewer than 4 billion rules");
            for filter in &rule.topics {
                insert(&mut root, filter.levels(), rank);
            }
        }
        Acl { rules, root }
    }

    /// The rules in priority order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Allow or deny. The first rule by priority that matches decides; none is deny.
    ///
    /// Walks the trie level by level over the topic's own text and keeps the best
    /// rank found so far: nothing is allocated.
    pub fn decide(&self, access: &Access<'_>) -> Effect {
        let walk = Walk {
            rules: &self.rules,
            access,
            values: access.placeholders(),
            dollar: access.topic.as_str().starts_with('$'),
        };
        let mut best = None;
        walk.visit(&self.root, access.topic.levels(), true, &mut best);
        best.map_or(Effect::Deny, |rank| self.rules[rank as usize].effect)
    }
}

fn insert(node: &mut Node, levels: &[Level], rank: u32) {
    let Some((first, rest)) = levels.split_first() else {
        node.end.push(rank);
        return;
    };
    let child = match first {
        Level::Hash => {
            node.hash.push(rank);
            return;
        }
        Level::Plus => node.plus.get_or_insert_with(Default::default),
        Level::Literal(text) => node.literal.entry(text.clone()).or_default(),
        Level::Template(_) => match node.templates.iter().position(|(l, _)| l == first) {
            Some(i) => &mut node.templates[i].1,
            None => {
                node.templates.push((first.clone(), Node::default()));
                &mut node.templates.last_mut().expect("just pushed").1
            }
        },
    };
    insert(child, rest, rank);
}

/// One decision's walk down the trie.
struct Walk<'a> {
    rules: &'a [Rule],
    access: &'a Access<'a>,
    values: Placeholders<'a>,
    /// The topic starts with `$`.
    dollar: bool,
}

impl Walk<'_> {
    /// Visits every node whose filter levels match the topic's `levels` below `node`,
    /// keeping in `best` the smallest rank whose rule's conditions hold.
    fn visit(&self, node: &Node, mut levels: std::str::Split<'_, char>, first: bool, best: &mut Option<u32>) {
        // MQTT 3.1.1 §4.7.2: wildcards at the first level do not match `$` topics.
        let wildcards = !(first && self.dollar);
        if wildcards {
            self.consider(&node.hash, best);
        }
        let Some(level) = levels.next() else {
            self.consider(&node.end, best);
            return;
        };
        if let Some(child) = node.literal.get(level) {
            self.visit(child, levels.clone(), false, best);
        }
        if let (true, Some(child)) = (wildcards, &node.plus) {
            self.visit(child, levels.clone(), false, best);
        }
        for (template, child) in &node.templates {
            if template.matches(level, &self.values) {
                self.visit(child, levels.clone(), false, best);
            }
        }
    }

    /// Takes the first of `ranks` (ascending, as [`insert`] pushes them) that beats
    /// `best` and whose conditions hold.
    fn consider(&self, ranks: &[u32], best: &mut Option<u32>) {
        for &rank in ranks {
            if best.is_some_and(|b| rank >= b) {
                return;
            }
            if self.rules[rank as usize].conditions_hold(self.access) {
                *best = Some(rank);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::TopicLimits;

    fn rule(priority: i64, effect: Effect, topics: &[&str]) -> Rule {
        Rule::new(priority, effect, topics.iter().map(|t| TopicFilter::parse(t).unwrap()).collect())
    }

    fn topic(t: &str) -> Topic {
        Topic::parse(t.into(), TopicLimits { max_bytes: 65_535, max_slashes: None, basic_ingest: false }).unwrap()
    }

    fn access(topic: &Topic) -> Access<'_> {
        Access {
            topic,
            username: Some("user0"),
            client_id: "curl-x",
            source_ip: Some("10.1.2.3".parse().unwrap()),
            qos: Qos::AtLeastOnce,
            retain: false,
            basic: true,
            certificate: false,
            action: Action::Publish,
        }
    }

    /// The plain evaluator the trie must agree with.
    fn linear(rules: &[Rule], access: &Access<'_>) -> Effect {
        let mut sorted: Vec<&Rule> = rules.iter().collect();
        sorted.sort_by_key(|r| r.priority);
        sorted.into_iter().find(|r| r.matches(access)).map_or(Effect::Deny, |r| r.effect)
    }

    #[test]
    fn no_rules_is_deny() {
        let t = topic("home");
        assert_eq!(Acl::new(vec![]).decide(&access(&t)), Effect::Deny);
    }

    #[test]
    fn the_first_match_by_priority_decides_not_the_order_written() {
        let rules = vec![rule(20, Effect::Allow, &["home/#"]), rule(10, Effect::Deny, &["home/secret"])];
        let acl = Acl::new(rules);
        assert_eq!(acl.decide(&access(&topic("home/secret"))), Effect::Deny);
        assert_eq!(acl.decide(&access(&topic("home/open"))), Effect::Allow);
        assert_eq!(acl.decide(&access(&topic("office"))), Effect::Deny);
    }

    #[test]
    fn a_rule_whose_conditions_fail_passes_to_the_next() {
        let mut only_admin = rule(1, Effect::Allow, &["#"]);
        only_admin.usernames = Some(vec!["admin".into()]);
        let mut qos0_deny = rule(2, Effect::Deny, &["home"]);
        qos0_deny.qos = Some(vec![0]);
        let acl = Acl::new(vec![only_admin, qos0_deny, rule(3, Effect::Allow, &["home"])]);
        let t = topic("home");
        assert_eq!(acl.decide(&access(&t)), Effect::Allow);
        assert_eq!(acl.decide(&Access { qos: Qos::AtMostOnce, ..access(&t) }), Effect::Deny);
        assert_eq!(acl.decide(&Access { username: Some("admin"), qos: Qos::AtMostOnce, ..access(&t) }), Effect::Allow);
    }

    #[test]
    fn every_condition_is_checked() {
        let t = topic("a");
        let base = access(&t);
        let with = |f: fn(&mut Rule)| {
            let mut r = rule(1, Effect::Allow, &["a"]);
            f(&mut r);
            Acl::new(vec![r])
        };
        let acl = with(|r| r.client_ids = Some(vec![Glob::new("curl-*")]));
        assert_eq!(acl.decide(&base), Effect::Allow);
        assert_eq!(acl.decide(&Access { client_id: "dev-1", ..base }), Effect::Deny);
        let acl = with(|r| r.source_ips = Some(vec!["10.0.0.0/8".parse().unwrap()]));
        assert_eq!(acl.decide(&base), Effect::Allow);
        assert_eq!(acl.decide(&Access { source_ip: Some("11.0.0.1".parse().unwrap()), ..base }), Effect::Deny);
        assert_eq!(acl.decide(&Access { source_ip: None, ..base }), Effect::Deny);
        let acl = with(|r| r.retain = Some(true));
        assert_eq!(acl.decide(&base), Effect::Deny);
        assert_eq!(acl.decide(&Access { retain: true, ..base }), Effect::Allow);
        let acl = with(|r| r.auth = Some(AuthMethod::Certificate));
        assert_eq!(acl.decide(&base), Effect::Deny);
        assert_eq!(acl.decide(&Access { certificate: true, basic: false, ..base }), Effect::Allow);
        let acl = with(|r| r.usernames = Some(vec!["user0".into()]));
        assert_eq!(acl.decide(&Access { username: None, ..base }), Effect::Deny, "a certificate has no username");
    }

    #[test]
    fn dollar_topics_need_an_explicit_rule() {
        let acl = Acl::new(vec![rule(1, Effect::Allow, &["#"]), rule(2, Effect::Allow, &["+/status"])]);
        assert_eq!(acl.decide(&access(&topic("$SYS/status"))), Effect::Deny);
        assert_eq!(acl.decide(&access(&topic("x/status"))), Effect::Allow);
        let acl = Acl::new(vec![rule(1, Effect::Allow, &["$SYS/#"])]);
        assert_eq!(acl.decide(&access(&topic("$SYS/status"))), Effect::Allow);
    }

    #[test]
    fn the_trie_agrees_with_the_linear_evaluator() {
        let filters =
            ["#", "+", "a", "a/#", "a/+", "a/b", "+/b", "a/+/c", "${username}/#", "d/${client_id}", "$s/#", "a//b"];
        let topics =
            ["a", "a/b", "a/b/c", "b", "user0/x", "user1/x", "d/curl-x", "d/other", "$s/a", "$s", "a//b", "/b"];
        let mut rules = Vec::new();
        for (i, f) in filters.iter().enumerate() {
            let effect = if i % 3 == 0 { Effect::Deny } else { Effect::Allow };
            let mut r = rule((i as i64 * 7) % 13, effect, &[f]);
            if i % 4 == 1 {
                r.qos = Some(vec![0]);
            }
            rules.push(r);
        }
        let acl = Acl::new(rules.clone());
        for t in topics {
            let t = topic(t);
            for qos in [0, 1] {
                let a = Access { qos: Qos::from_level(qos).unwrap(), ..access(&t) };
                assert_eq!(acl.decide(&a), linear(&rules, &a), "topic {t} qos {qos}");
            }
        }
    }

    #[test]
    fn the_trie_agrees_with_the_linear_evaluator_on_random_rule_sets() {
        let mut seed = 42u64;
        let mut next = |n: usize| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        let words = ["a", "b", "$s", "", "+", "#", "${username}", "${client_id}", "x-${client_id}"];
        let topic_words = ["a", "b", "$s", "", "user0", "curl-x", "x-curl-x"];
        for round in 0..20 {
            let mut rules = Vec::new();
            for priority in 0..500 {
                let depth = 1 + next(4);
                let mut levels: Vec<&str> = (0..depth).map(|_| words[next(words.len())]).collect();
                levels.retain(|l| *l != "#");
                if next(3) == 0 {
                    levels.push("#");
                }
                let filter = match levels.join("/") {
                    joined if joined.is_empty() => "#".to_owned(),
                    joined => joined,
                };
                let effect = if next(2) == 0 { Effect::Allow } else { Effect::Deny };
                let mut r = rule((priority * 7919) % 500, effect, &[&filter]);
                if next(5) == 0 {
                    r.qos = Some(vec![next(2) as u8]);
                }
                if next(7) == 0 {
                    r.usernames = Some(vec!["user0".into()]);
                }
                rules.push(r);
            }
            let acl = Acl::new(rules.clone());
            for _ in 0..200 {
                let depth = 1 + next(4);
                let name = (0..depth).map(|_| topic_words[next(topic_words.len())]).collect::<Vec<_>>().join("/");
                let t = topic(if name.is_empty() { "a" } else { &name });
                let a = Access {
                    qos: Qos::from_level(next(2) as u8).unwrap(),
                    username: [Some("user0"), None][next(2)],
                    ..access(&t)
                };
                assert_eq!(acl.decide(&a), linear(&rules, &a), "round {round}, topic {t:?}");
            }
        }
    }
}
