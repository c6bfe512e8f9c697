//! Batches: each message of a `POST /messages` is answered as a single
//! `POST /topics/{topic}` of it would have been, status and error code, and
//! a batch publishes exactly the messages whose singles would have.

use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use mqtt_http_publish::config::Policy;
use mqtt_http_publish::contract::query::decode_query;
use mqtt_http_publish::contract::{BackendLimits, HttpRequest, RequestPath};
use mqtt_http_publish::publish::iot::IOT_LIMITS;
use mqtt_http_publish::publish::{Message, PublishError, Publisher};
use mqtt_http_publish::service::Service;
use proptest::prelude::*;
use proptest::sample::select;

/// Accepts every message at once, and keeps them.
#[derive(Clone, Default)]
struct Keep(Arc<Mutex<Vec<Message>>>);

impl Publisher for Keep {
    fn limits(&self) -> BackendLimits {
        IOT_LIMITS
    }

    async fn publish(&self, message: Message) -> Result<(), PublishError> {
        self.0.lock().unwrap().push(message);
        Ok(())
    }
}

fn service() -> (Service<Keep>, Keep) {
    let hash = bcrypt::hash("pw", 4).unwrap();
    let config = format!(
        "[[users]]\nusername = \"u\"\npassword_hash = \"{hash}\"\n\
         [[rules]]\npriority = 1\neffect = \"deny\"\ntopics = [\"a/secret\"]\n\
         [[rules]]\npriority = 2\neffect = \"allow\"\ntopics = [\"a/#\"]\nretain = false\n\
         [limits]\nmax_payload_bytes = 16\n"
    );
    let keep = Keep::default();
    (Service::new(keep.clone(), Policy::from_toml(&config).unwrap()), keep)
}

fn request(path: String, query: String, body: Vec<u8>) -> HttpRequest {
    let mut headers = HeaderMap::new();
    let credentials = base64::engine::general_purpose::STANDARD.encode("u:pw");
    headers.insert("authorization", HeaderValue::from_str(&format!("Basic {credentials}")).unwrap());
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    HttpRequest {
        method: Method::POST,
        path: RequestPath::Encoded(path),
        query: decode_query(&query).unwrap(),
        headers,
        body: Bytes::from(body),
        source_ip: None,
        client_certificate: None,
    }
}

/// One message: topic, qos, retained, payload.
type Case = (String, Option<u8>, Option<bool>, String);

fn message_strategy() -> impl Strategy<Value = Case> {
    (
        select(vec!["a/x", "a/y", "a/secret", "b/x", "a/+", "a/#", "", "a//x", "$SYS/a"]).prop_map(str::to_owned),
        prop::option::of(0u8..=2),
        prop::option::of(any::<bool>()),
        "[a-z0-9]{0,20}",
    )
}

/// The (status, error) of an answer's JSON body, or of an entry.
fn code(status: u64, json: &serde_json::Value) -> (u64, String) {
    (status, json["error"].as_str().unwrap_or("").to_owned())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn each_entry_answers_as_its_single_publish_would(
        messages in prop::collection::vec(message_strategy(), 1..8),
        default_qos in prop::option::of(0u8..=1),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let query = default_qos.map(|q| format!("qos={q}")).unwrap_or_default();
        let (batch_service, batch_kept) = service();
        let (single_service, single_kept) = service();
        let body = serde_json::Value::Array(
            messages
                .iter()
                .map(|(topic, qos, retained, payload)| {
                    let mut m = serde_json::json!({"topic": topic, "payload": payload});
                    if let Some(qos) = qos { m["qos"] = (*qos).into(); }
                    if let Some(retained) = retained { m["retained"] = (*retained).into(); }
                    m
                })
                .collect(),
        );
        let response = runtime.block_on(batch_service.handle(request("/messages".into(), query.clone(), body.to_string().into_bytes())));
        let json: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        let entries = json["results"].as_array().unwrap_or_else(|| panic!("{json}"));
        prop_assert_eq!(entries.len(), messages.len());
        let mut all_ok = true;
        for ((topic, qos, retained, payload), entry) in messages.iter().zip(entries) {
            let encoded: String = percent_encoding::utf8_percent_encode(topic, percent_encoding::NON_ALPHANUMERIC).to_string();
            let mut single_query: Vec<String> = Vec::new();
            if let Some(q) = qos.or(default_qos) { single_query.push(format!("qos={q}")); }
            if let Some(r) = retained { single_query.push(format!("retained={r}")); }
            let single = runtime.block_on(single_service.handle(request(
                format!("/topics/{encoded}"),
                single_query.join("&"),
                payload.clone().into_bytes(),
            )));
            let status = u64::from(single.status().as_u16());
            let single_json: serde_json::Value = if status == 200 { serde_json::Value::Null } else { serde_json::from_slice(single.body()).unwrap() };
            prop_assert_eq!(code(entry["status"].as_u64().unwrap(), entry), code(status, &single_json), "{} {:?}", topic, entry);
            all_ok &= status == 200;
        }
        prop_assert_eq!(response.status().as_u16(), if all_ok { 200 } else { 207 });
        let published = |kept: &Keep| -> Vec<(String, Vec<u8>, u8, bool)> {
            let mut all: Vec<_> = kept.0.lock().unwrap().iter().map(|m| (m.topic.as_str().to_owned(), m.payload.to_vec(), m.qos.level(), m.retain)).collect();
            all.sort();
            all
        };
        prop_assert_eq!(published(&batch_kept), published(&single_kept));
    }
}
