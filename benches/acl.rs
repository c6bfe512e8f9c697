//! How long one ACL decision takes as the rule set grows. Prints figures; asserts nothing.
//!
//!     cargo bench --bench acl
//!
//! Rule set: one allow rule per device (`devices/dev-N/#` for user `user-N`),
//! a tenth of them paired with a deny rule for `devices/dev-N/admin/#`, and a
//! few broad rules with `+`, `#` and placeholders, as a fleet's config looks.
// A benchmark unwraps and prints: its figures are its output, a failure its answer.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use std::hint::black_box;
use std::time::Instant;

use mqtt_http_publish::acl::{Access, Acl, Action, Effect, Rule, TopicFilter};
use mqtt_http_publish::contract::{Qos, Topic, TopicLimits};

fn rule(priority: i64, effect: Effect, topic: &str, username: Option<String>) -> Rule {
    Rule {
        priority,
        effect,
        topics: vec![TopicFilter::parse(topic).unwrap()],
        usernames: username.map(|u| vec![u]),
        client_ids: None,
        source_ips: None,
        qos: None,
        retain: None,
        auth: None,
        actions: mqtt_http_publish::acl::Actions::PUBLISH,
    }
}

fn fleet(devices: usize) -> Vec<Rule> {
    let mut rules = vec![
        rule(0, Effect::Deny, "$SYS/#", None),
        rule(1, Effect::Allow, "broadcast/+/status", None),
        rule(2, Effect::Allow, "users/${username}/#", None),
    ];
    for n in 0..devices {
        if n % 10 == 0 {
            rules.push(rule(10 + 2 * n as i64, Effect::Deny, &format!("devices/dev-{n}/admin/#"), None));
        }
        rules.push(rule(11 + 2 * n as i64, Effect::Allow, &format!("devices/dev-{n}/#"), Some(format!("user-{n}"))));
    }
    rules
}

fn main() {
    let limits = TopicLimits { max_bytes: 256, max_slashes: Some(7), basic_ingest: true };
    for devices in [10_000usize, 100_000] {
        let rules = fleet(devices);
        let count = rules.len();
        let started = Instant::now();
        let acl = Acl::new(rules);
        let build = started.elapsed();

        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let requests: Vec<(Topic, String)> = (0..10_000)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let n = (seed >> 33) as usize % devices;
                let topic = match seed % 4 {
                    0 => format!("devices/dev-{n}/temperature"),
                    1 => format!("devices/dev-{n}/admin/reboot"),
                    2 => format!("users/user-{n}/inbox"),
                    _ => format!("devices/dev-{}/temperature", (n + 1) % devices),
                };
                (Topic::parse(topic.into_bytes(), limits).unwrap(), format!("user-{n}"))
            })
            .collect();

        let rounds = 50;
        let mut allowed = 0usize;
        let started = Instant::now();
        for _ in 0..rounds {
            for (topic, user) in &requests {
                let access = Access {
                    topic,
                    username: Some(user),
                    client_id: "bench",
                    source_ip: None,
                    qos: Qos::AtLeastOnce,
                    retain: false,
                    basic: true,
                    certificate: false,
                    action: Action::Publish,
                };
                allowed += usize::from(black_box(acl.decide(black_box(&access))) == Effect::Allow);
            }
        }
        let per_decision = started.elapsed().as_nanos() as f64 / (rounds * requests.len()) as f64;
        println!(
            "acl: {count:>7} rules  build {:>7.1} ms  decision {per_decision:>6.0} ns  ({:.0}% allowed)",
            build.as_secs_f64() * 1e3,
            100.0 * allowed as f64 / (rounds * requests.len()) as f64
        );
    }
}
