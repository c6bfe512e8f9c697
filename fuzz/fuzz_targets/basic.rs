//! The `Authorization: Basic` parser: the input is the header's value.
//!
//! Beyond "no panic": a header that parses has the Basic scheme, its user name
//! holds no `:`, and the credentials, encoded again, parse back to themselves.
#![no_main]

use base64::Engine;
use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use mqtt_http_publish::contract::basic::parse_basic;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = HeaderValue::from_bytes(data) else {
        return;
    };
    let Ok(credentials) = parse_basic(&header) else {
        return;
    };
    let text = header.to_str().expect("a parsed header is text").trim_start();
    assert!(text.get(..6).is_some_and(|s| s.eq_ignore_ascii_case("basic ")), "{text:?}");
    assert!(!credentials.username.contains(':'), "the user name ends at the first colon");
    let token =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", credentials.username, credentials.password));
    let again = parse_basic(&HeaderValue::from_str(&format!("Basic {token}")).expect("base64 is a valid header"));
    // A re-encoded header can only outgrow the length limit if the original was padded with spaces.
    if let Ok(again) = again {
        assert_eq!(again, credentials);
    }
});
