//! AWS IoT Core's spelling of the MQTT 5 properties that travel in headers, as
//! its `Publish` API takes them (and boto3's `iot-data` client sends them):
//!
//! - `x-amz-mqtt5-user-properties`: base64 of a JSON array of one-member
//!   objects, `[{"deviceName":"alpha"},{"deviceCnt":"45"}]`;
//! - `x-amz-mqtt5-correlation-data`: base64 of the bytes;
//! - `x-amz-mqtt5-payload-format-indicator`: `UNSPECIFIED_BYTES` or `UTF8_DATA`.
//!
//! They merge with the query's Tencent spelling: user properties from the header
//! come first, then `UserProp.N`; a property given both ways must agree.

use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use bytes::Bytes;
use http::HeaderMap;
use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, Visitor};

use super::error::{ApiError, ErrorCode};
use super::query::{check_mqtt_text, Properties};

/// The user properties header.
pub const USER_PROPERTIES: &str = "x-amz-mqtt5-user-properties";
/// The correlation data header.
pub const CORRELATION_DATA: &str = "x-amz-mqtt5-correlation-data";
/// The payload format indicator header.
pub const PAYLOAD_FORMAT_INDICATOR: &str = "x-amz-mqtt5-payload-format-indicator";

/// Standard base64, with or without its `=` padding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// AWS IoT's form of user properties: a JSON array of one-member objects, in
/// order, keys may repeat (the header carries it base64-encoded).
pub fn user_properties_json(pairs: &[(String, String)]) -> String {
    let array: Vec<serde_json::Value> = pairs
        .iter()
        .map(|(k, v)| serde_json::Value::Object([(k.clone(), v.clone().into())].into_iter().collect()))
        .collect();
    serde_json::Value::Array(array).to_string()
}

/// The `x-amz-mqtt5-user-properties` value of `pairs`: what [`merge`] reads back.
pub fn user_properties_header(pairs: &[(String, String)]) -> String {
    base64::engine::general_purpose::STANDARD.encode(user_properties_json(pairs))
}

/// The `x-amz-mqtt5-payload-format-indicator` value of an indicator.
pub fn payload_format_indicator_header(indicator: u8) -> &'static str {
    if indicator == 1 {
        "UTF8_DATA"
    } else {
        "UNSPECIFIED_BYTES"
    }
}

/// Adds the properties the `x-amz-mqtt5-*` headers carry to those of the query.
pub fn merge(headers: &HeaderMap, properties: &mut Properties) -> Result<(), ApiError> {
    if let Some(value) = single(headers, PAYLOAD_FORMAT_INDICATOR, ErrorCode::InvalidPayloadFormatIndicator)? {
        let indicator = match value {
            "UNSPECIFIED_BYTES" => 0,
            "UTF8_DATA" => 1,
            other => {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidPayloadFormatIndicator,
                    format!("{PAYLOAD_FORMAT_INDICATOR} must be UNSPECIFIED_BYTES or UTF8_DATA, not {other:?}"),
                ))
            }
        };
        agree(&mut properties.payload_format_indicator, indicator, "PayloadFormatIndicator", PAYLOAD_FORMAT_INDICATOR)?;
    }
    if let Some(value) = single(headers, CORRELATION_DATA, ErrorCode::InvalidCorrelationData)? {
        let bytes = BASE64.decode(value).map_err(|_| {
            ApiError::bad_request(
                ErrorCode::InvalidCorrelationData,
                format!("{CORRELATION_DATA} must be base64 (the correlation data's bytes, encoded)"),
            )
        })?;
        agree(&mut properties.correlation_data, Bytes::from(bytes), "CorrelationData", CORRELATION_DATA)?;
    }
    if let Some(value) = single(headers, USER_PROPERTIES, ErrorCode::InvalidUserProperty)? {
        let mut pairs = user_properties(value)?;
        pairs.append(&mut properties.user_properties);
        properties.user_properties = pairs;
    }
    Ok(())
}

/// The header's value, if sent: repeated, it must carry the same value each time.
/// A repeated header may also arrive as one, its values joined with `,` (API
/// Gateway's HTTP API and function URLs join them so, a proxy with `, `);
/// neither base64 nor the indicator's names hold a comma, so each part, without
/// the spaces around it, counts as one value.
fn single<'a>(headers: &'a HeaderMap, name: &str, code: ErrorCode) -> Result<Option<&'a str>, ApiError> {
    let mut found: Option<&str> = None;
    for joined in headers.get_all(name) {
        let joined = joined
            .to_str()
            .map_err(|_| ApiError::bad_request(code, format!("{name} must be printable ASCII (base64 or a name)")))?;
        for value in joined.split(',').map(|v| v.trim_matches([' ', '\t'])) {
            match found {
                Some(first) if first != value => {
                    return Err(ApiError::bad_request(
                        ErrorCode::ConflictingParameter,
                        format!("{name} is given twice with different values"),
                    ))
                }
                _ => found = Some(value),
            }
        }
    }
    Ok(found)
}

