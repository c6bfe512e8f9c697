//! An ACL decision runs on every request: it must not touch the allocator. A
//! counting allocator watches this thread while the ACL decides, over rules
//! that use every kind of level and condition (`+`, `#`, placeholders inside a
//! level, client_id globs, CIDR blocks, user names).
// A test unwraps and prints: its failure, and what it saw, are its answer.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use mqtt_http_publish::acl::{Access, Acl, Action, Cidr, Effect, Glob, Rule, TopicFilter};
use mqtt_http_publish::contract::{Qos, Topic, TopicLimits};

/// The system allocator, counting this thread's allocations.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is passed on to the system allocator unchanged.
#[allow(unsafe_code, reason = "a global allocator is an unsafe trait")]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

fn rule(priority: i64, effect: Effect, topics: &[&str], edit: impl FnOnce(&mut Rule)) -> Rule {
    let mut rule = Rule::new(priority, effect, topics.iter().map(|t| TopicFilter::parse(t).unwrap()).collect());
    edit(&mut rule);
    rule
}

#[test]
fn a_decision_allocates_nothing() {
    // GIVEN rules with every kind of level and condition,
    let cidrs = |blocks: &[&str]| Some(blocks.iter().map(|b| b.parse::<Cidr>().unwrap()).collect());
    let acl = Acl::new(vec![
        rule(0, Effect::Deny, &["$SYS/#"], |_| {}),
        rule(1, Effect::Deny, &["devices/+/admin/#"], |r| r.client_ids = Some(vec![Glob::new("*-ro")])),
        rule(2, Effect::Allow, &["devices/dev-${client_id}/#", "users/${username}/+"], |r| {
            r.client_ids = Some(vec![Glob::new("cam-??"), Glob::new("sensor-*-é?")]);
            r.source_ips = cidrs(&["10.0.0.0/8", "2001:db8::/32"]);
        }),
        rule(3, Effect::Allow, &["home/#", "+/status"], |r| {
            r.usernames = Some(vec!["alice".into(), "bob".into()]);
            r.source_ips = cidrs(&["192.168.1.0/24"]);
        }),
        rule(4, Effect::Allow, &["#"], |r| r.usernames = Some(vec!["root".into()])),
    ]);
    let limits = TopicLimits { max_bytes: 256, max_slashes: None, basic_ingest: false };
    let topics: Vec<Topic> = [
        "devices/dev-cam-01/t",
        "devices/dev-cam-01/admin/x",
        "users/alice/inbox",
        "home/kitchen/light",
        "x/status",
        "$SYS/broker",
        "other/deep/topic/with/many/levels",
    ]
    .into_iter()
    .map(|t| Topic::parse(t.into(), limits).unwrap())
    .collect();
    let callers = [
        (Some("alice"), "cam-01", "10.1.2.3"),
        (Some("bob"), "sensor-7-éx", "192.168.1.9"),
        (None, "cam-ro", "::ffff:10.0.0.1"),
        (Some("root"), "x", "2001:db8::1"),
    ];
    let accesses: Vec<Access<'_>> = topics
        .iter()
        .flat_map(|topic| {
            callers.iter().map(move |&(username, client_id, ip)| Access {
                topic,
                username,
                client_id,
                source_ip: Some(ip.parse().unwrap()),
                qos: Qos::AtLeastOnce,
                retain: false,
                basic: username.is_some(),
                certificate: username.is_none(),
                action: Action::Publish,
            })
        })
        .collect();
    // WHEN the ACL decides each of them, a thousand times over,
    let before = allocations();
    let mut allowed = 0;
    for _ in 0..1_000 {
        for access in &accesses {
            allowed += usize::from(acl.decide(access) == Effect::Allow);
        }
    }
    // THEN nothing was allocated, and the decisions were not all the same.
    assert_eq!(allocations() - before, 0, "allocations during {} decisions", 1_000 * accesses.len());
    assert!(allowed > 0 && allowed < 1_000 * accesses.len());
}
