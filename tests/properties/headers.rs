//! AWS IoT's property headers and W3C trace context: user properties from the
//! header (in either JSON spelling), then `UserProp.N`, then a valid trace
//! context; any header value parses or is a 400 naming the header; a trace
//! context never refuses a request; two spellings of one property conflict
//! exactly when their values differ.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use mqtt_http_publish::contract::headers::{CORRELATION_DATA, PAYLOAD_FORMAT_INDICATOR, USER_PROPERTIES};
use mqtt_http_publish::contract::trace::{TRACEPARENT, TRACESTATE};
use mqtt_http_publish::contract::{parse_request, ApiError, HttpRequest, PublishRequest, RequestPath};
use mqtt_http_publish::publish::iot::IOT_LIMITS;
use proptest::prelude::*;
use proptest::sample::select;

/// Key/value pairs: user properties, or decoded query parameters.
type Pairs = Vec<(String, String)>;

/// `POST /topics/a` with the body `x`, the query's decoded pairs and these
/// headers, parsed against AWS IoT's limits.
fn publish(query: &[(String, String)], headers: &[(&'static str, HeaderValue)]) -> Result<PublishRequest, ApiError> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(*name, value.clone());
    }
    let request = HttpRequest {
        method: Method::POST,
        path: RequestPath::Encoded("/topics/a".into()),
        query: query.to_vec(),
        headers: map,
        body: Bytes::from_static(b"x"),
        source_ip: None,
        client_certificate: None,
    };
    parse_request(&request, IOT_LIMITS, IOT_LIMITS.max_payload_bytes)
}

pub(crate) fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).expect("base64 and printable ASCII are header values")
}

/// Standard base64, with its `=` padding or without: clients send both.
fn encode_base64(bytes: &[u8], padded: bool) -> String {
    if padded {
        STANDARD.encode(bytes)
    } else {
        STANDARD_NO_PAD.encode(bytes)
    }
}

/// How a client spells `x-amz-mqtt5-user-properties`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Spelling {
    /// AWS IoT's documentation: base64 of the JSON array.
    Array,
    /// boto3 and the AWS CLI: base64 of a JSON string that holds the array.
    JsonString,
}

/// `[{"k1":"v1"},{"k2":"v2"}]`, built by serde_json.
fn user_properties_json(pairs: &[(String, String)]) -> String {
    let object =
        |(k, v): &(String, String)| serde_json::Value::Object([(k.clone(), v.clone().into())].into_iter().collect());
    serde_json::Value::Array(pairs.iter().map(object).collect()).to_string()
}

pub(crate) fn user_properties_header(pairs: &[(String, String)], spelling: Spelling, padded: bool) -> HeaderValue {
    let array = user_properties_json(pairs);
    let json = match spelling {
        Spelling::Array => array,
        Spelling::JsonString => serde_json::Value::String(array).to_string(),
    };
    header_value(&encode_base64(json.as_bytes(), padded))
}

/// What the header's value says, read with serde_json's own `Value`: base64
/// (padding optional) of a JSON array, or of a JSON string holding one, whose
/// elements are objects of exactly one member with a string value.
/// MQTT 5 §1.5.4's characters a receiver may take for a malformed packet:
/// the C0 and C1 controls (and NUL) and the Unicode noncharacters.
pub(crate) fn reference_not_mqtt_text(c: char) -> bool {
    c < ' ' || ('\u{7f}'..='\u{9f}').contains(&c) || ('\u{fdd0}'..='\u{fdef}').contains(&c) || {
        let low = c as u32 % 0x10000;
        low == 0xfffe || low == 0xffff
    }
}

fn reference_mqtt_text(text: &str) -> bool {
    !text.chars().any(reference_not_mqtt_text)
}

fn reference_user_properties(value: &str) -> Option<Pairs> {
    let json = STANDARD_NO_PAD.decode(value.trim_end_matches('=')).ok()?;
    let mut parsed: serde_json::Value = serde_json::from_slice(&json).ok()?;
    if let serde_json::Value::String(inner) = parsed {
        parsed = serde_json::from_str(&inner).ok()?;
    }
    parsed
        .as_array()?
        .iter()
        .map(|element| {
            let object = element.as_object().filter(|o| o.len() == 1)?;
            let (key, value) = object.iter().next()?;
            let value = value.as_str()?;
            (reference_mqtt_text(key) && reference_mqtt_text(value)).then(|| (key.clone(), value.to_owned()))
        })
        .collect()
}