/// Sets a property from its header unless the query set it to something else.
fn agree<T: PartialEq>(slot: &mut Option<T>, value: T, query_name: &str, header: &str) -> Result<(), ApiError> {
    match slot {
        Some(existing) if *existing != value => Err(ApiError::bad_request(
            ErrorCode::ConflictingParameter,
            format!("{query_name} in the query and the {header} header differ"),
        )),
        _ => {
            *slot = Some(value);
            Ok(())
        }
    }
}

/// Base64 of a JSON array of one-member objects whose values are strings, in order.
fn user_properties(value: &str) -> Result<Vec<(String, String)>, ApiError> {
    let invalid = |why: String| {
        ApiError::bad_request(
            ErrorCode::InvalidUserProperty,
            format!(
                "{USER_PROPERTIES} must be base64 of a JSON array of one-member objects with string values, like [{{\"deviceName\":\"alpha\"}}]: {why}"
            ),
        )
    };
    let json = BASE64.decode(value).map_err(|_| invalid("it is not base64".into()))?;
    // boto3 and the AWS CLI encode the string they are given as JSON once more,
    // so the array may arrive as a JSON string holding it; AWS IoT takes both.
    let pairs: Vec<OneMember> = match serde_json::from_slice::<String>(&json) {
        Ok(inner) => serde_json::from_str(&inner),
        Err(_) => serde_json::from_slice(&json),
    }
    .map_err(|e| invalid(e.to_string()))?;
    for OneMember(key, value) in &pairs {
        check_mqtt_text(key, || format!("a key in {USER_PROPERTIES}"), ErrorCode::InvalidUserProperty)?;
        check_mqtt_text(
            value,
            || format!("the value of {key:?} in {USER_PROPERTIES}"),
            ErrorCode::InvalidUserProperty,
        )?;
    }
    Ok(pairs.into_iter().map(|OneMember(k, v)| (k, v)).collect())
}

/// `{"key":"value"}`: exactly one member, a string.
struct OneMember(String, String);

impl<'de> Deserialize<'de> for OneMember {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneMemberVisitor;

