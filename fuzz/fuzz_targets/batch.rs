//! A batch's body (`POST /messages`): the input is the JSON as a client sent
//! it. Beyond "no panic": the whole batch is refused with a 4xx, or every
//! message has its own outcome, each one valid or refused with a 4xx, never
//! more of them than the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtt_http_publish::contract::batch::{parse_batch, BatchLimits, MESSAGES_PATH};
use mqtt_http_publish::contract::{HttpRequest, RequestPath};
use mqtt_http_publish::publish::iot::IOT_LIMITS;

const LIMITS: BatchLimits = BatchLimits { max_messages: 100, max_bytes: 1 << 20, max_payload_bytes: 1024 };

fuzz_target!(|data: &[u8]| {
    let request = HttpRequest {
        method: http::Method::POST,
        path: RequestPath::Encoded(MESSAGES_PATH.into()),
        query: Vec::new(),
        headers: http::HeaderMap::new(),
        body: (),
        source_ip: None,
        client_certificate: None,
    };
    let head = parse_batch(&request, Some(data.len() as u64), IOT_LIMITS, LIMITS.max_bytes).expect("a plain batch's head");
    match head.with_body(data, IOT_LIMITS, LIMITS) {
        Err(refusal) => assert!(refusal.status().is_client_error(), "{refusal:?}"),
        Ok(messages) => {
            assert!((1..=LIMITS.max_messages).contains(&messages.len()));
            for message in messages {
                match message {
                    Ok(message) => assert!(message.payload.len() <= LIMITS.max_payload_bytes),
                    Err(refusal) => assert!(refusal.status().is_client_error(), "{refusal:?}"),
                }
            }
        }
    }
});
