//! The TOML config loader, validation included: the input is the file's text.
//!
//! Beyond "no panic": a config that validates survives TOML serialization (what
//! `config pull` writes) unchanged, and its compiled ACL (the trie) decides as
//! a plain first-match scan of its rules does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtt_http_publish::acl::{Access, Action, Effect};
use mqtt_http_publish::config::{parse_toml, Policy};
use mqtt_http_publish::contract::{Qos, Topic, TopicLimits};

const TOPICS: &[&str] = &["home", "home/kitchen", "devices/dev-1/t", "users/user0", "$SYS/x", "a//b", "/"];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let policy = match Policy::from_toml(text) {
        Ok(policy) => policy,
        Err(error) => {
            assert!(!error.to_string().is_empty(), "a refusal says why");
            return;
        }
    };
    let file = parse_toml(text).expect("a config that validates parses");
    let written = toml::to_string(&file).expect("a parsed config serializes");
    let reread = parse_toml(&written).unwrap_or_else(|e| panic!("{e}\n--- written:\n{written}"));
    assert_eq!(reread, file, "--- written:\n{written}");
    Policy::from_file(reread).expect("the rewritten config validates too");

    let acl = &policy.rules.acl;
    let limits = TopicLimits { max_bytes: 65_535, max_slashes: None, basic_ingest: false };
    for name in TOPICS {
        let topic = Topic::parse(name.as_bytes().to_vec(), limits).expect("the sample topics are valid");
        for (qos, retain, username) in [(0, false, Some("user0")), (1, true, None)] {
            let access = Access {
                topic: &topic,
                username,
                client_id: "dev-1",
                source_ip: Some("10.1.2.3".parse().expect("an address")),
                qos: Qos::from_level(qos).unwrap(),
                retain,
                basic: username.is_some(),
                certificate: username.is_none(),
                action: Action::Publish,
            };
            let linear = acl.rules().iter().find(|r| r.matches(&access)).map_or(Effect::Deny, |r| r.effect);
            assert_eq!(acl.decide(&access), linear, "topic {name:?}");
        }
    }
});
