//! Text a broker would take for a malformed packet never reaches it: a control
//! character or noncharacter anywhere in the message's text is a 400 naming it.

use bytes::Bytes;
use http::{HeaderMap, Method};
use mqtt_http_publish::contract::headers::USER_PROPERTIES;
use mqtt_http_publish::contract::{parse_request, HttpRequest, RequestPath};
use mqtt_http_publish::publish::iot::IOT_LIMITS;
use proptest::prelude::*;

use crate::headers::{
    not_mqtt_text_strategy, property_text_strategy, reference_not_mqtt_text, user_properties_header, Spelling,
};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn a_control_character_or_noncharacter_in_any_text_of_the_message_is_a_400_naming_it(
        bad in not_mqtt_text_strategy(),
        good in property_text_strategy(),
        place in 0usize..7,
    ) {
        let encoded = |text: &str| text.bytes().map(|b| format!("%{b:02X}")).collect::<String>();
        let mut query: Vec<(String, String)> = vec![("UserProp.1.Key".into(), good.clone()), ("UserProp.1.Value".into(), good.clone())];
        let mut headers = Vec::new();
        let mut path = "/topics/a".to_owned();
        let expected = match place {
            0 => { query[0].1 = bad.clone(); "invalid_user_property" }
            1 => { query[1].1 = bad.clone(); "invalid_user_property" }
            2 | 3 => {
                let pair = if place == 2 { vec![(bad.clone(), good.clone())] } else { vec![(good.clone(), bad.clone())] };
                headers.push((USER_PROPERTIES, user_properties_header(&pair, Spelling::Array, true)));
                "invalid_user_property"
            }
            4 => { query.push(("contentType".into(), bad.clone())); "invalid_content_type" }
            // In a topic, without what a topic refuses first: its wildcards.
            5 => { query.push(("ResponseTopic".into(), format!("r{}", bad.replace(['+', '#'], "")))); "invalid_response_topic" }
            _ => { path = format!("/topics/a{}", encoded(&bad.replace(['+', '#'], ""))); "invalid_topic" }
        };
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(name, value);
        }
        let request = HttpRequest {
            method: Method::POST,
            path: RequestPath::Encoded(path),
            query,
            headers: map,
            body: Bytes::from_static(b"x"),
            source_ip: None,
            client_certificate: None,
        };
        let error = parse_request(&request, IOT_LIMITS, IOT_LIMITS.max_payload_bytes).expect_err("refused");
        prop_assert_eq!(error.code().as_str(), expected, "{:?}", error);
        let named = format!("U+{:04X}", bad.chars().find(|&c| reference_not_mqtt_text(c)).unwrap() as u32);
        prop_assert!(error.message().contains(&named), "{}: {}", named, error.message());
    }
}
