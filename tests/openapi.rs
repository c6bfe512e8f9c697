//! `openapi.yaml` against the code, so that neither drifts silently: every
//! query parameter the parser reads is documented, and every documented one is
//! read, with the limits the parser enforces; every status and error code the
//! code can answer with is documented, with the headers it carries, and nothing
//! else is. (`scripts/schemathesis` checks a running `serve` against it.)
// A test unwraps and prints: its failure, and what it saw, are its answer.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeSet;

use mqtt_http_publish::contract::query::{parse_options, PARAMETERS, USER_PROPERTY_PREFIX};
use mqtt_http_publish::contract::{ApiError, ErrorCode, Qos, TopicLimits};
use yaml_rust2::{Yaml, YamlLoader};

const LIMITS: TopicLimits = TopicLimits { max_bytes: 65_535, max_slashes: None, basic_ingest: false };

fn document() -> Yaml {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}

/// Follows `$ref: "#/a/b"` (repeatedly) within the document.
fn resolve<'a>(doc: &'a Yaml, node: &'a Yaml) -> &'a Yaml {
    match node["$ref"].as_str() {
        None => node,
        Some(reference) => {
            let pointer = reference.strip_prefix("#/").unwrap_or_else(|| panic!("a local $ref: {reference}"));
            let target = pointer.split('/').fold(doc, |node, key| &node[key]);
            assert!(!target.is_badvalue(), "{reference} points nowhere");
            resolve(doc, target)
        }
    }
}

fn operation<'a>(doc: &'a Yaml, method: &str) -> &'a Yaml {
    let operation = &doc["paths"]["/topics/{topic}"][method];
    assert!(!operation.is_badvalue(), "openapi.yaml has no {method} /topics/{{topic}}");
    operation
}

/// The query parameters of POST, resolved.
fn query_parameters(doc: &Yaml) -> Vec<&Yaml> {
    operation(doc, "post")["parameters"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|p| resolve(doc, p))
        .filter(|p| p["in"].as_str() == Some("query"))
        .collect()
}

fn strings(node: &Yaml) -> BTreeSet<String> {
    node.as_vec().map_or_else(BTreeSet::new, |v| v.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
}

/// Whether the parser accepts `name=value` alone (`Ok`) or names the error code.
fn parse_one(name: &str, value: &str) -> Result<(), &'static str> {
    parse_options(&[(name.to_owned(), value.to_owned())], Qos::AtLeastOnce, LIMITS)
        .map(|_| ())
        .map_err(|e| e.code().as_str())
}

#[test]
fn the_document_is_openapi_3_1_with_the_publish_operation() {
    let doc = document();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
    let topic = resolve(&doc, &doc["paths"]["/topics/{topic}"]["parameters"][0]);
    assert_eq!(
        (topic["name"].as_str(), topic["in"].as_str(), topic["required"].as_bool()),
        (Some("topic"), Some("path"), Some(true))
    );
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(
        (schemes["basicAuth"]["type"].as_str(), schemes["basicAuth"]["scheme"].as_str()),
        (Some("http"), Some("basic"))
    );
    assert_eq!(schemes["clientCertificate"]["type"].as_str(), Some("mutualTLS"));
    let body = resolve(&doc, &operation(&doc, "post")["requestBody"]);
    assert_eq!(body["required"].as_bool(), Some(false), "an empty body is a message");
}

