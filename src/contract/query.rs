//! The query string: QoS, retain, identity hints and MQTT 5 properties.
//!
//! Names match case-insensitively (`qos`, `QoS`); unknown names are ignored; a
//! name given twice with different values is refused, as is a parameter
//! disagreeing with its AWS IoT spelling (`retain` for `retained`,
//! `messageExpiry` for `MessageExpiryInterval`; `contentType` and
//! `responseTopic` are the same names in another case).

use std::collections::BTreeMap;

use bytes::Bytes;
use percent_encoding::percent_decode;

use super::error::{ApiError, ErrorCode};
use super::topic::{Topic, TopicLimits};
use super::values::{code_point, forbidden_in_mqtt_text, ClientId, Qos};

/// The MQTT 5 publish properties a caller may set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// 0: unspecified bytes, 1: UTF-8 text (then the payload must be UTF-8).
    pub payload_format_indicator: Option<u8>,
    /// Seconds the broker keeps the message for subscribers not yet served.
    pub message_expiry_interval: Option<u32>,
    /// MIME type of the payload.
    pub content_type: Option<String>,
    /// Topic a responder should answer on.
    pub response_topic: Option<String>,
    /// Opaque bytes that tie a response to its request.
    pub correlation_data: Option<Bytes>,
    /// Key/value pairs in the order of their `N`; keys may repeat.
    pub user_properties: Vec<(String, String)>,
}

/// Everything the query says about one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOptions {
    /// MQTT QoS; 1 unless given.
    pub qos: Qos,
    /// Publish as the topic's retained message.
    pub retain: bool,
    /// The caller's `client_id`, checked for form but not yet for identity.
    pub client_id: Option<ClientId>,
    /// The caller's `username`; a Basic header's name takes precedence.
    pub username: Option<String>,
    /// MQTT 5 properties, passed through to the backend.
    pub properties: Properties,
    /// `ResponseTimeout`: seconds to wait for the reply, 1 to [`MAX_RESPONSE_TIMEOUT`]
    /// (an entry point may allow less); `None` answers once the broker accepts the message.
    pub response_timeout: Option<u32>,
}

impl PublishOptions {
    /// How a request that waits for its reply names the reply's topic, for its
    /// fingerprint; `None` for a request that does not wait.
    pub fn waits(&self) -> Option<super::Waits<'_>> {
        self.response_timeout?;
        Some(match (&self.properties.response_topic, &self.client_id) {
            (None, Some(client_id)) => super::Waits::DefaultTopicOf(client_id),
            _ => super::Waits::Unnamed,
        })
    }
}

/// The longest `ResponseTimeout` the contract allows (`serve`'s bound; the
/// Lambda function allows what its time budget leaves, at most 25).
pub const MAX_RESPONSE_TIMEOUT: u32 = 60;

/// Decodes one `application/x-www-form-urlencoded` component: `+` is a space and
/// `%XX` a byte, as browsers, `curl --data-urlencode` and Python's `urlencode` send it.
pub fn decode_component(raw: &str) -> Result<String, ApiError> {
    let spaced = raw.replace('+', " ");
    percent_decode(spaced.as_bytes()).decode_utf8().map(|s| s.into_owned()).map_err(|_| {
        ApiError::bad_request(ErrorCode::InvalidQuery, format!("query component {raw:?} does not decode to UTF-8"))
    })
}

/// Splits and decodes a raw query string (`a=1&b=2`) into name/value pairs, in order.
pub fn decode_query(raw: &str) -> Result<Vec<(String, String)>, ApiError> {
    raw.split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            Ok((decode_component(name)?, decode_component(value)?))
        })
        .collect()
}

/// One user property's halves as the query gives them.
#[derive(Default)]
struct UserPropSlot {
    key: Option<String>,
    value: Option<String>,
}