/// Text that JSON must escape or that looks like JSON, any text, or a name
/// that means something elsewhere in the request.
pub(crate) fn property_text_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => "[a-z\"\\\\{}\\[\\]:, \\u{a0}é😀\\u{fffd}]{0,8}",
        1 => any::<String>().prop_map(|s| s.chars().filter(|&c| !reference_not_mqtt_text(c)).collect()),
        1 => select(vec!["", "traceparent", "tracestate", "deviceName"]).prop_map(str::to_owned),
    ]
}

/// Text holding at least one character MQTT text may not hold, anywhere.
pub(crate) fn not_mqtt_text_strategy() -> impl Strategy<Value = String> {
    let forbidden = prop_oneof![
        Just('\0'),
        Just('\t'),
        Just('\u{1f}'),
        Just('\u{7f}'),
        Just('\u{85}'),
        Just('\u{fdd0}'),
        Just('\u{fffe}'),
        Just('\u{10ffff}'),
        (0u32..0x20).prop_map(|c| char::from_u32(c).unwrap()),
    ];
    (property_text_strategy(), forbidden, property_text_strategy()).prop_map(|(a, c, b)| format!("{a}{c}{b}"))
}

fn user_properties_strategy() -> impl Strategy<Value = Pairs> {
    prop::collection::vec((property_text_strategy(), property_text_strategy()), 0..5)
}

/// User properties in the query's spelling: the pairs in the order of their N,
/// and the `UserProp.N.Key`/`.Value` parameters that carry them, N ascending
/// with gaps, the parameters in any order.
fn query_user_properties_strategy() -> impl Strategy<Value = (Pairs, Pairs)> {
    prop::collection::btree_map(1u32..50, (property_text_strategy(), property_text_strategy()), 0..4).prop_flat_map(
        |by_n| {
            let query: Vec<(String, String)> = by_n
                .iter()
                .flat_map(|(n, (k, v))| {
                    [(format!("UserProp.{n}.Key"), k.clone()), (format!("UserProp.{n}.Value"), v.clone())]
                })
                .collect();
            (Just(by_n.into_values().collect()), Just(query).prop_shuffle())
        },
    )
}

/// Mostly `valid`, sometimes `wrong`: one field of a traceparent.
fn mostly(valid: &'static str, wrong: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![4 => valid, 1 => wrong]
}

/// Traceparents near the W3C's grammar, each field right or wrong in one way
/// (upper case, all zeros, version `ff`, a length off by one, a suffix), or
/// any printable text.
fn traceparent_strategy() -> impl Strategy<Value = String> {
    let fields = (
        mostly("00|01|cc", "ff|0g|0"),
        mostly("[0-9a-f]{32}", "0{32}|[0-9A-F]{32}|[0-9a-f]{31}"),
        mostly("[0-9a-f]{16}", "0{16}|[0-9a-f]{17}"),
        mostly("[0-9a-f]{2}", "[0-9a-f]|g0"),
        mostly("", "-|-[ -~]{0,8}|[0-9a-f]"),
    );
    prop_oneof![
        4 => fields.prop_map(|(version, trace_id, parent_id, flags, rest)| format!("{version}-{trace_id}-{parent_id}-{flags}{rest}")),
        1 => "[ -~]{0,60}",
    ]
}

/// `key=value` members, sometimes more than the W3C's 32 or 512 bytes, or any printable text.
fn tracestate_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec("[a-z][a-z0-9_*/-]{0,7}=[!-+\\--<>-~]{1,12}", 1..40).prop_map(|m| m.join(",")),
        1 => "[ -~]{0,40}",
    ]
}

