//! Values a request carries, parsed once at the edge into types that cannot
//! hold anything else: the QoS and the client id; and the characters no MQTT
//! text may hold.

use std::fmt;

/// The first character of `text` that an MQTT 5 UTF-8 string must not or
/// should not hold (§1.5.4): U+0000, the control characters U+0001–U+001F and
/// U+007F–U+009F, and the Unicode noncharacters (U+FDD0–U+FDEF, and U+xFFFE and
/// U+xFFFF of every plane). A receiver may treat the last two kinds as a
/// malformed packet, and mosquitto does: it drops the whole connection, and
/// every message in flight on it. So a topic, a property or a user property
/// holding one is refused at the edge.
pub fn forbidden_in_mqtt_text(text: &str) -> Option<char> {
    text.chars().find(|&c| {
        let code = c as u32;
        code <= 0x1f || (0x7f..=0x9f).contains(&code) || (0xfdd0..=0xfdef).contains(&code) || code & 0xfffe == 0xfffe
    })
}

/// How a message names a character: `U+0009`.
pub fn code_point(c: char) -> String {
    format!("U+{:04X}", c as u32)
}

/// An MQTT QoS level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Qos {
    /// 0: at most once.
    AtMostOnce,
    /// 1: at least once.
    AtLeastOnce,
    /// 2: exactly once.
    ExactlyOnce,
}

impl Qos {
    /// The level from its number, 0 to 2.
    pub fn from_level(level: u8) -> Option<Qos> {
        match level {
            0 => Some(Qos::AtMostOnce),
            1 => Some(Qos::AtLeastOnce),
            2 => Some(Qos::ExactlyOnce),
            _ => None,
        }
    }

    /// The level as MQTT numbers it.
    pub fn level(self) -> u8 {
        match self {
            Qos::AtMostOnce => 0,
            Qos::AtLeastOnce => 1,
            Qos::ExactlyOnce => 2,
        }
    }

    /// The level `text` names (`"0"`, `"1"`, `"2"`) if it is at most `max`.
    pub fn parse(text: &str, max: Qos) -> Option<Qos> {
        let level = match text {
            "0" | "1" | "2" => text.as_bytes()[0] - b'0',
            _ => return None,
        };
        Qos::from_level(level).filter(|&qos| qos <= max)
    }
}

impl fmt::Display for Qos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.level())
    }
}

/// Longest client id accepted, in characters.
pub const MAX_CLIENT_ID_LEN: usize = 128;

/// A client id: 1–128 of `[A-Za-z0-9_.:@-]`, as AWS IoT Core and Tencent accept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientId(String);

impl ClientId {
    /// `id` if it is a valid client id.
    pub fn parse(id: &str) -> Option<ClientId> {
        let valid = (1..=MAX_CLIENT_ID_LEN).contains(&id.len())
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-'));
        valid.then(|| ClientId(id.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<&str> for ClientId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos_parses_the_three_levels_up_to_the_backends_maximum() {
        assert_eq!(Qos::parse("0", Qos::AtLeastOnce), Some(Qos::AtMostOnce));
        assert_eq!(Qos::parse("1", Qos::AtLeastOnce), Some(Qos::AtLeastOnce));
        assert_eq!(Qos::parse("2", Qos::AtLeastOnce), None, "never turned into 1");
        assert_eq!(Qos::parse("2", Qos::ExactlyOnce), Some(Qos::ExactlyOnce));
        for bad in ["", "3", "01", "1 ", "-1", "one"] {
            assert_eq!(Qos::parse(bad, Qos::ExactlyOnce), None, "{bad:?}");
        }
        assert!((0..=2).all(|l| Qos::from_level(l).unwrap().level() == l));
    }

    #[test]
    fn client_id_boundaries() {
        assert!(ClientId::parse(&"a".repeat(MAX_CLIENT_ID_LEN)).is_some());
        assert!(ClientId::parse(&"a".repeat(MAX_CLIENT_ID_LEN + 1)).is_none());
        for bad in ["", "a b", "a/b", "a+b", "é", "a#"] {
            assert!(ClientId::parse(bad).is_none(), "{bad:?}");
        }
        assert_eq!(ClientId::parse("curl_001.x:y@z-w").unwrap(), "curl_001.x:y@z-w");
    }

    #[test]
    fn mqtt_text_refuses_controls_and_noncharacters_only() {
        for bad in ["a\0b", "tab\there", "\u{1}", "\u{1f}", "\u{7f}", "\u{85}", "\u{9f}", "\u{fdd0}", "\u{fdef}"] {
            assert!(forbidden_in_mqtt_text(bad).is_some(), "{bad:?}");
        }
        for bad in ["\u{fffe}", "\u{ffff}", "\u{1fffe}", "\u{10ffff}"] {
            assert!(forbidden_in_mqtt_text(bad).is_some(), "{bad:?}");
        }
        for good in ["", "home/kitchen", "café", "a b", "~", "\u{a0}", "\u{fdcf}", "\u{fdf0}", "\u{fffd}", "😀"] {
            assert_eq!(forbidden_in_mqtt_text(good), None, "{good:?}");
        }
        assert_eq!(forbidden_in_mqtt_text("a\tb").map(code_point).as_deref(), Some("U+0009"));
    }
}