/// Parses decoded query pairs. `max_qos` and `topic_limits` are the backend's.
pub fn parse_options(
    pairs: &[(String, String)],
    max_qos: Qos,
    topic_limits: TopicLimits,
) -> Result<PublishOptions, ApiError> {
    let (scalars, user_props) = gather(pairs)?;
    Ok(PublishOptions {
        qos: scalars.get("qos").map_or(Ok(Qos::AtLeastOnce.min(max_qos)), |v| parse_qos(v, max_qos))?,
        retain: scalars.get("retained").map_or(Ok(false), |v| parse_retain(v))?,
        client_id: scalars.get("client_id").map(|v| parse_client_id(v)).transpose()?,
        username: scalars.get("username").map(|&v| v.to_owned()),
        properties: Properties {
            payload_format_indicator: scalars
                .get("payloadformatindicator")
                .map(|v| parse_payload_format_indicator(v))
                .transpose()?,
            message_expiry_interval: scalars.get("messageexpiryinterval").map(|v| parse_expiry(v)).transpose()?,
            content_type: scalars.get("contenttype").map(|v| parse_content_type(v)).transpose()?,
            response_topic: scalars.get("responsetopic").map(|v| parse_response_topic(v, topic_limits)).transpose()?,
            correlation_data: scalars.get("correlationdata").map(|&v| Bytes::copy_from_slice(v.as_bytes())),
            user_properties: pair_user_properties(user_props)?,
        },
        response_timeout: scalars.get("responsetimeout").map(|v| parse_response_timeout(v)).transpose()?,
    })
}

/// Each parameter read, by its canonical name, and the user property halves by
/// their N: a name given twice must carry the same value both times.
type Gathered<'a> = (BTreeMap<&'static str, &'a str>, BTreeMap<u32, UserPropSlot>);

fn gather(pairs: &[(String, String)]) -> Result<Gathered<'_>, ApiError> {
    let conflict = |name: &str| {
        ApiError::bad_request(ErrorCode::ConflictingParameter, format!("{name} is given twice with different values"))
    };
    let mut scalars: BTreeMap<&'static str, (&str, &str)> = BTreeMap::new();
    let mut user_props: BTreeMap<u32, UserPropSlot> = BTreeMap::new();
    for (name, value) in pairs {
        let lower = name.to_ascii_lowercase();
        if let Some(rest) = lower.strip_prefix(USER_PROPERTY_PREFIX) {
            let (index, half) = parse_user_prop_name(name, rest)?;
            let slot = user_props.entry(index).or_default();
            let field = if half == Half::Key { &mut slot.key } else { &mut slot.value };
            match field {
                Some(existing) if existing != value => return Err(conflict(name)),
                _ => *field = Some(value.clone()),
            }
        } else if let Some(canonical) = canonical_name(&lower) {
            match scalars.insert(canonical, (name, value)) {
                Some((first, existing)) if !same_value(canonical, existing, value) => {
                    let message = if first == name {
                        format!("{name} is given more than once with different values")
                    } else {
                        format!("{first} and {name} are the same parameter, given with different values")
                    };
                    return Err(ApiError::bad_request(ErrorCode::ConflictingParameter, message));
                }
                _ => {}
            }
        }
    }
    Ok((scalars.into_iter().map(|(canonical, (_, value))| (canonical, value)).collect(), user_props))
}

/// Whether two values of the parameter `canonical` say the same: the numbers
/// whose parsers take leading zeros by their value (`0100` is `100`),
/// `retained` in any case (`TRUE` is `true`), anything else by its text (`qos`
/// and `PayloadFormatIndicator` take no leading zero, so `01` is no `1`).
fn same_value(canonical: &str, a: &str, b: &str) -> bool {
    fn number(v: &str) -> Option<&str> {
        (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())).then(|| v.trim_start_matches('0'))
    }
    a == b
        || match canonical {
            "messageexpiryinterval" | "responsetimeout" => number(a).is_some_and(|a| number(b) == Some(a)),
            "retained" => a.eq_ignore_ascii_case(b),
            _ => false,
        }
}

pub(crate) fn parse_qos(v: &str, max_qos: Qos) -> Result<Qos, ApiError> {
    Qos::parse(v, max_qos).ok_or_else(|| {
        let allowed = match max_qos {
            Qos::ExactlyOnce => "0, 1 or 2",
            Qos::AtLeastOnce => "0 or 1",
            Qos::AtMostOnce => "0 (the broker's Maximum QoS)",
        };
        ApiError::bad_request(ErrorCode::InvalidQos, format!("qos must be {allowed}, not {v:?}"))
    })
}

fn parse_retain(v: &str) -> Result<bool, ApiError> {
    match v {
        v if v.eq_ignore_ascii_case("true") => Ok(true),
        v if v.eq_ignore_ascii_case("false") => Ok(false),
        v => {
            Err(ApiError::bad_request(ErrorCode::InvalidRetained, format!("retained must be true or false, not {v:?}")))
        }
    }
}

fn parse_client_id(v: &str) -> Result<ClientId, ApiError> {
    ClientId::parse(v).ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::InvalidClientId,
            format!("client_id must be 1 to 128 characters of A-Z a-z 0-9 _ . : @ -, not {v:?}"),
        )
    })
}