#[test]
fn every_query_parameter_the_parser_reads_is_documented_and_no_other() {
    let doc = document();
    let documented: BTreeSet<String> = query_parameters(&doc)
        .iter()
        .filter(|p| p["style"].as_str() != Some("form") || p["explode"].as_bool() != Some(true))
        .map(|p| p["name"].as_str().unwrap().to_ascii_lowercase())
        .collect();
    let read: BTreeSet<String> = PARAMETERS.iter().map(|(name, _)| (*name).to_owned()).collect();
    assert_eq!(documented, read, "openapi.yaml's query parameters (lower-cased) and query::PARAMETERS differ");

    // The user properties: one exploded object whose property names are UserProp.N.Key / .Value.
    let user_props = query_parameters(&doc)
        .into_iter()
        .find(|p| p["explode"].as_bool() == Some(true) && p["schema"]["type"].as_str() == Some("object"))
        .expect("UserProp.N.Key / UserProp.N.Value, documented as an exploded object");
    let pattern = user_props["schema"]["propertyNames"]["pattern"].as_str().unwrap();
    assert!(pattern.to_ascii_lowercase().starts_with(&format!("^{}", USER_PROPERTY_PREFIX.replace('.', "\\."))));
    let pair = [("UserProp.3.Key".to_owned(), "k".to_owned()), ("UserProp.3.Value".to_owned(), "v".to_owned())];
    assert!(parse_options(&pair, Qos::AtLeastOnce, LIMITS).is_ok());
    assert_eq!(parse_one("UserProp.0.Key", "k"), Err("invalid_user_property"), "N starts at 1, as [1-9] says");
}

#[test]
fn every_documented_limit_is_the_parser_s() {
    let doc = document();
    for parameter in query_parameters(&doc) {
        let name = parameter["name"].as_str().unwrap();
        let schema = &parameter["schema"];
        if schema["type"].as_str() == Some("object") {
            continue;
        }
        // A name the parser reads refuses two different values; an ignored one would not.
        let twice = [(name.to_owned(), "0".to_owned()), (name.to_owned(), "1".to_owned())];
        let error = parse_options(&twice, Qos::AtLeastOnce, LIMITS).unwrap_err();
        assert_eq!(error.code(), "conflicting_parameter", "{name} is documented but not read");

        if let Some(members) = schema["enum"].as_vec() {
            for member in members {
                let value = member.as_i64().map(|i| i.to_string()).unwrap();
                assert_eq!(parse_one(name, &value), Ok(()), "{name}={value} is documented");
            }
            let beyond = members.iter().filter_map(Yaml::as_i64).max().unwrap() + 1;
            assert!(parse_one(name, &beyond.to_string()).is_err(), "{name}={beyond} is not documented");
        }
        if schema["type"].as_str() == Some("boolean") {
            for value in ["true", "false"] {
                assert_eq!(parse_one(name, value), Ok(()), "{name}={value}");
            }
            assert!(parse_one(name, "1").is_err(), "{name}=1 is not a boolean");
        }
        if let Some(maximum) = schema["maximum"].as_i64() {
            assert_eq!(parse_one(name, &maximum.to_string()), Ok(()), "{name}={maximum}");
            assert!(parse_one(name, &(maximum + 1).to_string()).is_err(), "{name}={}", maximum + 1);
        }
        if let Some(minimum) = schema["minimum"].as_i64() {
            assert_eq!(parse_one(name, &minimum.to_string()), Ok(()), "{name}={minimum}");
            assert!(parse_one(name, &(minimum - 1).to_string()).is_err(), "{name}={}", minimum - 1);
        }
        if let Some(max_length) = schema["maxLength"].as_i64() {
            let longest = "a".repeat(max_length as usize);
            assert_eq!(parse_one(name, &longest), Ok(()), "{name} of {max_length} characters");
            assert!(parse_one(name, &format!("{longest}a")).is_err(), "{name} of {} characters", max_length + 1);
        }
        if schema["minLength"].as_i64() == Some(1) {
            assert!(parse_one(name, "").is_err(), "{name} may not be empty");
        }
    }
}

