//! The ACL as a table: one line per request (who, client_id, source address,
//! topic, qos, retain → answer), each through the real service path (parse,
//! authenticate, authorize, publish) with the config below written to a file
//! and loaded as `CONFIG_FILE` is, publishing with the real IoT client to moto.
//! docs/api.md and docs/configuration.md are
//! what each line checks; the note at the end of a line says which promise.
// A test unwraps and prints: its failure, and what it saw, are its answer.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use bytes::Bytes;
use common::{iot_publisher, moto_url, recorded, start_recording, unique_app_name};
use http::{HeaderMap, HeaderValue, Method};
use mqtt_http_publish::config::Policy;
use mqtt_http_publish::contract::query::decode_query;
use mqtt_http_publish::contract::{ClientCertificate, HttpRequest, RequestPath};
use mqtt_http_publish::publish::iot::IotSettings;
use mqtt_http_publish::service::Service;

/// Rules written the way an operator writes them. Smaller priority first; the
/// first rule whose topics and conditions all hold decides; none is deny.
const RULES: &str = r##"
# Deny before allow: home/secret is closed even though home/# is open below.
[[rules]]
priority = -10
effect = "deny"
topics = ["home/secret/#"]

[[rules]]
priority = 10
effect = "allow"
topics = ["home", "home/#"]
usernames = ["alice", "bob"]

# Allow before deny: lab/open is open although lab/# is closed after it,
# and the allow at 22 is never reached (the deny at 21 decides first).
[[rules]]
priority = 20
effect = "allow"
topics = ["lab/open"]

[[rules]]
priority = 21
effect = "deny"
topics = ["lab/#"]

[[rules]]
priority = 22
effect = "allow"
topics = ["lab/#"]

# Placeholders, alone and inside a level.
[[rules]]
priority = 30
effect = "allow"
topics = ["users/${username}/#", "devices/${client_id}/#", "mix/${username}-${client_id}", "tele/dev-${client_id}/up"]

# $ topics: root may publish anywhere, but '#' does not reach $ topics;
# $SYS/broker/+ is an explicit grant.
[[rules]]
priority = 40
effect = "allow"
topics = ["#"]
usernames = ["root"]

[[rules]]
priority = 41
effect = "allow"
topics = ["$SYS/broker/+"]
usernames = ["root"]

[[rules]]
priority = 42
effect = "allow"
topics = ["+/status"]

# Source addresses.
[[rules]]
priority = 50
effect = "allow"
topics = ["net/v4"]
source_ips = ["10.1.2.0/24"]

[[rules]]
priority = 51
effect = "allow"
topics = ["net/one"]
source_ips = ["192.0.2.7/32"]

[[rules]]
priority = 52
effect = "allow"
topics = ["net/any4"]
source_ips = ["0.0.0.0/0"]

[[rules]]
priority = 53
effect = "allow"
topics = ["net/v6"]
source_ips = ["2001:db8:a::/48"]

[[rules]]
priority = 54
effect = "allow"
topics = ["net/any6"]
source_ips = ["::/0"]

[[rules]]
priority = 55
effect = "deny"
topics = ["net/guarded"]
source_ips = ["203.0.113.0/24", "198.51.100.99"]

[[rules]]
priority = 56
effect = "allow"
topics = ["net/guarded"]

# QoS and retain.
[[rules]]
priority = 60
effect = "allow"
topics = ["q/zero"]
qos = [0]

[[rules]]
priority = 61
effect = "allow"
topics = ["q/any"]
qos = [0, 1]

[[rules]]
priority = 62
effect = "allow"
topics = ["r/retained"]
retain = true

[[rules]]
priority = 63
effect = "allow"
topics = ["r/live"]
retain = false

[[rules]]
priority = 64
effect = "deny"
topics = ["r/state"]
retain = true

[[rules]]
priority = 65
effect = "allow"
topics = ["r/state"]

# How the caller authenticated.
[[rules]]
priority = 70
effect = "allow"
topics = ["a/cert"]
auth = "certificate"

[[rules]]
priority = 71
effect = "allow"
topics = ["a/basic"]
auth = "basic"

[[rules]]
priority = 72
effect = "allow"
topics = ["a/both"]
auth = "certificate"
usernames = ["alice"]

# client_id globs.
[[rules]]
priority = 80
effect = "allow"
topics = ["c/glob"]
client_ids = ["cam-*", "sensor-??"]
"##;