/// W3C Trace Context's `traceparent`: `version-traceid-parentid-flags` in
/// lower-case hex; version `ff` and all-zero ids are invalid; version `00`
/// ends after the flags, a later version may go on after a `-`.
fn reference_traceparent(value: &str) -> bool {
    let lower_hex = |s: &str, len: usize| s.len() == len && s.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'));
    let not_zero = |s: &str| s.chars().any(|c| c != '0');
    let mut fields = value.splitn(5, '-');
    let (Some(version), Some(trace_id), Some(parent_id), Some(flags)) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return false;
    };
    let more = fields.next().is_some();
    value.chars().all(|c| ('!'..='~').contains(&c))
        && lower_hex(version, 2)
        && version != "ff"
        && !(version == "00" && more)
        && lower_hex(trace_id, 32)
        && not_zero(trace_id)
        && lower_hex(parent_id, 16)
        && not_zero(parent_id)
        && lower_hex(flags, 2)
}

/// A `tracestate` every vendor must pass on (W3C): 1 to 32 `key=value`
/// members with distinct keys (empty members and spaces or tabs around each
/// allowed), its members in at most 512 bytes. What travels on: the members
/// alone, joined with `,`.
fn reference_tracestate(value: &str) -> Option<String> {
    let lc_alpha = |c: char| c.is_ascii_lowercase();
    let key_rest = |c: char| lc_alpha(c) || c.is_ascii_digit() || "_-*/".contains(c);
    let run = |text: &str, first: &dyn Fn(char) -> bool, max_len: usize| {
        let mut chars = text.chars();
        chars.next().is_some_and(first) && chars.all(key_rest) && text.chars().count() <= max_len
    };
    let valid_key = |key: &str| match key.find('@') {
        None => run(key, &lc_alpha, 256),
        Some(at) => {
            run(&key[..at], &|c: char| lc_alpha(c) || c.is_ascii_digit(), 241) && run(&key[at + 1..], &lc_alpha, 14)
        }
    };
    let non_blank = |c: char| ('!'..='~').contains(&c) && c != ',' && c != '=';
    let valid_value = |v: &str| {
        let count = v.chars().count();
        (1..=256).contains(&count)
            && v.chars().all(|c| c == ' ' || non_blank(c))
            && v.chars().last().is_some_and(non_blank)
    };
    let mut keys = std::collections::HashSet::new();
    let mut members = Vec::new();
    for member in value.split(',') {
        let member = member.trim_matches(|c| c == ' ' || c == '\t');
        if member.is_empty() {
            continue;
        }
        let eq = member.find('=')?;
        let (key, val) = (&member[..eq], &member[eq + 1..]);
        if !valid_key(key) || !valid_value(val) || !keys.insert(key) {
            return None;
        }
        members.push(member);
    }
    let forwarded = members.join(",");
    ((1..=32).contains(&members.len()) && forwarded.len() <= 512).then_some(forwarded)
}

/// The user properties a trace context adds: a single valid `traceparent`,
/// then the `tracestate` headers joined by `,` if that is one to pass on.
fn reference_trace(traceparents: &[HeaderValue], tracestates: &[HeaderValue]) -> Pairs {
    let [traceparent] = traceparents else { return Vec::new() };
    let Some(traceparent) = traceparent.to_str().ok().filter(|t| reference_traceparent(t)) else {
        return Vec::new();
    };
    let mut props = vec![(TRACEPARENT.to_owned(), traceparent.to_owned())];
    let states: Option<Vec<&str>> = tracestates.iter().map(|v| v.to_str().ok()).collect();
    if let Some(state) = states.and_then(|s| reference_tracestate(&s.join(","))) {
        props.push((TRACESTATE.to_owned(), state));
    }
    props
}

