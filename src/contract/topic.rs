//! The MQTT topic name a request publishes to, parsed once at the edge.

use std::fmt;

/// What a backend accepts in a topic name beyond the MQTT rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLimits {
    /// Longest topic name in UTF-8 bytes (MQTT allows 65 535; AWS IoT 256).
    pub max_bytes: usize,
    /// Most `/` separators in one name (AWS IoT: 7); `None` means no limit.
    pub max_slashes: Option<usize>,
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
    /// U+0000 is forbidden by MQTT 5 §1.5.4.
    #[error("the topic name contains the null character U+0000")]
    Null,
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

/// A topic name valid for publishing: UTF-8, non-empty, free of `+`, `#` and
/// U+0000, and within the backend's limits.
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
        if let Some(c) = name.chars().find(|c| matches!(c, '+' | '#' | '\0')) {
            return Err(if c == '\0' { TopicError::Null } else { TopicError::Wildcard(c) });
        }
        if name.len() > limits.max_bytes {
            return Err(TopicError::TooLong { len: name.len(), max: limits.max_bytes });
        }
        if let Some(max) = limits.max_slashes {
            let count = name.bytes().filter(|&b| b == b'/').count();
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

    const AWS: TopicLimits = TopicLimits { max_bytes: 256, max_slashes: Some(7) };

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
        assert_eq!(parse("a\0b"), Err(TopicError::Null));
        assert_eq!(Topic::parse(vec![0x61, 0xff], AWS), Err(TopicError::NotUtf8));
    }

    #[test]
    fn backend_limits_hold_at_their_edges() {
        assert!(parse(&"x".repeat(256)).is_ok());
        assert_eq!(parse(&"x".repeat(257)), Err(TopicError::TooLong { len: 257, max: 256 }));
        assert!(parse("1/2/3/4/5/6/7/8").is_ok());
        assert_eq!(parse("1/2/3/4/5/6/7/8/9"), Err(TopicError::TooDeep { count: 8, max: 7 }));
        let mqtt = TopicLimits { max_bytes: 65_535, max_slashes: None };
        assert!(Topic::parse("1/2/3/4/5/6/7/8/9".into(), mqtt).is_ok());
    }
}