/// The users and their passwords (each hashed with `passwd`'s argon2id when the test starts).
const USERS: [(&str, &str); 4] =
    [("alice", "alice-pw-1"), ("bob", "bob-pw-2"), ("carol", "carol-pw-3"), ("root", "root-pw-4")];

/// How the caller authenticates.
#[derive(Debug, Clone, Copy)]
enum Who {
    /// Basic with the user's own password.
    User(&'static str),
    /// Basic with this password.
    UserWithPassword(&'static str, &'static str),
    /// A verified client certificate with this CN, no Basic header.
    Cert(&'static str),
    /// A certificate, and a `username` query value (which proves nothing).
    CertClaiming(&'static str, &'static str),
    /// A certificate (CN) and Basic (user) together.
    CertAndUser(&'static str, &'static str),
}
use Who::*;

/// What the service must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// 200: published.
    Published,
    /// 401 `not_authorized`: the ACL said no.
    Denied,
    /// 401 `authentication_failed`: the credentials did not verify.
    BadCredentials,
    /// 400 `invalid_topic`: not a topic name at all.
    BadTopic,
}
use Expect::*;

/// `-` means: no `client_id` query value (the default `http-{id}`, or the certificate's CN).
const NO_ID: &str = "-";
/// No `qos` / `retained` in the query: the defaults (1, false).
const DEF: Option<u8> = None;
const DEF_R: Option<bool> = None;

type Case = (Who, &'static str, &'static str, &'static str, Option<u8>, Option<bool>, Expect, &'static str);

#[rustfmt::skip]
const CASES: &[Case] = &[
    // who                      client_id    source ip                                topic                     qos      retain        → expected        why
    // -- deny before allow (priority -10 before 10), user lists, default deny
    (User("alice"),             NO_ID,       "10.0.0.1",                              "home",                   DEF,     DEF_R,        Published,      "allow 10: alice is listed"),
    (User("bob"),               NO_ID,       "10.0.0.1",                              "home/kitchen",           DEF,     DEF_R,        Published,      "allow 10: bob is listed, home/# below home"),
    (User("carol"),             NO_ID,       "10.0.0.1",                              "home",                   DEF,     DEF_R,        Denied,         "carol is in no user list: no rule matches, deny"),
    (User("alice"),             NO_ID,       "10.0.0.1",                              "home/secret",            DEF,     DEF_R,        Denied,         "deny -10 comes first; home/secret/# covers its parent"),
    (User("alice"),             NO_ID,       "10.0.0.1",                              "home/secret/key",        DEF,     DEF_R,        Denied,         "deny -10 before allow 10"),
    (User("alice"),             NO_ID,       "10.0.0.1",                              "home/secretive",         DEF,     DEF_R,        Published,      "home/secret/# is a level, not a prefix"),
    (User("alice"),             NO_ID,       "10.0.0.1",                              "office",                 DEF,     DEF_R,        Denied,         "no rule matches: deny"),
    (User("alice"),             NO_ID,       "10.0.0.1",                              "Home",                   DEF,     DEF_R,        Denied,         "topics are case-sensitive"),
    // -- allow before deny (20 before 21), and a shadowed allow (22)
    (User("carol"),             NO_ID,       "10.0.0.1",                              "lab/open",               DEF,     DEF_R,        Published,      "allow 20 before deny 21"),
    (User("carol"),             NO_ID,       "10.0.0.1",                              "lab/closed",             DEF,     DEF_R,        Denied,         "deny 21 before allow 22"),
    (User("carol"),             NO_ID,       "10.0.0.1",                              "lab",                    DEF,     DEF_R,        Denied,         "lab/# covers lab itself"),
    (User("root"),              NO_ID,       "10.0.0.1",                              "lab/closed",             DEF,     DEF_R,        Denied,         "deny 21 before root's # at 40"),
    (User("root"),              NO_ID,       "10.0.0.1",                              "home/secret",            DEF,     DEF_R,        Denied,         "deny -10 applies to root too"),
    // -- $ topics: wildcards in the first level never match them
    (User("root"),              NO_ID,       "10.0.0.1",                              "anything/at/all",        DEF,     DEF_R,        Published,      "root's # at 40"),
    (User("root"),              NO_ID,       "10.0.0.1",                              "$SYS/broker/load",       DEF,     DEF_R,        Published,      "explicit $SYS/broker/+ at 41"),
    (User("root"),              NO_ID,       "10.0.0.1",                              "$SYS/other",             DEF,     DEF_R,        Denied,         "# does not match a $ topic"),
    (User("root"),              NO_ID,       "10.0.0.1",                              "$SYS/broker/load/1min",  DEF,     DEF_R,        Denied,         "+ is exactly one level"),
    (User("root"),              NO_ID,       "10.0.0.1",                              "$aws/things/t1",         DEF,     DEF_R,        Denied,         "# does not match a $ topic"),
    (User("root"),              NO_ID,       "10.0.0.1",                              "a/$SYS",                 DEF,     DEF_R,        Published,      "$ below the first level is an ordinary level"),
    (User("alice"),             NO_ID,       "10.0.0.1",                              "x/status",               DEF,     DEF_R,        Published,      "+/status at 42"),
    (User("alice"),             NO_ID,       "10.0.0.1",                              "$SYS/status",            DEF,     DEF_R,        Denied,         "+ in the first level does not match $SYS"),
    (User("alice"),             NO_ID,       "10.0.0.1",                              "/status",                DEF,     DEF_R,        Published,      "+ matches an empty first level"),
    // -- placeholders: ${username}, ${client_id}, and both inside one level
    (User("alice"),             NO_ID,       "10.0.0.1",                              "users/alice/inbox",      DEF,     DEF_R,        Published,      "${username} is alice"),
    (User("alice"),             NO_ID,       "10.0.0.1",                              "users/alice",            DEF,     DEF_R,        Published,      "users/${username}/# covers its parent"),
    (User("alice"),             NO_ID,       "10.0.0.1",                              "users/bob/inbox",        DEF,     DEF_R,        Denied,         "${username} is not bob"),
    (User("alice"),             NO_ID,       "10.0.0.1",                              "users/+/inbox",          DEF,     DEF_R,        BadTopic,       "a wildcard in a topic name is refused before the ACL"),
    (User("alice"),             "cam-9",     "10.0.0.1",                              "devices/cam-9/t",        DEF,     DEF_R,        Published,      "${client_id} from the query"),
    (User("alice"),             "cam-9",     "10.0.0.1",                              "devices/cam-8/t",        DEF,     DEF_R,        Denied,         "another device's topic"),
    (User("alice"),             NO_ID,       "10.0.0.1",                              "devices/cam-9/t",        DEF,     DEF_R,        Denied,         "the default client_id is http-{id}"),
    (User("alice"),             "a.b",       "10.0.0.1",                              "devices/a.b/t",          DEF,     DEF_R,        Published,      "a dot in client_id is literal"),
    (User("alice"),             "a.b",       "10.0.0.1",                              "devices/aXb/t",          DEF,     DEF_R,        Denied,         "... not a pattern"),
    (User("alice"),             "cam-9",     "10.0.0.1",                              "mix/alice-cam-9",        DEF,     DEF_R,        Published,      "both placeholders in one level"),
    (User("alice"),             "cam-9",     "10.0.0.1",                              "mix/alice-cam-8",        DEF,     DEF_R,        Denied,         "the client_id part differs"),
    (User("bob"),               "cam-9",     "10.0.0.1",                              "mix/alice-cam-9",        DEF,     DEF_R,        Denied,         "the username part differs"),
    (User("alice"),             "cam-9",     "10.0.0.1",                              "tele/dev-cam-9/up",      DEF,     DEF_R,        Published,      "a placeholder inside a level"),
    (User("alice"),             "cam-9",     "10.0.0.1",                              "tele/cam-9/up",          DEF,     DEF_R,        Denied,         "the level's literal prefix is missing"),
    (Cert("cam-1"),             NO_ID,       "10.0.0.1",                              "devices/cam-1/t",        DEF,     DEF_R,        Published,      "the certificate's CN is ${client_id}"),
    (Cert("cam-1"),             "cam-1",     "10.0.0.1",                              "devices/cam-1/t",        DEF,     DEF_R,        Published,      "client_id equal to the CN"),
    (Cert("cam-1"),             NO_ID,       "10.0.0.1",                              "devices/cam-2/t",        DEF,     DEF_R,        Denied,         "another device's topic"),
    (CertClaiming("cam-1", "alice"), NO_ID,  "10.0.0.1",                              "users/alice/inbox",      DEF,     DEF_R,        Denied,         "a certificate has no username: ?username= proves nothing"),
    (CertClaiming("cam-1", "alice"), NO_ID,  "10.0.0.1",                              "home",                   DEF,     DEF_R,        Denied,         "... nor matches a usernames list"),
    // -- CIDR edges: first and last address, one outside on each side, /32, /0, IPv6
    (User("carol"),             NO_ID,       "10.1.2.0",                              "net/v4",                 DEF,     DEF_R,        Published,      "first address of 10.1.2.0/24"),
    (User("carol"),             NO_ID,       "10.1.2.255",                            "net/v4",                 DEF,     DEF_R,        Published,      "last address of 10.1.2.0/24"),
    (User("carol"),             NO_ID,       "10.1.1.255",                            "net/v4",                 DEF,     DEF_R,        Denied,         "one below the block"),
    (User("carol"),             NO_ID,       "10.1.3.0",                              "net/v4",                 DEF,     DEF_R,        Denied,         "one above the block"),
    (User("carol"),             NO_ID,       "::ffff:10.1.2.3",                       "net/v4",                 DEF,     DEF_R,        Published,      "an IPv4-mapped IPv6 peer is its IPv4 address"),
    (User("carol"),             NO_ID,       "192.0.2.7",                             "net/one",                DEF,     DEF_R,        Published,      "/32: the address itself"),
    (User("carol"),             NO_ID,       "192.0.2.6",                             "net/one",                DEF,     DEF_R,        Denied,         "/32: its neighbour below"),
    (User("carol"),             NO_ID,       "192.0.2.8",                             "net/one",                DEF,     DEF_R,        Denied,         "/32: its neighbour above"),
    (User("carol"),             NO_ID,       "0.0.0.0",                               "net/any4",               DEF,     DEF_R,        Published,      "0.0.0.0/0: the lowest address"),
    (User("carol"),             NO_ID,       "255.255.255.255",                       "net/any4",               DEF,     DEF_R,        Published,      "0.0.0.0/0: the highest address"),
    (User("carol"),             NO_ID,       "2001:db8::1",                           "net/any4",               DEF,     DEF_R,        Denied,         "0.0.0.0/0 holds no IPv6 address"),
    (User("carol"),             NO_ID,       "2001:db8:a::",                          "net/v6",                 DEF,     DEF_R,        Published,      "first address of 2001:db8:a::/48"),
    (User("carol"),             NO_ID,       "2001:db8:a:ffff:ffff:ffff:ffff:ffff",   "net/v6",                 DEF,     DEF_R,        Published,      "last address of 2001:db8:a::/48"),
    (User("carol"),             NO_ID,       "2001:db8:9:ffff:ffff:ffff:ffff:ffff",   "net/v6",                 DEF,     DEF_R,        Denied,         "one below the block"),
    (User("carol"),             NO_ID,       "2001:db8:b::",                          "net/v6",                 DEF,     DEF_R,        Denied,         "one above the block"),
    (User("carol"),             NO_ID,       "::1",                                   "net/any6",               DEF,     DEF_R,        Published,      "::/0 holds every IPv6 address"),
    (User("carol"),             NO_ID,       "127.0.0.1",                             "net/any6",               DEF,     DEF_R,        Denied,         "::/0 holds no IPv4 address"),
    (User("carol"),             NO_ID,       "203.0.113.200",                         "net/guarded",            DEF,     DEF_R,        Denied,         "deny by address at 55 before the allow at 56"),
    (User("carol"),             NO_ID,       "198.51.100.99",                         "net/guarded",            DEF,     DEF_R,        Denied,         "a bare address in source_ips is a /32"),
    (User("carol"),             NO_ID,       "198.51.100.98",                         "net/guarded",            DEF,     DEF_R,        Published,      "outside both: the deny does not match, 56 allows"),
    // -- qos and retain conditions
    (User("carol"),             NO_ID,       "10.0.0.1",                              "q/zero",                 Some(0), DEF_R,        Published,      "qos = [0]"),
    (User("carol"),             NO_ID,       "10.0.0.1",                              "q/zero",                 Some(1), DEF_R,        Denied,         "qos 1 is not in [0]"),
    (User("carol"),             NO_ID,       "10.0.0.1",                              "q/zero",                 DEF,     DEF_R,        Denied,         "the default qos is 1"),
    (User("carol"),             NO_ID,       "10.0.0.1",                              "q/any",                  Some(1), DEF_R,        Published,      "qos = [0, 1]"),
    (User("carol"),             NO_ID,       "10.0.0.1",                              "r/retained",             DEF,     Some(true),   Published,      "retain = true"),
    (User("carol"),             NO_ID,       "10.0.0.1",                              "r/retained",             DEF,     Some(false),  Denied,         "retain = true refuses a live message"),
    (User("carol"),             NO_ID,       "10.0.0.1",                              "r/retained",             DEF,     DEF_R,        Denied,         "the default is not retained"),
    (User("carol"),             NO_ID,       "10.0.0.1",                              "r/live",                 DEF,     DEF_R,        Published,      "retain = false"),
    (User("carol"),             NO_ID,       "10.0.0.1",                              "r/live",                 DEF,     Some(true),   Denied,         "retain = false refuses a retained message"),
    (User("carol"),             NO_ID,       "10.0.0.1",                              "r/state",                DEF,     Some(true),   Denied,         "deny retained at 64 before the allow at 65"),
    (User("carol"),             NO_ID,       "10.0.0.1",                              "r/state",                Some(0), Some(false),  Published,      "a live message skips the deny"),
    // -- certificate vs basic (auth = ...)
    (Cert("cam-1"),             NO_ID,       "10.0.0.1",                              "a/cert",                 DEF,     DEF_R,        Published,      "auth = certificate"),
    (User("alice"),             NO_ID,       "10.0.0.1",                              "a/cert",                 DEF,     DEF_R,        Denied,         "Basic is not a certificate"),
    (User("alice"),             NO_ID,       "10.0.0.1",                              "a/basic",                DEF,     DEF_R,        Published,      "auth = basic"),
    (Cert("cam-1"),             NO_ID,       "10.0.0.1",                              "a/basic",                DEF,     DEF_R,        Denied,         "a certificate is not Basic"),
    (CertAndUser("cam-1", "alice"), NO_ID,   "10.0.0.1",                              "a/both",                 DEF,     DEF_R,        Published,      "certificate and alice's Basic together"),
    (CertAndUser("cam-1", "alice"), NO_ID,   "10.0.0.1",                              "a/basic",                DEF,     DEF_R,        Published,      "with both, auth = basic holds too"),
    (Cert("cam-1"),             NO_ID,       "10.0.0.1",                              "a/both",                 DEF,     DEF_R,        Denied,         "the certificate alone has no username"),
    (User("alice"),             NO_ID,       "10.0.0.1",                              "a/both",                 DEF,     DEF_R,        Denied,         "Basic alone is no certificate"),
    (CertAndUser("cam-1", "bob"), NO_ID,     "10.0.0.1",                              "a/both",                 DEF,     DEF_R,        Denied,         "bob is not in the user list"),
    // -- client_id globs
    (User("carol"),             "cam-1",     "10.0.0.1",                              "c/glob",                 DEF,     DEF_R,        Published,      "cam-*"),
    (User("carol"),             "cam-",      "10.0.0.1",                              "c/glob",                 DEF,     DEF_R,        Published,      "* matches nothing too"),
    (User("carol"),             "xcam-1",    "10.0.0.1",                              "c/glob",                 DEF,     DEF_R,        Denied,         "a glob matches the whole client_id"),
    (User("carol"),             "sensor-07", "10.0.0.1",                              "c/glob",                 DEF,     DEF_R,        Published,      "sensor-?? : two characters"),
    (User("carol"),             "sensor-7",  "10.0.0.1",                              "c/glob",                 DEF,     DEF_R,        Denied,         "sensor-?? : one is too few"),
    (Cert("sensor-42"),         NO_ID,       "10.0.0.1",                              "c/glob",                 DEF,     DEF_R,        Published,      "the CN is the client_id the glob sees"),
    // -- authentication comes before the ACL
    (UserWithPassword("root", "alice-pw-1"), NO_ID, "10.0.0.1",                       "anything",               DEF,     DEF_R,        BadCredentials, "another user's password"),
    (UserWithPassword("mallory", "root-pw-4"), NO_ID, "10.0.0.1",                     "anything",               DEF,     DEF_R,        BadCredentials, "an unknown user"),
    (UserWithPassword("Alice", "alice-pw-1"), NO_ID, "10.0.0.1",                      "home",                   DEF,     DEF_R,        BadCredentials, "user names are case-sensitive"),
];

fn basic(user: &str, password: &str) -> HeaderValue {
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    HeaderValue::from_str(&format!("Basic {token}")).unwrap()
}

fn password_of(user: &str) -> &'static str {
    USERS.iter().find(|(u, _)| *u == user).map(|(_, p)| *p).unwrap_or_else(|| panic!("{user} is not in USERS"))
}