/// What a client may put in any header: printable text, any bytes a header
/// value may hold, base64 of JSON-like text or of a valid user property array
/// whole or cut anywhere, and the payload format indicator's names and near misses.
fn header_value_strategy() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        "[ -~]{0,40}".prop_map(|t| header_value(&t)),
        prop::collection::vec(any::<u8>(), 0..40)
            .prop_filter_map("not a header value", |b| HeaderValue::from_bytes(&b).ok()),
        "[\\[\\]{}\":, a-z0-9\\\\]{0,24}".prop_map(|json| header_value(&STANDARD.encode(json))),
        (user_properties_strategy(), select(vec![Spelling::Array, Spelling::JsonString]), any::<bool>())
            .prop_map(|(pairs, spelling, padded)| user_properties_header(&pairs, spelling, padded)),
        (user_properties_strategy(), any::<prop::sample::Index>(), any::<bool>()).prop_map(|(pairs, cut, padded)| {
            let json = user_properties_json(&pairs);
            header_value(&encode_base64(&json.as_bytes()[..cut.index(json.len() + 1)], padded))
        }),
        select(vec!["UTF8_DATA", "UNSPECIFIED_BYTES", "utf8_data", " UTF8_DATA", "UTF8_DATA ", "1", ""])
            .prop_map(header_value),
    ]
}

/// Seconds, often one of a few so that two draws agree.
fn expiry_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![select(vec![0, 1, 3600, u32::MAX]), any::<u32>()]
}

/// `name` in upper case where `upper` says so, else lower: query names match in any case.
fn recase(name: &str, upper: &[bool]) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| if upper[i % upper.len()] { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() })
        .collect()
}

