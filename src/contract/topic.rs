//! The MQTT topic name a request publishes to, parsed once at the edge.

use std::fmt;

use super::values::{code_point, forbidden_in_mqtt_text};

/// What a backend accepts in a topic name beyond the MQTT rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLimits {
    /// Longest topic name in UTF-8 bytes (MQTT allows 65 535; AWS IoT 256).
    pub max_bytes: usize,
    /// Most `/` separators in one name (AWS IoT: 7); `None` means no limit.
    pub max_slashes: Option<usize>,
    /// AWS IoT Basic Ingest: the `$aws/rules/{rule}/` prefix of a topic counts
    /// against neither limit, as AWS IoT Core's quotas say (the ACL still decides).
    pub basic_ingest: bool,
}

/// The part of a Basic Ingest topic after `$aws/rules/{rule}/`, if `name` is one.
fn after_basic_ingest_prefix(name: &str) -> Option<&str> {
    let (rule, rest) = name.strip_prefix("$aws/rules/")?.split_once('/')?;
    (!rule.is_empty()).then_some(rest)
}

/// Why a topic name was refused; each reason becomes the 400's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The name is empty (the path ended at `/topics/`).
    #[error("the topic name is empty")]
    Empty,
    /// The percent-decoded bytes are not UTF-8.
    #[error("the topic name is not valid UTF-8")]
    NotUtf8,
    /// `+` or `#` appear in a name: they are only for subscriptions.
    #[error("the topic name contains the wildcard '{0}', which only subscriptions may use")]
    Wildcard(char),
    /// U+0000, a control character or a noncharacter (MQTT 5 §1.5.4; see
    /// [`forbidden_in_mqtt_text`]).
    #[error("the topic name contains {}, which MQTT text may not hold (a control character or a noncharacter)", code_point(*.0))]
    Forbidden(char),
    /// Longer than the backend allows.
    #[error("the topic name is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Length of the name in bytes.
        len: usize,
        /// The backend's limit.
        max: usize,
    },
    /// Deeper than the backend allows.
    #[error("the topic name has {count} '/' separators; the limit is {max}")]
    TooDeep {
        /// Number of separators in the name.
        count: usize,
        /// The backend's limit.
        max: usize,
    },
}

/// A topic name valid for publishing: UTF-8, non-empty, free of `+`, `#`,
/// control characters and noncharacters, and within the backend's limits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic(String);

impl Topic {
    /// Checks raw (already percent-decoded) bytes against the MQTT rules and `limits`.
    pub fn parse(bytes: Vec<u8>, limits: TopicLimits) -> Result<Topic, TopicError> {
        let name = String::from_utf8(bytes).map_err(|_| TopicError::NotUtf8)?;
        Self::check(&name, limits)?;
        Ok(Topic(name))
    }

    /// Checks a name without taking ownership; `parse` and the response topic use it.
    pub fn check(name: &str, limits: TopicLimits) -> Result<(), TopicError> {
        if name.is_empty() {
            return Err(TopicError::Empty);
        }
        if let Some(c) = name.chars().find(|c| matches!(c, '+' | '#')) {
            return Err(TopicError::Wildcard(c));
        }
        if let Some(c) = forbidden_in_mqtt_text(name) {
            return Err(TopicError::Forbidden(c));
        }
        let counted = if limits.basic_ingest { after_basic_ingest_prefix(name).unwrap_or(name) } else { name };
        if counted.len() > limits.max_bytes {
            return Err(TopicError::TooLong { len: counted.len(), max: limits.max_bytes });
        }
        if let Some(max) = limits.max_slashes {
            let count = counted.bytes().filter(|&b| b == b'/').count();
            if count > max {
                return Err(TopicError::TooDeep { count, max });
            }
        }
        Ok(())
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The levels between `/` separators, empty levels included.
    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AWS: TopicLimits = TopicLimits { max_bytes: 256, max_slashes: Some(7), basic_ingest: true };

    fn parse(s: &str) -> Result<Topic, TopicError> {
        Topic::parse(s.as_bytes().to_vec(), AWS)
    }

    #[test]
    fn plain_and_nested_names_are_valid() {
        assert_eq!(parse("home").unwrap().as_str(), "home");
        assert_eq!(parse("a/b/c").unwrap().levels().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(parse("/leading/and//empty/levels/").is_ok());
        assert!(parse("$aws/things/x").is_ok());
        assert!(parse("température/salle 1").is_ok());
    }

    #[test]
    fn wildcards_null_and_empty_are_refused() {
        assert_eq!(parse(""), Err(TopicError::Empty));
        assert_eq!(parse("a/+/b"), Err(TopicError::Wildcard('+')));
        assert_eq!(parse("a/#"), Err(TopicError::Wildcard('#')));
        assert_eq!(parse("a\0b"), Err(TopicError::Forbidden('\0')));
        assert_eq!(parse("a\tb"), Err(TopicError::Forbidden('\t')));
        assert_eq!(parse("a\u{ffff}"), Err(TopicError::Forbidden('\u{ffff}')));
        assert_eq!(Topic::parse(vec![0x61, 0xff], AWS), Err(TopicError::NotUtf8));
    }

    #[test]
    fn backend_limits_hold_at_their_edges() {
        assert!(parse(&"x".repeat(256)).is_ok());
        assert_eq!(parse(&"x".repeat(257)), Err(TopicError::TooLong { len: 257, max: 256 }));
        assert!(parse("1/2/3/4/5/6/7/8").is_ok());
        assert_eq!(parse("1/2/3/4/5/6/7/8/9"), Err(TopicError::TooDeep { count: 8, max: 7 }));
        let mqtt = TopicLimits { max_bytes: 65_535, max_slashes: None, basic_ingest: false };
        assert!(Topic::parse("1/2/3/4/5/6/7/8/9".into(), mqtt).is_ok());
    }

    #[test]
    fn basic_ingest_prefixes_count_against_neither_limit() {
        // Seven slashes after `$aws/rules/{rule}/`: ten in all.
        assert!(parse("$aws/rules/store/1/2/3/4/5/6/7/8").is_ok());
        assert_eq!(parse("$aws/rules/store/1/2/3/4/5/6/7/8/9"), Err(TopicError::TooDeep { count: 8, max: 7 }));
        let long_rule = format!("$aws/rules/{}/{}", "r".repeat(128), "x".repeat(256));
        assert!(parse(&long_rule).is_ok(), "neither is the prefix's length counted");
        assert_eq!(parse(&format!("{long_rule}x")), Err(TopicError::TooLong { len: 257, max: 256 }));
        // Not Basic Ingest: no rule name, another case, or another prefix: every slash counts.
        assert!(parse("$aws/rules//1/2/3/4/5/6/7").is_err());
        assert!(parse("$AWS/rules/store/1/2/3/4/5/6/7").is_err());
        assert!(parse("$aws/things/store/1/2/3/4/5/6").is_err());
        // The MQTT limits know no Basic Ingest.
        let mqtt = TopicLimits { max_bytes: 30, max_slashes: Some(7), basic_ingest: false };
        assert!(Topic::parse("$aws/rules/store/1/2/3/4/5/6/7/8".into(), mqtt).is_err());
    }
}