/// The request a client (or API Gateway's event) would hand the service for `case`.
fn request(case: &Case) -> HttpRequest {
    let (who, client_id, ip, topic, qos, retain, _, _) = *case;
    let mut headers = HeaderMap::new();
    let mut query = Vec::new();
    let mut certificate = None;
    match who {
        User(u) => drop(headers.insert("authorization", basic(u, password_of(u)))),
        UserWithPassword(u, p) => drop(headers.insert("authorization", basic(u, p))),
        Cert(cn) => certificate = Some(cn),
        CertClaiming(cn, u) => {
            certificate = Some(cn);
            query.push(format!("username={u}"));
        }
        CertAndUser(cn, u) => {
            certificate = Some(cn);
            headers.insert("authorization", basic(u, password_of(u)));
        }
    }
    if client_id != NO_ID {
        query.push(format!("client_id={client_id}"));
    }
    if let Some(qos) = qos {
        query.push(format!("qos={qos}"));
    }
    if let Some(retain) = retain {
        query.push(format!("retained={retain}"));
    }
    HttpRequest {
        method: Method::POST,
        path: RequestPath::Encoded(format!("/topics/{topic}")),
        query: decode_query(&query.join("&")).unwrap(),
        headers,
        body: Bytes::from_static(b"acl"),
        source_ip: Some(ip.parse().unwrap_or_else(|_| panic!("{ip} is an address"))),
        client_certificate: certificate.map(|cn| ClientCertificate { common_name: Some(cn.to_owned()) }),
    }
}

