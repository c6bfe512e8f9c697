//! Topic filters: `TopicFilter::matches` and a one-rule ACL (its trie) agree
//! with a level-by-level reference matcher (MQTT 5 §4.7).

use mqtt_http_publish::acl::{Access, Acl, Action, Effect, Placeholders, Rule, TopicFilter};
use mqtt_http_publish::contract::{Qos, Topic, TopicLimits};
use proptest::prelude::*;
use proptest::sample::select;

const ANY_LENGTH: TopicLimits = TopicLimits { max_bytes: 65_535, max_slashes: None, basic_ingest: false };

/// MQTT 5 §4.7 with the placeholders: each filter level, its placeholders
/// replaced, equals the topic level; `+` is any one level; `#` (last) is the
/// rest, the parent level included; neither wildcard in the first level
/// matches a topic that starts with `$`; a level naming `${username}` matches
/// nothing when the caller has no username.
pub(crate) fn reference_matches(filter: &str, topic: &str, username: Option<&str>, client_id: &str) -> bool {
    let filter_levels: Vec<&str> = filter.split('/').collect();
    let topic_levels: Vec<&str> = topic.split('/').collect();
    for (i, level) in filter_levels.iter().enumerate() {
        if i == 0 && topic.starts_with('$') && (*level == "+" || *level == "#") {
            return false;
        }
        if *level == "#" {
            return true;
        }
        let Some(topic_level) = topic_levels.get(i) else {
            return false;
        };
        if *level == "+" {
            continue;
        }
        let expanded = match username {
            Some(u) => level.replace("${username}", u),
            None if level.contains("${username}") => return false,
            None => level.to_string(),
        };
        if expanded.replace("${client_id}", client_id) != *topic_level {
            return false;
        }
    }
    filter_levels.len() == topic_levels.len()
}

pub(crate) fn topic(name: &str) -> Topic {
    Topic::parse(name.as_bytes().to_vec(), ANY_LENGTH).expect("generated topics are valid")
}

/// A filter of 1–4 levels from words that make matches likely, `#` only last.
pub(crate) fn filter_strategy() -> impl Strategy<Value = String> {
    let level = select(vec![
        "a",
        "b",
        "$s",
        "",
        "+",
        "${username}",
        "${client_id}",
        "x-${client_id}",
        "${username}.${client_id}",
    ]);
    (prop::collection::vec(level, 1..4), any::<bool>())
        .prop_map(|(levels, hash)| {
            let mut levels: Vec<&str> = levels;
            if hash {
                levels.push("#");
            }
            levels.join("/")
        })
        .prop_filter("a filter is not empty", |f| !f.is_empty())
}

/// A topic of 1–4 levels that the filters above can reach.
pub(crate) fn topic_strategy() -> impl Strategy<Value = String> {
    let level = select(vec!["a", "b", "$s", "", "user0", "dev-1", "x-dev-1", "user0.dev-1", "$"]);
    prop::collection::vec(level, 1..5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("a topic is not empty", |t| !t.is_empty())
}

pub(crate) fn username_strategy() -> impl Strategy<Value = Option<&'static str>> {
    select(vec![Some("user0"), Some("a"), Some(""), None])
}

fn client_id_strategy() -> impl Strategy<Value = &'static str> {
    select(vec!["dev-1", "a", "b"])
}

fn one_rule(filter: TopicFilter) -> Acl {
    Acl::new(vec![Rule::new(0, Effect::Allow, vec![filter])])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn filters_match_as_the_reference_matcher_does(
        filter in filter_strategy(),
        name in topic_strategy(),
        username in username_strategy(),
        client_id in client_id_strategy(),
    ) {
        let parsed = TopicFilter::parse(&filter).expect("generated filters are valid");
        let t = topic(&name);
        let expected = reference_matches(&filter, &name, username, client_id);
        let values = Placeholders { username, client_id };
        prop_assert_eq!(parsed.matches(&t, &values), expected, "TopicFilter::matches");
        let access = Access {
            topic: &t,
            username,
            client_id,
            source_ip: None,
            qos: Qos::AtLeastOnce,
            retain: false,
            basic: true,
            certificate: false,
            action: Action::Publish,
        };
        let allowed = one_rule(parsed).decide(&access) == Effect::Allow;
        prop_assert_eq!(allowed, expected, "the ACL's trie");
    }

    #[test]
    fn arbitrary_text_filters_match_as_the_reference_matcher_does(
        filter in "[ab$+/]{1,6}(/#)?",
        name in "[ab$/]{1,6}",
        client_id in client_id_strategy(),
    ) {
        // Filters with `+` inside a level are refused; the rest must agree.
        let Ok(parsed) = TopicFilter::parse(&filter) else {
            prop_assert!(filter.split('/').any(|l| l.len() > 1 && l.contains('+')), "{:?} was refused", filter);
            return Ok(());
        };
        let values = Placeholders { username: Some("a"), client_id };
        let expected = reference_matches(&filter, &name, Some("a"), client_id);
        prop_assert_eq!(parsed.matches(&topic(&name), &values), expected);
    }
}
