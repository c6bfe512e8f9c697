//! MQTT topic filters with `+`, `#` and the placeholders `${username}` and
//! `${client_id}`, as ACL rules write them.

use std::fmt;

use super::pattern::PatternError;
use crate::contract::Topic;

/// The caller's values that placeholders stand for.
#[derive(Debug, Clone, Copy)]
pub struct Placeholders<'a> {
    /// `${username}`; a rule level using it never matches when there is none.
    pub username: Option<&'a str>,
    /// `${client_id}`.
    pub client_id: &'a str,
}

/// One part of a templated level.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Part {
    /// Literal text.
    Text(String),
    /// `${username}`.
    Username,
    /// `${client_id}`.
    ClientId,
}

/// One level of a filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Level {
    /// Matches exactly this level.
    Literal(String),
    /// `+`: any one level.
    Plus,
    /// `#`: this level and every one below it, or none (always last).
    Hash,
    /// A level with placeholders, e.g. `${client_id}` or `dev-${username}`.
    Template(Vec<Part>),
}

impl Level {
    /// Whether this level (not `#`) matches one topic level.
    pub fn matches(&self, level: &str, values: &Placeholders<'_>) -> bool {
        match self {
            Level::Literal(text) => text == level,
            Level::Plus | Level::Hash => true,
            Level::Template(parts) => template_matches(parts, level, values),
        }
    }
}

/// Compares a templated level with a topic level without building a string.
fn template_matches(parts: &[Part], mut level: &str, values: &Placeholders<'_>) -> bool {
    for part in parts {
        let piece = match part {
            Part::Text(text) => text.as_str(),
            Part::Username => match values.username {
                Some(u) => u,
                None => return false,
            },
            Part::ClientId => values.client_id,
        };
        match level.strip_prefix(piece) {
            Some(rest) => level = rest,
            None => return false,
        }
    }
    level.is_empty()
}

/// A parsed, valid topic filter.
#[derive(Clone, PartialEq, Eq)]
pub struct TopicFilter {
    text: String,
    levels: Vec<Level>,
}

impl TopicFilter {
    /// Parses a filter, naming what is wrong with it.
    pub fn parse(text: &str) -> Result<TopicFilter, PatternError> {
        if text.is_empty() {
            return Err(PatternError("a topic filter is empty".into()));
        }
        if text.contains('\0') {
            return Err(PatternError(format!("topic filter {text:?} contains U+0000")));
        }
        let raw: Vec<&str> = text.split('/').collect();
        let mut levels = Vec::with_capacity(raw.len());
        for (i, level) in raw.iter().enumerate() {
            levels.push(match *level {
                "+" => Level::Plus,
                "#" if i + 1 == raw.len() => Level::Hash,
                "#" => return Err(PatternError(format!("topic filter {text:?}: '#' must be the last level"))),
                l if l.contains(['+', '#']) => {
                    return Err(PatternError(format!("topic filter {text:?}: '+' and '#' must stand alone in a level")))
                }
                l if l.contains("${") => Level::Template(parse_template(text, l)?),
                l => Level::Literal(l.to_owned()),
            });
        }
        Ok(TopicFilter { text: text.to_owned(), levels })
    }

    /// The filter's levels.
    pub fn levels(&self) -> &[Level] {
        &self.levels
    }

    /// The filter as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The plain matcher, level by level: the reference the ACL's trie must agree
    /// with. Wildcards in the first level do not match a topic starting with `$`.
    pub fn matches(&self, topic: &Topic, values: &Placeholders<'_>) -> bool {
        let mut topic_levels = topic.levels();
        let dollar = topic.as_str().starts_with('$');
        for (i, level) in self.levels.iter().enumerate() {
            if i == 0 && dollar && matches!(level, Level::Plus | Level::Hash) {
                return false;
            }
            if *level == Level::Hash {
                return true;
            }
            match topic_levels.next() {
                Some(t) if level.matches(t, values) => {}
                _ => return false,
            }
        }
        topic_levels.next().is_none()
    }
}

fn parse_template(filter: &str, level: &str) -> Result<Vec<Part>, PatternError> {
    let mut parts = Vec::new();
    let mut rest = level;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            parts.push(Part::Text(rest[..start].to_owned()));
        }
        let after = &rest[start + 2..];
        let end =
            after.find('}').ok_or_else(|| PatternError(format!("topic filter {filter:?}: unterminated '${{'")))?;
        parts.push(match &after[..end] {
            "username" => Part::Username,
            "client_id" => Part::ClientId,
            other => {
                return Err(PatternError(format!(
                    "topic filter {filter:?}: unknown placeholder ${{{other}}} (use ${{username}} or ${{client_id}})"
                )))
            }
        });
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(parts)
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicFilter({:?})", self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::TopicLimits;

    const VALUES: Placeholders<'static> = Placeholders { username: Some("user0"), client_id: "dev-1" };

    fn m(filter: &str, topic: &str) -> bool {
        let limits = TopicLimits { max_bytes: 65_535, max_slashes: None, basic_ingest: false };
        TopicFilter::parse(filter).unwrap().matches(&Topic::parse(topic.into(), limits).unwrap(), &VALUES)
    }

    #[test]
    fn mqtt_wildcards_match_as_the_spec_says() {
        assert!(m("home", "home") && !m("home", "home/x") && !m("home", "Home"));
        assert!(m("home/#", "home") && m("home/#", "home/a/b") && !m("home/#", "homes"));
        assert!(m("home/+", "home/a") && !m("home/+", "home") && !m("home/+", "home/a/b"));
        assert!(m("home/+", "home/") && m("+/+", "/a") && m("#", "a/b/c"));
        assert!(m("+/b/#", "a/b") && m("a//c", "a//c") && !m("a/+/c", "a/c"));
    }

    #[test]
    fn first_level_wildcards_skip_dollar_topics() {
        assert!(!m("#", "$SYS/x") && !m("+/x", "$SYS/x") && !m("+", "$x"));
        assert!(m("$SYS/#", "$SYS/x") && m("$SYS/+", "$SYS/x") && m("a/+", "a/$x"));
    }

    #[test]
    fn placeholders_stand_for_the_caller() {
        assert!(m("devices/${client_id}/#", "devices/dev-1/t") && !m("devices/${client_id}/#", "devices/dev-2/t"));
        assert!(m("users/${username}", "users/user0") && !m("users/${username}", "users/user1"));
        assert!(m("x/pre-${username}-${client_id}", "x/pre-user0-dev-1"));
        let none = Placeholders { username: None, client_id: "dev-1" };
        let topic =
            Topic::parse("users/user0".into(), TopicLimits { max_bytes: 99, max_slashes: None, basic_ingest: false })
                .unwrap();
        assert!(!TopicFilter::parse("users/${username}").unwrap().matches(&topic, &none));
    }

    #[test]
    fn malformed_filters_are_refused_with_a_reason() {
        for f in ["", "a/#/b", "a#", "a/b+", "+a", "x/${bogus}", "x/${username", "a\0"] {
            assert!(TopicFilter::parse(f).is_err(), "{f:?} should be refused");
        }
        assert!(TopicFilter::parse("a/#/b").unwrap_err().0.contains("must be the last level"));
        assert!(TopicFilter::parse("$literal/$").is_ok(), "a bare $ is literal text");
    }
}