fn parse_payload_format_indicator(v: &str) -> Result<u8, ApiError> {
    match v {
        "0" => Ok(0),
        "1" => Ok(1),
        v => Err(ApiError::bad_request(
            ErrorCode::InvalidPayloadFormatIndicator,
            format!("PayloadFormatIndicator must be 0 or 1, not {v:?}"),
        )),
    }
}

fn parse_expiry(v: &str) -> Result<u32, ApiError> {
    v.parse::<u32>().ok().filter(|_| v.bytes().all(|b| b.is_ascii_digit())).ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::InvalidMessageExpiryInterval,
            format!("MessageExpiryInterval must be an integer from 0 to 4294967295, not {v:?}"),
        )
    })
}

fn parse_response_timeout(v: &str) -> Result<u32, ApiError> {
    v.parse::<u32>()
        .ok()
        .filter(|s| v.bytes().all(|b| b.is_ascii_digit()) && (1..=MAX_RESPONSE_TIMEOUT).contains(s))
        .ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::InvalidResponseTimeout,
                format!(
                    "ResponseTimeout must be a whole number of seconds from 1 to {MAX_RESPONSE_TIMEOUT}, not {v:?}"
                ),
            )
        })
}

pub(crate) fn parse_response_topic(v: &str, topic_limits: TopicLimits) -> Result<String, ApiError> {
    Topic::check(v, topic_limits).map_err(|e| {
        ApiError::bad_request(ErrorCode::InvalidResponseTopic, format!("ResponseTopic is not a valid topic name: {e}"))
    })?;
    Ok(v.to_owned())
}

/// Refuses text holding a character no MQTT text may hold
/// ([`forbidden_in_mqtt_text`]): a broker would drop the connection the message
/// travels on, and every other message in flight on it. `name` says what the
/// text is, for the 400's message; it is only made when the text is refused.
pub fn check_mqtt_text(text: &str, name: impl FnOnce() -> String, code: ErrorCode) -> Result<(), ApiError> {
    match forbidden_in_mqtt_text(text) {
        None => Ok(()),
        Some(c) => Err(ApiError::bad_request(
            code,
            format!(
                "{} holds {}, which MQTT text may not hold (a control character or a noncharacter)",
                name(),
                code_point(c)
            ),
        )),
    }
}

pub(crate) fn parse_content_type(v: &str) -> Result<String, ApiError> {
    check_mqtt_text(v, || "ContentType".into(), ErrorCode::InvalidContentType)?;
    Ok(v.to_owned())
}

/// The user properties in the order of their N; each needs both halves, of MQTT text.
fn pair_user_properties(user_props: BTreeMap<u32, UserPropSlot>) -> Result<Vec<(String, String)>, ApiError> {
    user_props
        .into_iter()
        .map(|(n, slot)| match (slot.key, slot.value) {
            (Some(k), Some(v)) => {
                check_mqtt_text(&k, || format!("UserProp.{n}.Key"), ErrorCode::InvalidUserProperty)?;
                check_mqtt_text(&v, || format!("UserProp.{n}.Value"), ErrorCode::InvalidUserProperty)?;
                Ok((k, v))
            }
            (Some(_), None) => Err(ApiError::bad_request(
                ErrorCode::InvalidUserProperty,
                format!("UserProp.{n}.Key has no UserProp.{n}.Value"),
            )),
            _ => Err(ApiError::bad_request(
                ErrorCode::InvalidUserProperty,
                format!("UserProp.{n}.Value has no UserProp.{n}.Key"),
            )),
        })
        .collect()
}

/// Every query parameter read (lower-cased: names match case-insensitively),
/// with the one name it is read as (`retain` is AWS IoT's `retained`).
/// `UserProp.N.Key` and `UserProp.N.Value` ([`USER_PROPERTY_PREFIX`]) come on top.
pub const PARAMETERS: [(&str, &str); 12] = [
    ("qos", "qos"),
    ("retained", "retained"),
    ("retain", "retained"),
    ("client_id", "client_id"),
    ("username", "username"),
    ("responsetopic", "responsetopic"),
    ("correlationdata", "correlationdata"),
    ("contenttype", "contenttype"),
    ("payloadformatindicator", "payloadformatindicator"),
    ("messageexpiryinterval", "messageexpiryinterval"),
    ("messageexpiry", "messageexpiryinterval"),
    ("responsetimeout", "responsetimeout"),
];

/// The lower-cased prefix of the user property parameters, `UserProp.N.Key` and `UserProp.N.Value`.
pub const USER_PROPERTY_PREFIX: &str = "userprop.";