        impl<'de> Visitor<'de> for OneMemberVisitor {
            type Value = OneMember;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object with one member whose value is a string")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OneMember, A::Error> {
                let Some((key, value)) = map.next_entry::<String, String>()? else {
                    return Err(A::Error::custom("an empty object"));
                };
                if map.next_key::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(A::Error::custom(format!("the object of {key:?} has more than one member")));
                }
                Ok(OneMember(key, value))
            }
        }

        deserializer.deserialize_map(OneMemberVisitor)
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn user_properties_keep_order_and_repeats() {
        let pairs =
            [("b".to_owned(), "1".to_owned()), ("a".to_owned(), "2".to_owned()), ("b".to_owned(), "3".to_owned())];
        assert_eq!(user_properties_json(&pairs), r#"[{"b":"1"},{"a":"2"},{"b":"3"}]"#);
        let mut headers = HeaderMap::new();
        headers.insert(USER_PROPERTIES, user_properties_header(&pairs).parse().unwrap());
        let mut read = Properties::default();
        merge(&headers, &mut read).unwrap();
        assert_eq!(read.user_properties, pairs, "the header reads back what it was written from");
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn merged(pairs: &[(&'static str, &str)], query: Properties) -> Result<Properties, ApiError> {
        let mut properties = query;
        merge(&headers(pairs), &mut properties).map(|()| properties)
    }

    fn b64(text: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    #[test]
    fn the_aws_example_reads_in_order_with_repeated_keys() {
        let value = b64(r#"[{"deviceName":"alpha"},{"deviceCnt":"45"},{"deviceName":"beta"}]"#);
        let query = Properties { user_properties: vec![("q".into(), "1".into())], ..Properties::default() };
        let p = merged(
            &[(USER_PROPERTIES, &value), (CORRELATION_DATA, &b64("req-0001")), (PAYLOAD_FORMAT_INDICATOR, "UTF8_DATA")],
            query,
        )
        .unwrap();
        let props: Vec<(&str, &str)> = p.user_properties.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(props, [("deviceName", "alpha"), ("deviceCnt", "45"), ("deviceName", "beta"), ("q", "1")]);
        assert_eq!(p.correlation_data.as_deref(), Some(&b"req-0001"[..]));
        assert_eq!(p.payload_format_indicator, Some(1));
        let p = merged(&[(PAYLOAD_FORMAT_INDICATOR, "UNSPECIFIED_BYTES")], Properties::default()).unwrap();
        assert_eq!(p.payload_format_indicator, Some(0));
    }

    #[test]
    fn the_array_may_come_as_a_json_string_as_boto3_sends_it() {
        let twice = b64(r#""[{\"deviceName\":\"alpha\"},{\"deviceCnt\":\"45\"}]""#);
        let p = merged(&[(USER_PROPERTIES, &twice)], Properties::default()).unwrap();
        let props: Vec<(&str, &str)> = p.user_properties.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(props, [("deviceName", "alpha"), ("deviceCnt", "45")]);
        let not_an_array = b64(r#""deviceName""#);
        assert_eq!(
            merged(&[(USER_PROPERTIES, &not_an_array)], Properties::default()).unwrap_err().code(),
            "invalid_user_property"
        );
    }

    #[test]
    fn malformed_headers_are_400_naming_the_header() {
        for (name, value, code) in [
            (USER_PROPERTIES, "not base64!".to_owned(), "invalid_user_property"),
            (USER_PROPERTIES, b64("{\"a\":\"b\"}"), "invalid_user_property"),
            (USER_PROPERTIES, b64("[{\"a\":\"b\",\"c\":\"d\"}]"), "invalid_user_property"),
            (USER_PROPERTIES, b64("[{}]"), "invalid_user_property"),
            (USER_PROPERTIES, b64("[{\"a\":45}]"), "invalid_user_property"),
            (USER_PROPERTIES, b64("[{\"a\":\"b\"}"), "invalid_user_property"),
            (CORRELATION_DATA, "***".to_owned(), "invalid_correlation_data"),
            (PAYLOAD_FORMAT_INDICATOR, "1".to_owned(), "invalid_payload_format_indicator"),
            (PAYLOAD_FORMAT_INDICATOR, "utf8_data".to_owned(), "invalid_payload_format_indicator"),
        ] {
            let error = merged(&[(name, &value)], Properties::default()).unwrap_err();
            assert_eq!(error.code(), code, "{name}: {value}");
            assert!(error.message().contains(name), "{}", error.message());
        }
    }

    #[test]
    fn two_spellings_must_agree() {
        let query = || Properties {
            correlation_data: Some(Bytes::from_static(b"SN1")),
            payload_format_indicator: Some(1),
            ..Properties::default()
        };
        assert!(merged(&[(CORRELATION_DATA, &b64("SN1")), (PAYLOAD_FORMAT_INDICATOR, "UTF8_DATA")], query()).is_ok());
        let differs = merged(&[(CORRELATION_DATA, &b64("SN2"))], query()).unwrap_err();
        assert_eq!(differs.code(), "conflicting_parameter");
        assert!(differs.message().contains("CorrelationData"), "{}", differs.message());
        let differs = merged(&[(PAYLOAD_FORMAT_INDICATOR, "UNSPECIFIED_BYTES")], query()).unwrap_err();
        assert_eq!(differs.code(), "conflicting_parameter");
        let twice = merged(
            &[(PAYLOAD_FORMAT_INDICATOR, "UTF8_DATA"), (PAYLOAD_FORMAT_INDICATOR, "UNSPECIFIED_BYTES")],
            query(),
        );
        assert_eq!(twice.unwrap_err().code(), "conflicting_parameter");
        // As API Gateway's HTTP API hands a header sent twice: one value, joined with ",".
        let joined = merged(&[(PAYLOAD_FORMAT_INDICATOR, "UTF8_DATA,UTF8_DATA")], query());
        assert_eq!(joined.unwrap().payload_format_indicator, Some(1));
        let joined = merged(&[(PAYLOAD_FORMAT_INDICATOR, "UTF8_DATA, UTF8_DATA")], query());
        assert_eq!(joined.unwrap().payload_format_indicator, Some(1), "as a proxy joins them");
        let joined = merged(&[(PAYLOAD_FORMAT_INDICATOR, "UTF8_DATA,UNSPECIFIED_BYTES")], query());
        assert_eq!(joined.unwrap_err().code(), "conflicting_parameter");
    }

    #[test]
    fn base64_without_padding_is_taken() {
        let p = merged(&[(CORRELATION_DATA, "YQ")], Properties::default()).unwrap();
        assert_eq!(p.correlation_data.as_deref(), Some(&b"a"[..]));
    }
}
