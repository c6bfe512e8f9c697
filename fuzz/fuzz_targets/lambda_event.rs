//! The Lambda event decoder: the input is the event's JSON, as the runtime
//! hands it over. Every event that decodes goes on through the request parser
//! and back out through the response encoder of its origin.
//!
//! Beyond "no panic": whatever the client put in the request, a refusal is a
//! 4xx, and the response the function returns serializes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtt_http_publish::contract::basic::parse_basic;
use mqtt_http_publish::contract::parse_request;
use mqtt_http_publish::lambda::{decode, encode};
use mqtt_http_publish::publish::iot::IOT_LIMITS;

fuzz_target!(|data: &[u8]| {
    for base_path in [None, Some("/mqtt")] {
        let Ok((request, origin)) = decode(data, base_path) else {
            continue;
        };
        let refusal = match request {
            Ok(request) => {
                if let Some(value) = request.headers.get(http::header::AUTHORIZATION) {
                    let _ = parse_basic(value);
                }
                match parse_request(&request, IOT_LIMITS, IOT_LIMITS.max_payload_bytes) {
                    Ok(_) => continue,
                    Err(error) => error,
                }
            }
            Err(error) => error,
        };
        let response = refusal.into_response();
        assert!(response.status().is_client_error(), "{response:?}");
        let answer = encode(origin, response);
        serde_json::to_vec(&answer).expect("a Lambda response serializes");
    }
});