/// One of each variant of [`ApiError`].
fn every_error() -> Vec<ApiError> {
    let all = vec![
        ApiError::bad_request(ErrorCode::InvalidQos, "x"),
        ApiError::unauthorized(ErrorCode::AuthenticationFailed, "x"),
        ApiError::OriginNotAllowed,
        ApiError::MethodNotAllowed,
        ApiError::PayloadTooLarge { max: 1 },
        ApiError::BatchTooLarge { max_bytes: 1 },
        ApiError::TooManyMessages { max: 1, count: 2 },
        ApiError::HeadersTooLarge { max: 1 },
        ApiError::TooManyRequests { retry_after: 1 },
        ApiError::TooManyLoginAttempts { retry_after: 1 },
        ApiError::RequestInProgress,
        ApiError::IdempotencyKeyReused,
        ApiError::Internal,
        ApiError::Unavailable { retry_after: 5 },
        ApiError::UnknownOutcome { retry_after: 5 },
        ApiError::NotPublishedBefore,
        ApiError::NotSent { retry_after: 1 },
        ApiError::TooManyWaiting { retry_after: 1 },
        ApiError::ReplyLost { retry_after: 5 },
        ApiError::ReplyTimeout { seconds: 10 },
        ApiError::ReplyTooLarge { max: 1, size: 2 },
    ];
    for error in &all {
        // A new variant stops this compiling: add it to the list above (and to openapi.yaml).
        match error {
            ApiError::BadRequest { .. }
            | ApiError::Unauthorized { .. }
            | ApiError::OriginNotAllowed
            | ApiError::MethodNotAllowed
            | ApiError::PayloadTooLarge { .. }
            | ApiError::BatchTooLarge { .. }
            | ApiError::TooManyMessages { .. }
            | ApiError::HeadersTooLarge { .. }
            | ApiError::TooManyRequests { .. }
            | ApiError::TooManyLoginAttempts { .. }
            | ApiError::RequestInProgress
            | ApiError::IdempotencyKeyReused
            | ApiError::Internal
            | ApiError::Unavailable { .. }
            | ApiError::UnknownOutcome { .. }
            | ApiError::NotPublishedBefore
            | ApiError::NotSent { .. }
            | ApiError::TooManyWaiting { .. }
            | ApiError::ReplyLost { .. }
            | ApiError::ReplyTimeout { .. }
            | ApiError::ReplyTooLarge { .. } => {}
        }
    }
    all
}

/// The error codes a documented response's JSON schema allows (`enum` or `const`).
fn documented_codes(doc: &Yaml, response: &Yaml) -> BTreeSet<String> {
    let schema = resolve(doc, &response["content"]["application/json"]["schema"]);
    let mut codes = BTreeSet::new();
    for part in schema["allOf"].as_vec().unwrap() {
        let error = &resolve(doc, part)["properties"]["error"];
        codes.extend(strings(&error["enum"]));
        codes.extend(error["const"].as_str().map(str::to_owned));
    }
    codes
}

/// The codes of `ErrorCode`, the one list the code answers with, that have `status`.
fn codes_with_status(status: u16) -> BTreeSet<String> {
    ErrorCode::ALL.iter().filter(|c| c.status() == status).map(|c| c.as_str().to_owned()).collect()
}

