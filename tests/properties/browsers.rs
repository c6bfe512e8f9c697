//! Browsers: which requests get a preflight's 204, and which POSTs are refused.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use mqtt_http_publish::contract::cors::{self, Cors};
use mqtt_http_publish::contract::{HttpRequest, RequestPath};
use proptest::prelude::*;
use proptest::sample::select;

use crate::headers::header_value;

/// Origins a page may have, near misses of the allowed ones, and junk.
fn origin_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(vec![
            "https://app.example.com", "http://127.0.0.1:9090", "http://localhost:9090", "https://api.example",
            "https://app.example.com:443", "HTTPS://APP.EXAMPLE.COM", "https://app.example.com/", "null", "",
        ]).prop_map(str::to_owned),
        1 => "[ -~]{0,24}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn a_preflight_is_204_exactly_for_an_allowed_origin_asking_to_post_under_topics(
        allowed in prop::collection::vec(select(vec!["https://app.example.com", "http://127.0.0.1:9090", "*"]), 0..3),
        with_cors in any::<bool>(),
        origin in prop::option::of(origin_strategy()),
        method in select(vec!["OPTIONS", "POST", "GET"]),
        asked in prop::option::of(select(vec!["POST", "post", "PUT", ""])),
        path in select(vec!["/topics/home", "/topics/", "/topic/home", "/"]),
        site in prop::option::of(select(vec!["same-origin", "same-site", "cross-site", "none"])),
        host in prop::option::of(select(vec!["api.example", "app.example.com", "127.0.0.1:9090"])),
    ) {
        let cors = with_cors.then(|| Cors::new(allowed.iter().copied(), 7).expect("valid origins"));
        let mut headers = HeaderMap::new();
        let origin = origin.and_then(|o| HeaderValue::from_str(&o).ok());
        if let Some(o) = &origin {
            headers.insert("origin", o.clone());
        }
        if let Some(a) = asked {
            headers.insert("access-control-request-method", header_value(a));
        }
        if let Some(s) = site {
            headers.insert("sec-fetch-site", header_value(s));
        }
        if let Some(h) = host {
            headers.insert("host", header_value(h));
        }
        let request = HttpRequest {
            method: Method::from_bytes(method.as_bytes()).unwrap(),
            path: RequestPath::Encoded(path.into()),
            query: Vec::new(),
            headers: headers.clone(),
            body: Bytes::new(),
            source_ip: None,
            client_certificate: None,
        };
        let origin_text = origin.as_ref().and_then(|o| o.to_str().ok());
        let is_allowed = with_cors && origin_text.is_some_and(|o| allowed.contains(&"*") || allowed.contains(&o));
        let expect_204 = method == "OPTIONS" && path.starts_with("/topics/") && asked == Some("POST") && is_allowed;
        let answer = cors::preflight(cors.as_ref(), &request);
        prop_assert_eq!(answer.is_some(), expect_204);
        if let Some(answer) = answer {
            prop_assert_eq!(answer.status().as_u16(), 204);
            prop_assert_eq!(answer.headers()["access-control-allow-origin"].to_str().ok(), origin_text);
            prop_assert_eq!(&answer.headers()["access-control-max-age"], "7");
            prop_assert!(!answer.headers().contains_key("access-control-allow-credentials"));
        }
        // A POST is refused when a browser says it comes from a page elsewhere, not allowed.
        let same_host = match (origin_text, host) {
            (Some(o), Some(h)) => o.split_once("://").is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(h)),
            _ => false,
        };
        let from_elsewhere = match site {
            Some(s) => s != "same-origin" && s != "none",
            None => !same_host,
        };
        let expect_refused = origin.is_some() && !is_allowed && from_elsewhere;
        prop_assert_eq!(cors::refused_cross_origin(cors.as_ref(), &headers), expect_refused);
    }
}
