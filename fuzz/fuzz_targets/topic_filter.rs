//! Topic filter parsing and matching. The input is up to four lines: a filter,
//! a topic, a username (absent: none) and a client_id.
//!
//! Beyond "no panic": the parser accepts exactly the filters a plain validator
//! accepts, and `TopicFilter::matches` and a one-rule ACL (its trie) both
//! agree with a plain reference matcher written here from MQTT's rules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtt_http_publish::acl::{Access, Acl, Action, Effect, Placeholders, Rule, TopicFilter};
use mqtt_http_publish::contract::{Qos, Topic, TopicLimits};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut fields = text.split('\n');
    let filter_text = fields.next().unwrap_or_default();
    let topic_text = fields.next().unwrap_or_default();
    let username = fields.next();
    let client_id = fields.next().unwrap_or("dev-1");

    let parsed = TopicFilter::parse(filter_text);
    assert_eq!(parsed.is_ok(), reference_valid(filter_text), "filter {filter_text:?}: {parsed:?}");
    let Ok(filter) = parsed else {
        return;
    };
    let limits = TopicLimits { max_bytes: 65_535, max_slashes: None, basic_ingest: false };
    let Ok(topic) = Topic::parse(topic_text.as_bytes().to_vec(), limits) else {
        return;
    };
    let values = Placeholders { username, client_id };
    let expected = reference_matches(filter_text, topic_text, username, client_id);
    assert_eq!(filter.matches(&topic, &values), expected, "filter {filter_text:?} topic {topic_text:?}");

    let acl = Acl::new(vec![Rule::new(1, Effect::Allow, vec![filter])]);
    let access = Access {
        topic: &topic,
        username,
        client_id,
        source_ip: None,
        qos: Qos::AtLeastOnce,
        retain: false,
        basic: true,
        certificate: false,
        action: Action::Publish,
    };
    let decided = acl.decide(&access) == Effect::Allow;
    assert_eq!(decided, expected, "the ACL's trie disagrees: filter {filter_text:?} topic {topic_text:?}");
});

/// MQTT 5 §4.7 plus the placeholders: non-empty, no U+0000, `+` and `#` alone
/// in their level, `#` last, and `${` only as `${username}` or `${client_id}`.
fn reference_valid(filter: &str) -> bool {
    let levels: Vec<&str> = filter.split('/').collect();
    !filter.is_empty()
        && !filter.contains('\0')
        && levels.iter().enumerate().all(|(i, level)| match *level {
            "+" => true,
            "#" => i + 1 == levels.len(),
            l => !l.contains(['+', '#']) && placeholders_known(l),
        })
}

fn placeholders_known(level: &str) -> bool {
    let mut rest = level;
    while let Some(start) = rest.find("${") {
        rest = &rest[start..];
        match ["${username}", "${client_id}"].iter().find(|p| rest.starts_with(**p)) {
            Some(p) => rest = &rest[p.len()..],
            None => return false,
        }
    }
    true
}

/// The filter with its placeholders replaced (a level that names a missing
/// username matches nothing), then the level-by-level walk of MQTT 5 §4.7:
/// `#` matches the rest (and its parent), `+` one level, and neither matches a
/// first level starting with `$`.
fn reference_matches(filter: &str, topic: &str, username: Option<&str>, client_id: &str) -> bool {
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
        match substitute(level, username, client_id) {
            Some(expanded) if expanded == *topic_level => {}
            _ => return false,
        }
    }
    filter_levels.len() == topic_levels.len()
}

/// One pass over the level, so a value that itself reads `${client_id}` stays text.
fn substitute(level: &str, username: Option<&str>, client_id: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = level;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        if let Some(after) = rest.strip_prefix("${username}") {
            out.push_str(username?);
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${client_id}") {
            out.push_str(client_id);
            rest = after;
        } else {
            unreachable!("the filter was validated");
        }
    }
    out.push_str(rest);
    Some(out)
}