/// Both values given, and different.
fn differ<T: PartialEq>(pair: &(Option<T>, Option<T>)) -> bool {
    matches!(pair, (Some(a), Some(b)) if a != b)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn header_user_properties_come_first_then_the_query_ones_then_the_trace_context(
        header_pairs in user_properties_strategy(),
        padded in any::<bool>(),
        (query_pairs, query) in query_user_properties_strategy(),
        traceparent in prop::option::of(traceparent_strategy()),
        tracestate in prop::option::of(tracestate_strategy()),
    ) {
        let traceparents: Vec<HeaderValue> = traceparent.iter().map(|t| header_value(t)).collect();
        let tracestates: Vec<HeaderValue> = tracestate.iter().map(|s| header_value(s)).collect();
        let expected: Vec<(String, String)> =
            header_pairs.iter().chain(&query_pairs).cloned().chain(reference_trace(&traceparents, &tracestates)).collect();
        // GIVEN the same pairs in AWS IoT's spelling and in boto3's, THEN both read the same.
        for spelling in [Spelling::Array, Spelling::JsonString] {
            let mut headers = vec![(USER_PROPERTIES, user_properties_header(&header_pairs, spelling, padded))];
            headers.extend(traceparents.iter().map(|v| (TRACEPARENT, v.clone())));
            headers.extend(tracestates.iter().map(|v| (TRACESTATE, v.clone())));
            let parsed = publish(&query, &headers);
            prop_assert!(parsed.is_ok(), "{:?}: {:?}", spelling, parsed);
            prop_assert_eq!(&parsed.unwrap().options.properties.user_properties, &expected, "{:?}", spelling);
        }
    }

    #[test]
    fn the_correlation_data_header_carries_any_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..64),
        padded in any::<bool>(),
    ) {
        let parsed = publish(&[], &[(CORRELATION_DATA, header_value(&encode_base64(&bytes, padded)))]);
        prop_assert_eq!(parsed.map(|p| p.options.properties.correlation_data), Ok(Some(Bytes::from(bytes))));
    }

    #[test]
    fn any_value_of_a_property_header_is_read_or_is_a_400_naming_the_header(
        name in select(vec![USER_PROPERTIES, CORRELATION_DATA, PAYLOAD_FORMAT_INDICATOR]),
        values in prop::collection::vec(header_value_strategy(), 1..3),
    ) {
        let headers: Vec<(&'static str, HeaderValue)> = values.iter().map(|v| (name, v.clone())).collect();
        match publish(&[], &headers) {
            Ok(parsed) => {
                // A header sent twice may also come joined with "," (API Gateway's HTTP API).
                let parts: Vec<&str> = values
                    .iter()
                    .flat_map(|v| v.to_str().expect("an accepted value is ASCII").split(','))
                    .map(|p| p.trim_matches([' ', '\t']))
                    .collect();
                prop_assert!(parts.iter().all(|v| *v == parts[0]), "different values of {} were accepted", name);
                let value = parts[0];
                let p = parsed.options.properties;
                if name == PAYLOAD_FORMAT_INDICATOR {
                    let indicator = ["UNSPECIFIED_BYTES", "UTF8_DATA"].iter().position(|n| *n == value);
                    prop_assert!(indicator.is_some(), "{:?} was accepted", value);
                    prop_assert_eq!(p.payload_format_indicator.map(usize::from), indicator);
                } else if name == CORRELATION_DATA {
                    let data = p.correlation_data.expect("accepted correlation data is set");
                    prop_assert_eq!(STANDARD_NO_PAD.encode(&data), value.trim_end_matches('='), "encoding undoes decoding");
                } else {
                    prop_assert_eq!(Some(p.user_properties), reference_user_properties(value), "{:?}", value);
                }
            }
            Err(error) => {
                prop_assert_eq!(error.status().as_u16(), 400, "{:?}", error);
                prop_assert!(error.message().contains(name), "{}: {}", name, error.message());
            }
        }
    }

    #[test]
    fn a_trace_context_never_refuses_a_request_and_travels_only_when_valid(
        traceparents in prop_oneof![
            3 => traceparent_strategy().prop_map(|t| vec![header_value(&t)]),
            1 => prop::collection::vec(header_value_strategy(), 0..3),
        ],
        tracestates in prop::collection::vec(
            prop_oneof![3 => tracestate_strategy().prop_map(|s| header_value(&s)), 1 => header_value_strategy()]
                // An empty header adds an empty list member or none, both W3C-valid:
                // how it joins is not a property worth pinning.
                .prop_filter("an empty tracestate header", |v| !v.is_empty()),
            0..3,
        ),
    ) {
        let headers: Vec<(&'static str, HeaderValue)> = traceparents
            .iter()
            .map(|v| (TRACEPARENT, v.clone()))
            .chain(tracestates.iter().map(|v| (TRACESTATE, v.clone())))
            .collect();
        let parsed = publish(&[], &headers);
        prop_assert!(parsed.is_ok(), "{:?}", parsed);
        prop_assert_eq!(parsed.unwrap().options.properties.user_properties, reference_trace(&traceparents, &tracestates));
    }

    #[test]
    fn a_property_in_both_spellings_conflicts_exactly_when_the_values_differ(
        indicator in (prop::option::of(0u8..=1), prop::option::of(0u8..=1)),
        correlation in (prop::option::of("[ab]{0,2}"), prop::option::of("[ab]{0,2}")),
        expiry in (prop::option::of(expiry_strategy()), prop::option::of(expiry_strategy())),
        upper in prop::collection::vec(any::<bool>(), 1..8),
    ) {
        let mut query = Vec::new();
        let mut headers = Vec::new();
        if let Some(i) = indicator.0 {
            query.push((recase("PayloadFormatIndicator", &upper), i.to_string()));
        }
        if let Some(i) = indicator.1 {
            headers.push((PAYLOAD_FORMAT_INDICATOR, header_value(["UNSPECIFIED_BYTES", "UTF8_DATA"][usize::from(i)])));
        }
        if let Some(c) = &correlation.0 {
            query.push((recase("CorrelationData", &upper), c.clone()));
        }
        if let Some(c) = &correlation.1 {
            headers.push((CORRELATION_DATA, header_value(&STANDARD.encode(c))));
        }
        if let Some(e) = expiry.0 {
            query.push((recase("MessageExpiryInterval", &upper), e.to_string()));
        }
        if let Some(e) = expiry.1 {
            query.push((recase("messageExpiry", &upper), e.to_string()));
        }
        let conflict = differ(&indicator) || differ(&correlation) || differ(&expiry);
        match publish(&query, &headers) {
            Err(error) => prop_assert!(conflict && error.code() == "conflicting_parameter", "{:?}", error),
            Ok(parsed) => {
                prop_assert!(!conflict, "{:?} {:?} were accepted", query, headers);
                let p = parsed.options.properties;
                prop_assert_eq!(p.payload_format_indicator, indicator.0.or(indicator.1));
                prop_assert_eq!(p.correlation_data, correlation.0.or(correlation.1).map(Bytes::from));
                prop_assert_eq!(p.message_expiry_interval, expiry.0.or(expiry.1));
            }
        }
    }
}