fn canonical_name(lower: &str) -> Option<&'static str> {
    PARAMETERS.iter().find(|(name, _)| *name == lower).map(|(_, canonical)| *canonical)
}

#[derive(PartialEq, Eq)]
enum Half {
    Key,
    Value,
}

/// `N.key` or `N.value` (already lower-cased) with N a positive integer.
fn parse_user_prop_name(original: &str, rest: &str) -> Result<(u32, Half), ApiError> {
    let invalid = || {
        ApiError::bad_request(
            ErrorCode::InvalidUserProperty,
            format!("{original:?} is not UserProp.N.Key or UserProp.N.Value with N a positive integer"),
        )
    };
    let (n, half) = rest.split_once('.').ok_or_else(invalid)?;
    let half = match half {
        "key" => Half::Key,
        "value" => Half::Value,
        _ => return Err(invalid()),
    };
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let n: u32 = n.parse().map_err(|_| invalid())?;
    if n == 0 {
        return Err(invalid());
    }
    Ok((n, half))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: TopicLimits = TopicLimits { max_bytes: 256, max_slashes: Some(7), basic_ingest: true };

    fn parse(query: &str) -> Result<PublishOptions, ApiError> {
        parse_options(&decode_query(query).unwrap(), Qos::AtLeastOnce, LIMITS)
    }

    fn code(query: &str) -> &'static str {
        parse(query).unwrap_err().code().as_str()
    }

    #[test]
    fn defaults_are_qos_1_not_retained() {
        let o = parse("").unwrap();
        assert_eq!((o.qos, o.retain, o.client_id, o.username), (Qos::AtLeastOnce, false, None, None));
        assert_eq!(o.properties, Properties::default());
    }

    #[test]
    fn the_product_page_query_parses() {
        let o = parse("qos=1&client_id=curl-x&retained=true&username=sample-user").unwrap();
        assert_eq!((o.qos, o.retain), (Qos::AtLeastOnce, true));
        assert_eq!(o.client_id.as_ref().map(ClientId::as_str), Some("curl-x"));
        assert_eq!(o.username.as_deref(), Some("sample-user"));
    }

    #[test]
    fn names_are_case_insensitive_and_unknown_names_ignored() {
        let o = parse("QoS=0&RETAIN=TRUE&Client_ID=a&foo=bar&contenttype=text%2Fplain").unwrap();
        assert_eq!((o.qos, o.retain, o.client_id.as_ref().map(ClientId::as_str)), (Qos::AtMostOnce, true, Some("a")));
        assert_eq!(o.properties.content_type.as_deref(), Some("text/plain"));
    }

    #[test]
    fn illegal_qos_and_retained_are_400() {
        for q in ["qos=2", "qos=3", "qos=", "qos=01", "qos=-1", "qos=one"] {
            assert_eq!(code(q), "invalid_qos", "{q}");
        }
        assert_eq!(
            parse_options(&decode_query("qos=2").unwrap(), Qos::ExactlyOnce, LIMITS).unwrap().qos,
            Qos::ExactlyOnce
        );
        for q in ["retained=yes", "retained=1", "retained=", "retain=maybe"] {
            assert_eq!(code(q), "invalid_retained", "{q}");
        }
    }

    #[test]
    fn repeated_parameters_must_agree() {
        assert_eq!(parse("qos=1&qos=1").unwrap().qos, Qos::AtLeastOnce);
        assert_eq!(code("qos=1&QOS=0"), "conflicting_parameter");
        assert_eq!(code("retained=true&retain=false"), "conflicting_parameter");
        assert!(parse("retained=true&retain=true").unwrap().retain);
        let differs = parse("messageExpiry=5&MessageExpiryInterval=6").unwrap_err();
        assert_eq!(differs.code(), "conflicting_parameter");
        assert!(differs.message().contains("messageExpiry and MessageExpiryInterval"), "{}", differs.message());
        for same in ["messageExpiry=0100&MessageExpiryInterval=100", "retain=TRUE&retained=true", "qos=1&QoS=1"] {
            assert!(parse(same).is_ok(), "{same}: the same value, spelled otherwise");
        }
        for differ in ["qos=01&QoS=1", "qos=1&QoS=01"] {
            assert_eq!(code(differ), "conflicting_parameter", "{differ}: in either order");
        }
        assert_eq!(code("messageExpiry=&MessageExpiryInterval=0"), "conflicting_parameter", "empty is no number");
        assert_eq!(
            parse("messageExpiry=5&MessageExpiryInterval=5").unwrap().properties.message_expiry_interval,
            Some(5)
        );
    }

    #[test]
    fn the_aws_iot_query_spelling_is_read() {
        let o =
            parse("qos=1&retain=false&contentType=application%2Fjson&responseTopic=home%2Freplies&messageExpiry=3600")
                .unwrap();
        assert_eq!(o.properties.content_type.as_deref(), Some("application/json"));
        assert_eq!(o.properties.response_topic.as_deref(), Some("home/replies"));
        assert_eq!(o.properties.message_expiry_interval, Some(3600));
    }

    #[test]
    fn client_id_charset_and_length_are_checked() {
        assert!(parse("client_id=a.b:c@d-e_f").is_ok());
        assert!(parse(&format!("client_id={}", "x".repeat(128))).is_ok());
        assert_eq!(code(&format!("client_id={}", "x".repeat(129))), "invalid_client_id");
        assert_eq!(code("client_id="), "invalid_client_id");
        assert_eq!(code("client_id=a%20b"), "invalid_client_id");
        assert_eq!(code("client_id=a/b"), "invalid_client_id");
    }

    #[test]
    fn every_mqtt5_property_is_read() {
        let o = parse(
            "ResponseTopic=sample%2Fresponse%2Ftopic&CorrelationData=SN0001&ContentType=application%2Fjson\
             &PayloadFormatIndicator=1&MessageExpiryInterval=3600\
             &UserProp.2.Key=b&UserProp.1.Value=v1&UserProp.1.Key=a&UserProp.2.Value=v2&UserProp.10.Key=a&UserProp.10.Value=v3",
        )
        .unwrap();
        let p = o.properties;
        assert_eq!(p.response_topic.as_deref(), Some("sample/response/topic"));
        assert_eq!(p.correlation_data.as_deref(), Some(&b"SN0001"[..]));
        assert_eq!(p.content_type.as_deref(), Some("application/json"));
        assert_eq!(p.payload_format_indicator, Some(1));
        assert_eq!(p.message_expiry_interval, Some(3600));
        let props: Vec<(&str, &str)> = p.user_properties.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(props, [("a", "v1"), ("b", "v2"), ("a", "v3")], "order of N, repeated keys kept");
    }

    #[test]
    fn response_timeout_is_a_whole_number_of_seconds_from_1_to_60() {
        assert_eq!(parse("").unwrap().response_timeout, None);
        assert_eq!(parse("ResponseTimeout=1").unwrap().response_timeout, Some(1));
        assert_eq!(parse("responsetimeout=60").unwrap().response_timeout, Some(60));
        for bad in ["0", "61", "-1", "+5", "1.5", "", "ten", "4294967296"] {
            assert_eq!(code(&format!("ResponseTimeout={bad}")), "invalid_response_timeout", "{bad:?}");
        }
    }

    #[test]
    fn property_values_are_checked() {
        assert_eq!(
            parse("MessageExpiryInterval=4294967295").unwrap().properties.message_expiry_interval,
            Some(u32::MAX)
        );
        for q in ["MessageExpiryInterval=4294967296", "MessageExpiryInterval=-1", "MessageExpiryInterval=+5"] {
            assert_eq!(code(q), "invalid_message_expiry_interval", "{q}");
        }
        assert_eq!(code("PayloadFormatIndicator=2"), "invalid_payload_format_indicator");
        assert_eq!(code("ResponseTopic=a%2F%2B"), "invalid_response_topic");
        assert_eq!(code("ResponseTopic="), "invalid_response_topic");
    }

    #[test]
    fn user_properties_need_both_halves_and_a_positive_index() {
        assert_eq!(code("UserProp.1.Key=a"), "invalid_user_property");
        assert_eq!(code("UserProp.1.Value=a"), "invalid_user_property");
        assert_eq!(code("UserProp.0.Key=a&UserProp.0.Value=b"), "invalid_user_property");
        assert_eq!(code("UserProp.x.Key=a"), "invalid_user_property");
        assert_eq!(code("UserProp.1.Name=a"), "invalid_user_property");
        assert_eq!(code("UserProp.1.Key=a&UserProp.1.Key=b&UserProp.1.Value=c"), "conflicting_parameter");
    }

    #[test]
    fn form_decoding_turns_plus_into_space_and_keeps_encoded_plus() {
        assert_eq!(
            decode_query("a=hello+world&b=1%2B1&c").unwrap(),
            [
                ("a".to_owned(), "hello world".to_owned()),
                ("b".to_owned(), "1+1".to_owned()),
                ("c".to_owned(), String::new()),
            ]
        );
        assert_eq!(decode_query("a=%ff").unwrap_err().code(), "invalid_query");
    }
}