/// The config file: the users (hashed as `passwd` hashes) and [`RULES`].
fn write_config() -> std::path::PathBuf {
    let mut text = String::new();
    for (user, password) in USERS {
        let hash = mqtt_http_publish::auth::hash_argon2id(password.as_bytes());
        text.push_str(&format!("[[users]]\nusername = \"{user}\"\npassword_hash = \"{hash}\"\n\n"));
    }
    text.push_str(RULES);
    let path = std::env::temp_dir().join(format!("mhp-acl-matrix-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_matrix_has_at_least_50_cases_and_its_config_loads_whole() {
    assert!(CASES.len() >= 50, "{} cases", CASES.len());
    let policy = Policy::from_toml(&std::fs::read_to_string(write_config()).unwrap()).unwrap();
    let priorities: Vec<i64> = policy.rules.acl.rules().iter().map(|r| r.priority).collect();
    assert_eq!(priorities.len(), RULES.matches("[[rules]]").count());
}

#[tokio::test]
async fn every_case_of_the_matrix_gets_its_answer_and_only_the_200s_publish() {
    let moto = moto_url();
    start_recording(&moto).await;
    let app = unique_app_name("acl-matrix");
    let policy = Policy::load(&write_config()).expect("the matrix config loads");
    let service = Service::new(iot_publisher(&moto, &app, IotSettings::default()).await, policy);

    let mut wrong = Vec::new();
    let mut published = Vec::new();
    for (line, case) in CASES.iter().enumerate() {
        let response = service.handle(request(case)).await;
        let status = response.status().as_u16();
        let code = serde_json::from_slice::<serde_json::Value>(response.body())
            .ok()
            .and_then(|body| body["error"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let got = match (status, code.as_str()) {
            (200, _) => Some(Published),
            (401, "not_authorized") => Some(Denied),
            (401, "authentication_failed") => Some(BadCredentials),
            (400, "invalid_topic") => Some(BadTopic),
            _ => None,
        };
        let expected = case.6;
        if got != Some(expected) {
            wrong.push(format!("case {line}: {case:?}\n    expected {expected:?}, got {status} {code:?}"));
        }
        if status == 200 {
            published.push(case.3.to_owned());
        }
    }
    assert!(wrong.is_empty(), "{} of {} cases disagree:\n{}", wrong.len(), CASES.len(), wrong.join("\n"));

    let sent: Vec<String> = recorded(&moto, &app).await.iter().map(|r| r.topic()).collect();
    assert_eq!(sent, published, "exactly one publish per 200, in order, and none for a refusal");
}