#[test]
fn every_status_and_code_the_code_answers_with_is_documented_with_its_headers() {
    let doc = document();
    let post = &operation(&doc, "post")["responses"];
    let others: Vec<&Yaml> =
        ["get", "put", "patch", "delete"].iter().map(|m| &operation(&doc, m)["responses"]).collect();

    let mut statuses = BTreeSet::from([200]);
    for error in every_error() {
        let mut response = error.clone().into_response();
        // An error after the publish carries the id it was published under (Service::handle_by adds it).
        if matches!(error, ApiError::ReplyTimeout { .. } | ApiError::ReplyTooLarge { .. }) {
            response.headers_mut().insert("x-message-id", "0123456789ABCDEF0123456789ABCDEF".parse().unwrap());
        }
        let status = response.status().as_u16();
        statuses.insert(status);
        let documented = status_of(if status == 405 { others[0] } else { post }, status)
            .unwrap_or_else(|| panic!("{status} ({}) is not documented", error.code()));
        let documented = resolve(&doc, documented);

        assert_eq!(response.headers()["content-type"], "application/json");
        let codes = documented_codes(&doc, documented);
        assert!(codes.contains(error.code().as_str()), "{status}: {} is not documented", error.code());
        assert_eq!(codes, codes_with_status(status), "{status}: the codes in openapi.yaml and ErrorCode differ");

        let documented_headers: BTreeSet<String> = documented["headers"]
            .as_hash()
            .map_or_else(BTreeSet::new, |h| h.keys().map(|k| k.as_str().unwrap().to_ascii_lowercase()).collect());
        let sent: BTreeSet<String> =
            response.headers().keys().map(|k| k.as_str().to_owned()).filter(|k| k != "content-type").collect();
        let required: BTreeSet<String> = documented["headers"].as_hash().map_or_else(BTreeSet::new, |h| {
            h.iter()
                .filter(|(_, header)| resolve(&doc, header)["required"].as_bool() == Some(true))
                .map(|(k, _)| k.as_str().unwrap().to_ascii_lowercase())
                .collect()
        });
        assert!(sent.is_subset(&documented_headers), "{status}: sends {sent:?}, documents {documented_headers:?}");
        assert!(required.is_subset(&sent), "{status}: documents {required:?} as required, sends {sent:?}");
        for (name, value) in response.headers() {
            let Some((_, header)) = documented["headers"]
                .as_hash()
                .and_then(|h| h.iter().find(|(k, _)| k.as_str().unwrap().eq_ignore_ascii_case(name.as_str())))
            else {
                continue;
            };
            let header = resolve(&doc, header);
            if let Some(constant) = header["schema"]["const"].as_str() {
                assert_eq!(value, constant, "{status} {name}");
            }
        }
    }

    let documented_statuses = |responses: &Yaml| -> BTreeSet<u16> {
        responses.as_hash().unwrap().keys().map(|k| k.as_str().expect("quoted status keys").parse().unwrap()).collect()
    };
    let coded: BTreeSet<u16> = ErrorCode::ALL.iter().map(|c| c.status().as_u16()).collect();
    assert_eq!(coded, &statuses - &BTreeSet::from([200]), "every status of ErrorCode has an ApiError above");
    let mut post_statuses = statuses.clone();
    post_statuses.remove(&405);
    assert_eq!(documented_statuses(post), post_statuses, "POST documents exactly what it can answer");
    for responses in &others {
        assert!(documented_statuses(responses).contains(&405));
        assert!(documented_statuses(responses).is_subset(&statuses));
    }
    // OPTIONS: the preflight's 204, else what GET answers.
    let options = &operation(&doc, "options")["responses"];
    assert_eq!(&documented_statuses(options) - &BTreeSet::from([204]), documented_statuses(others[0]));
    let published = resolve(&doc, status_of(post, 200).unwrap());
    assert_eq!(
        resolve(&doc, &published["headers"]["X-Message-Id"])["schema"]["pattern"].as_str(),
        Some("^[0-9A-F]{32}$")
    );
}

/// The response documented for `status` in a `responses` map.
fn status_of(responses: &Yaml, status: u16) -> Option<&Yaml> {
    responses.as_hash()?.get(&Yaml::String(status.to_string()))
}

#[test]
fn the_headers_the_contract_reads_and_the_preflight_sends_are_documented() {
    use mqtt_http_publish::contract::{cors, headers, trace};
    let doc = document();
    let documented: BTreeSet<String> = operation(&doc, "post")["parameters"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|p| resolve(&doc, p))
        .filter(|p| p["in"].as_str() == Some("header"))
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    let read = [
        headers::USER_PROPERTIES,
        headers::CORRELATION_DATA,
        headers::PAYLOAD_FORMAT_INDICATOR,
        trace::TRACEPARENT,
        trace::TRACESTATE,
        "Idempotency-Key",
    ];
    assert!(read.iter().any(|h| h.eq_ignore_ascii_case(mqtt_http_publish::contract::idempotency::HEADER)));
    assert_eq!(documented, read.iter().map(|h| h.to_string()).collect::<BTreeSet<_>>());
    let preflight = resolve(&doc, status_of(&operation(&doc, "options")["responses"], 204).unwrap());
    assert_eq!(
        preflight["headers"]["Access-Control-Allow-Headers"]["schema"]["const"].as_str(),
        Some(cors::ALLOW_HEADERS)
    );
    let payload_format = resolve(&doc, &doc["components"]["parameters"]["AmzPayloadFormatIndicator"]);
    assert_eq!(
        strings(&payload_format["schema"]["enum"]),
        BTreeSet::from(["UNSPECIFIED_BYTES".into(), "UTF8_DATA".into()])
    );
}
