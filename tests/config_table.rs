//! The config table on moto's DynamoDB: the Lambda handler authenticating and
//! authorizing from it, its caches and their TTL, outages, and the commands
//! that manage it.
// A test unwraps and prints: its failure, and what it saw, are its answer.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{
    create_config_table, example_service, iot_publisher, moto_url, recorded, sdk_config_for, start_recording,
    unique_app_name, OwnMoto,
};
use mqtt_http_publish::config::manage::{new_user, Home};
use mqtt_http_publish::config::source::{CacheSettings, CachedTable, RETRY_AFTER_FAILURE};
use mqtt_http_publish::config::table::{config_items, TableStore};
use mqtt_http_publish::config::UserEntry;
use mqtt_http_publish::config::{parse_toml, ConfigFile, EffectEntry, RuleEntry};
use mqtt_http_publish::lambda;
use mqtt_http_publish::publish::iot::{IotPublisher, IotSettings};
use mqtt_http_publish::service::Service;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-http-publish");
const EXAMPLE: &str = include_str!("../config/example.toml");

/// An HTTP API event publishing to `topic` as `user:password`.
fn event(user: &str, password: &str, topic: &str) -> lambda::Event {
    serde_json::from_value(event_json(user, password, topic)).unwrap()
}

fn event_json(user: &str, password: &str, topic: &str) -> Value {
    use base64::Engine;
    let mut event: Value = serde_json::from_str(include_str!("../events/example-1-basic-auth.json")).unwrap();
    let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    event["headers"]["authorization"] = Value::String(format!("Basic {credentials}"));
    event["rawPath"] = Value::String(format!("/topics/{topic}"));
    event
}

/// As [`event`], with `payload` as the body.
fn event_with_body(user: &str, password: &str, topic: &str, payload: &str) -> lambda::Event {
    let mut event = event_json(user, password, topic);
    event["body"] = Value::String(payload.to_owned());
    event["isBase64Encoded"] = Value::Bool(false);
    event["headers"]["content-length"] = Value::String(payload.len().to_string());
    serde_json::from_value(event).unwrap()
}

async fn status(service: &Service<IotPublisher>, event: lambda::Event) -> u64 {
    let response = lambda::handle(service, event, None).await.unwrap();
    serde_json::to_value(response).unwrap()["statusCode"].as_u64().unwrap()
}

/// A service reading `table` on `dynamodb`, publishing to the suite's moto.
async fn table_service(dynamodb: &str, table: &str, settings: CacheSettings) -> Service<IotPublisher> {
    tagged_table_service(dynamodb, table, settings, &unique_app_name("table")).await
}

/// As [`table_service`], its publishes tagged `app` so that moto's recording shows them.
async fn tagged_table_service(
    dynamodb: &str,
    table: &str,
    settings: CacheSettings,
    app: &str,
) -> Service<IotPublisher> {
    let publisher = iot_publisher(&moto_url(), app, IotSettings::default()).await;
    let store = TableStore::new(&sdk_config_for(dynamodb).await, table);
    Service::with_store(publisher, Arc::new(CachedTable::new(store, settings)))
}

async fn push(dynamodb: &str, table: &str, config: &ConfigFile) {
    let store = TableStore::new(&sdk_config_for(dynamodb).await, table);
    store.write(config_items(config).into_values().collect(), Vec::new()).await.unwrap();
}

fn unique_table(name: &str) -> String {
    format!("{}-{}", unique_app_name(name), std::process::id())
}

fn allow(priority: i64, topic: &str, users: &[&str]) -> RuleEntry {
    RuleEntry {
        priority,
        effect: EffectEntry::Allow,
        topics: vec![topic.into()],
        usernames: Some(users.iter().map(|u| u.to_string()).collect()),
        client_ids: None,
        source_ips: None,
        qos: None,
        retain: None,
        auth: None,
        actions: None,
    }
}

/// Runs the binary with the suite's AWS variables and DynamoDB at `dynamodb`.
fn cli(args: &[&str], stdin: &str, dynamodb: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(args)
        .env("AWS_ENDPOINT_URL_DYNAMODB", dynamodb)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    common::keep_log("cli-config-table", &[&out.stdout[..], &out.stderr[..]].concat());
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[tokio::test]
async fn the_handler_authenticates_and_authorizes_from_a_pushed_table() {
    let moto = moto_url();
    let table = unique_table("push");
    create_config_table(&moto, &table).await;
    let (ok, out, err) =
        cli(&["config", "push", "config/example.toml", "--table", &table, "--allow-demo-user"], "", &moto);
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["add cors", "add limits", "add rule 10", "add rule 20", "add rule 30", "add rule 40", "add user user0"]
    );

    let service = table_service(&moto, &table, CacheSettings::default()).await;
    let rules = service.config().rules().await.unwrap();
    assert!(rules.cors.as_ref().is_some_and(|c| c.allows("http://localhost:9090")), "[cors] from its item");
    assert_eq!(status(&service, event("user0", "secret0", "home/kitchen")).await, 200);
    assert_eq!(status(&service, event("user0", "wrong", "home")).await, 401);
    assert_eq!(status(&service, event("nobody", "secret0", "home")).await, 401);
    assert_eq!(status(&service, event("user0", "secret0", "home/admin/door")).await, 401, "deny rule 10");
    assert_eq!(status(&service, event("user0", "secret0", "office")).await, 401, "no rule: deny");
}

#[tokio::test]
async fn a_changed_password_and_a_removed_rule_take_effect_once_refreshed_after_the_ttl_and_not_before() {
    let moto = moto_url();
    let table = unique_table("ttl");
    create_config_table(&moto, &table).await;
    push(&moto, &table, &parse_toml(EXAMPLE).unwrap()).await;
    let ttl = Duration::from_millis(1500);
    let service = table_service(&moto, &table, CacheSettings { ttl, stale_max: Duration::from_secs(60) }).await;
    assert_eq!(status(&service, event("user0", "secret0", "home")).await, 200);

    let home = Home::Table(TableStore::new(&sdk_config_for(&moto).await, &table));
    home.set_users(&[new_user("user0", "secret-new")]).await.unwrap();
    let store = TableStore::new(&sdk_config_for(&moto).await, &table);
    store.write(Vec::new(), vec![("acl".into(), "rule#30".into())]).await.unwrap();
    assert_eq!(status(&service, event("user0", "secret0", "home")).await, 200, "before the TTL: the cached copy");
    assert_eq!(status(&service, event("user0", "secret-new", "home")).await, 401, "before the TTL: not yet");

    tokio::time::sleep(ttl).await;
    // The first request after the TTL is answered from the held copy, at once, and refreshes it.
    assert_eq!(status(&service, event("user0", "secret0", "home")).await, 200, "after the TTL: served while refreshed");
    assert!(
        eventually(|| async { status(&service, event("user0", "secret-new", "home")).await == 200 }).await,
        "after the refresh: the new password works"
    );
    assert_eq!(
        status(&service, event("user0", "secret0", "home")).await,
        401,
        "after the refresh: the old one is gone"
    );

    store.write(Vec::new(), vec![("acl".into(), "rule#20".into())]).await.unwrap();
    assert_eq!(status(&service, event("user0", "secret-new", "home")).await, 200, "rule 20 still cached");
    tokio::time::sleep(ttl).await;
    assert!(
        eventually(|| async { status(&service, event("user0", "secret-new", "home")).await == 401 }).await,
        "rule 20 removed: no match once the rules are refreshed"
    );
}

/// Whether `check` comes true within two seconds, asked every 50 ms.
async fn eventually<F, Fut>(check: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < until {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn with_dynamodb_stopped_cached_users_keep_working_and_an_uncached_user_gets_503_then_it_recovers() {
    let mut dynamodb = OwnMoto::start().await;
    let table = unique_table("outage");
    let config = ConfigFile {
        users: vec![new_user("user0", "secret0"), new_user("dev1", "pw1")],
        rules: vec![allow(1, "home/#", &["user0", "dev1"])],
        ..ConfigFile::default()
    };
    create_config_table(&dynamodb.url, &table).await;
    push(&dynamodb.url, &table, &config).await;
    let ttl = Duration::from_millis(300);
    let service = table_service(&dynamodb.url, &table, CacheSettings { ttl, stale_max: Duration::from_secs(60) }).await;
    assert_eq!(status(&service, event("user0", "secret0", "home")).await, 200);

    dynamodb.stop();
    tokio::time::sleep(ttl).await;
    assert_eq!(status(&service, event("user0", "secret0", "home")).await, 200, "served from the last good copy");
    tokio::time::sleep(RETRY_AFTER_FAILURE).await;
    assert_eq!(status(&service, event("dev1", "pw1", "home")).await, 503, "an outage is never a wrong password");
    assert_eq!(status(&service, event("user0", "secret0", "home")).await, 200);

    dynamodb.restart().await;
    create_config_table(&dynamodb.url, &table).await;
    push(&dynamodb.url, &table, &config).await;
    tokio::time::sleep(RETRY_AFTER_FAILURE).await;
    assert_eq!(status(&service, event("dev1", "pw1", "home")).await, 200, "recovered once the table is back");
}

/// Publishes `rounds` messages from each of `users` at once, the payload naming `phase`, user and
/// round; returns each payload with its status. A user's password is `pw-{user}`.
async fn publish_all(service: &Arc<Service<IotPublisher>>, phase: &str, users: &[&str]) -> Vec<(String, u64)> {
    let mut requests = tokio::task::JoinSet::new();
    for round in 0..4 {
        for user in users {
            let payload = format!("{phase}-{user}-{round}");
            let event = event_with_body(user, &format!("pw-{user}"), "home/outage", &payload);
            let service = Arc::clone(service);
            requests.spawn(async move { (payload, status(&service, event).await) });
        }
    }
    let mut answers = Vec::new();
    while let Some(answer) = requests.join_next().await {
        answers.push(answer.unwrap());
    }
    answers
}

#[tokio::test]
async fn through_a_dynamodb_outage_a_200_is_sent_only_for_a_message_iot_received_and_after_it_everything_arrives() {
    // GIVEN a table service whose publishes moto's recorder sees, with user0 cached and dev1..dev3 not
    let moto = moto_url();
    start_recording(&moto).await;
    let mut dynamodb = OwnMoto::start().await;
    let table = unique_table("outage-ledger");
    let everyone = ["user0", "dev1", "dev2", "dev3"];
    let config = ConfigFile {
        users: everyone.iter().map(|u| new_user(u, &format!("pw-{u}"))).collect(),
        rules: vec![allow(1, "home/#", &everyone)],
        ..ConfigFile::default()
    };
    create_config_table(&dynamodb.url, &table).await;
    push(&dynamodb.url, &table, &config).await;
    let app = unique_app_name("outage-ledger");
    let ttl = Duration::from_millis(300);
    let settings = CacheSettings { ttl, stale_max: Duration::from_secs(60) };
    let service = Arc::new(tagged_table_service(&dynamodb.url, &table, settings, &app).await);
    let mut answers = publish_all(&service, "before", &["user0"]).await;
    assert!(answers.iter().all(|(_, s)| *s == 200), "{answers:?}");

    // WHEN DynamoDB stops, and the cached user and the uncached devices publish at once
    dynamodb.stop();
    tokio::time::sleep(ttl).await;
    let during = publish_all(&service, "outage", &everyone).await;
    // THEN the cached user is served from the last good copy, a device is 503 (never 401)
    for (payload, status) in &during {
        let expected = if payload.starts_with("outage-user0-") { 200 } else { 503 };
        assert_eq!(*status, expected, "{payload}");
    }
    answers.extend(during);

    // WHEN DynamoDB is back (empty, as a restarted moto is) and the config pushed again
    dynamodb.restart().await;
    create_config_table(&dynamodb.url, &table).await;
    push(&dynamodb.url, &table, &config).await;
    tokio::time::sleep(RETRY_AFTER_FAILURE).await;
    let after = publish_all(&service, "after", &everyone).await;
    // THEN everyone gets 200
    assert!(after.iter().all(|(_, s)| *s == 200), "{after:?}");
    answers.extend(after);

    // AND the messages IoT received are exactly the 200s: none lost, none answered 200 unsent
    let ok: BTreeSet<String> = answers.iter().filter(|(_, s)| *s == 200).map(|(p, _)| p.clone()).collect();
    let received: BTreeSet<String> = recorded(&moto, &app)
        .await
        .into_iter()
        .filter(|r| r.method == "POST" && r.path_and_query.starts_with("/topics/"))
        .map(|r| String::from_utf8(r.body).unwrap())
        .collect();
    assert_eq!(received, ok);
    assert_eq!(ok.len(), 4 + 4 + 16);
}

#[tokio::test]
async fn with_nothing_cached_and_the_store_down_every_request_is_503() {
    let mut dynamodb = OwnMoto::start().await;
    let service = table_service(&dynamodb.url, "absent", CacheSettings::default()).await;
    dynamodb.stop();
    let response = lambda::handle(&service, event("user0", "secret0", "home"), None).await.unwrap();
    let response = serde_json::to_value(response).unwrap();
    assert_eq!(response["statusCode"], 503);
    assert_eq!(response["headers"]["retry-after"], "5");
}

#[tokio::test]
async fn the_demo_user_never_reaches_a_table_unless_allowed() {
    // GIVEN an empty table and the example config, whose user0 has the public password secret0
    let moto = moto_url();
    let table = unique_table("demo");
    create_config_table(&moto, &table).await;
    let example = parse_toml(EXAMPLE).unwrap();
    assert_eq!(example.users[0].password_hash, mqtt_http_publish::config::DEMO_PASSWORD_HASH);

    // WHEN it is pushed, dry run or not, THEN it is refused, naming the user and the way out
    for dry_run in [false, true] {
        let mut args = vec!["config", "push", "config/example.toml", "--table", &table];
        if dry_run {
            args.push("--dry-run");
        }
        let (ok, out, err) = cli(&args, "", &moto);
        assert!(!ok, "refused: {out}");
        assert!(err.contains("user0") && err.contains("--allow-demo-user"), "{err}");
        assert!(!err.contains("secret0"), "the refusal names the user, never the password: {err}");
    }
    let (_, pulled, _) = cli(&["config", "pull", "--table", &table], "", &moto);
    assert_eq!(parse_toml(&pulled).unwrap(), ConfigFile::default(), "nothing was written");

    // AND a file is no live API: pushing it there needs no flag
    let file = std::env::temp_dir().join(format!("{table}-file.toml"));
    std::fs::write(&file, "").unwrap();
    let (ok, _, err) = cli(&["config", "push", "config/example.toml", "--file", file.to_str().unwrap()], "", &moto);
    assert!(ok, "{err}");
    std::fs::remove_file(&file).unwrap();

    // AND the same users with a password of their own go through
    let own = EXAMPLE.replace(
        mqtt_http_publish::config::DEMO_PASSWORD_HASH,
        &mqtt_http_publish::auth::hash_argon2id(b"a password of its own"),
    );
    let file = std::env::temp_dir().join(format!("{table}-own.toml"));
    std::fs::write(&file, own).unwrap();
    let (ok, out, err) = cli(&["config", "push", file.to_str().unwrap(), "--table", &table], "", &moto);
    assert!(ok, "{err}");
    assert!(out.contains("add user user0"), "{out}");
    std::fs::remove_file(&file).unwrap();
}

#[tokio::test]
async fn push_then_pull_round_trips_and_a_second_push_changes_nothing() {
    let moto = moto_url();
    let table = unique_table("roundtrip");
    create_config_table(&moto, &table).await;
    let (ok, out, _) =
        cli(&["config", "push", "config/example.toml", "--table", &table, "--dry-run", "--allow-demo-user"], "", &moto);
    assert!(ok && out.lines().all(|l| l.starts_with("would add")), "{out}");
    let (_, pulled, _) = cli(&["config", "pull", "--table", &table], "", &moto);
    assert_eq!(parse_toml(&pulled).unwrap(), ConfigFile::default(), "a dry run writes nothing");

    cli(&["config", "push", "config/example.toml", "--table", &table, "--allow-demo-user"], "", &moto);
    let (ok, pulled, err) = cli(&["config", "pull", "--table", &table], "", &moto);
    assert!(ok, "{err}");
    let mut expected = parse_toml(EXAMPLE).unwrap();
    expected.rules.sort_by_key(|r| r.priority);
    assert_eq!(parse_toml(&pulled).unwrap(), expected);

    let file = std::env::temp_dir().join(format!("{table}.toml"));
    std::fs::write(&file, &pulled).unwrap();
    let push = ["config", "push", file.to_str().unwrap(), "--table", &table, "--allow-demo-user"];
    let (ok, out, _) = cli(&push, "", &moto);
    assert!(ok);
    assert_eq!(out.trim(), "no changes");

    std::fs::write(&file, pulled.replace("\"home/admin/#\"", "\"home/secret/#\"")).unwrap();
    let (_, out, _) = cli(&push, "", &moto);
    assert_eq!(out.trim(), "change rule 10");
    std::fs::remove_file(file).unwrap();
}

#[tokio::test]
async fn user_set_and_remove_work_on_a_table() {
    let moto = moto_url();
    let table = unique_table("user");
    create_config_table(&moto, &table).await;
    let (ok, out, err) = cli(&["user", "set", "dev7", "--table", &table], "pw7\n", &moto);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "add user dev7");
    let (_, out, _) = cli(&["user", "set", "dev7", "--table", &table], "pw8\n", &moto);
    assert_eq!(out.trim(), "change user dev7");
    let store = TableStore::new(&sdk_config_for(&moto).await, &table);
    let user = store.user("dev7").await.unwrap().unwrap();
    assert!(mqtt_http_publish::auth::StoredHash::parse(&user.password_hash).unwrap().verify(b"pw8"));
    let (_, out, _) = cli(&["user", "remove", "dev7", "--table", &table], "", &moto);
    assert_eq!(out.trim(), "delete user dev7");
    assert_eq!(store.user("dev7").await.unwrap(), None);
    let (ok, _, err) = cli(&["user", "remove", "dev7", "--table", &table], "", &moto);
    assert!(!ok && err.contains("no user"), "{err}");
}

/// Writes a password file with Debian's mosquitto_passwd, one user per format it can write.
fn mosquitto_passwd_file(dir: &Path) -> std::path::PathBuf {
    let file = dir.join("passwd");
    for (i, (format, user, password)) in
        [("sha512", "u6", "secret6"), ("sha512-pbkdf2", "u7", "secret7")].iter().enumerate()
    {
        let mut args = vec!["-b", "-H", format];
        if i == 0 {
            args.push("-c");
        }
        let file_arg = file.to_str().unwrap();
        args.extend([file_arg, user, password]);
        let out =
            Command::new("mosquitto_passwd").args(&args).output().expect("mosquitto_passwd (scripts/test installs it)");
        assert!(out.status.success(), "mosquitto_passwd {args:?}: {out:?}");
    }
    file
}

#[tokio::test]
async fn a_mosquitto_password_file_imports_into_users_that_authenticate() {
    let moto = moto_url();
    let table = unique_table("mosquitto");
    create_config_table(&moto, &table).await;
    let dir = std::env::temp_dir().join(&table);
    std::fs::create_dir_all(&dir).unwrap();
    let file = mosquitto_passwd_file(&dir);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("u6:$6$") && text.contains("u7:$7$"), "{text}");
    // Mosquitto 2.1 writes argon2id PHC lines; Debian's 2.0 cannot, so one is added by hand.
    let argon = mqtt_http_publish::auth::hash_argon2id(b"secret-a");
    std::fs::write(&file, format!("{text}ua:{argon}\n")).unwrap();

    let (ok, out, err) = cli(&["config", "import-mosquitto", file.to_str().unwrap(), "--table", &table], "", &moto);
    assert!(ok, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["add user u6", "add user u7", "add user ua"]);
    push(&moto, &table, &ConfigFile { rules: vec![allow(1, "home", &["u6", "u7", "ua"])], ..ConfigFile::default() })
        .await;

    let service = table_service(&moto, &table, CacheSettings::default()).await;
    for (user, password) in [("u6", "secret6"), ("u7", "secret7"), ("ua", "secret-a")] {
        assert_eq!(status(&service, event(user, password, "home")).await, 200, "{user}");
        assert_eq!(status(&service, event(user, "wrong", "home")).await, 401, "{user}");
    }
    let (ok, toml, _) = cli(&["config", "import-mosquitto", file.to_str().unwrap()], "", &moto);
    assert!(ok && toml.matches("[[users]]").count() == 3, "{toml}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_file_service_and_a_table_service_answer_alike() {
    let moto = moto_url();
    let table = unique_table("alike");
    create_config_table(&moto, &table).await;
    push(&moto, &table, &parse_toml(EXAMPLE).unwrap()).await;
    let from_table = table_service(&moto, &table, CacheSettings::default()).await;
    let from_file = example_service(iot_publisher(&moto, &unique_app_name("file"), IotSettings::default()).await);
    for (user, password, topic) in
        [("user0", "secret0", "home"), ("user0", "x", "home"), ("user0", "secret0", "home/admin/x")]
    {
        assert_eq!(
            status(&from_table, event(user, password, topic)).await,
            status(&from_file, event(user, password, topic)).await
        );
    }
}

/// A file of `users` users sharing the hash of one password (so that thousands cost one
/// argon2id hash), and of `rules`; returns its path.
fn write_config(name: &str, users: usize, rules: Vec<RuleEntry>) -> std::path::PathBuf {
    let hash = mqtt_http_publish::auth::hash_argon2id(b"a password of their own");
    let users = (0..users).map(|n| UserEntry { username: format!("dev{n:05}"), password_hash: hash.clone() }).collect();
    let file = std::env::temp_dir().join(format!("{name}.toml"));
    std::fs::write(&file, toml::to_string(&ConfigFile { users, rules, ..ConfigFile::default() }).unwrap()).unwrap();
    file
}

/// stderr's lines with the seconds of "done in N s" left out, which vary.
fn progress_lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .map(|l| l.split_once(", done in ").map_or(l.to_owned(), |(step, _)| format!("{step}, done")))
        .collect()
}

#[tokio::test]
async fn a_push_of_thousands_of_items_tells_its_progress_on_stderr_and_only_the_changes_on_stdout() {
    // GIVEN a table holding 1 500 rules that the file to push no longer has
    let moto = moto_url();
    let table = unique_table("progress");
    create_config_table(&moto, &table).await;
    let old =
        ConfigFile { rules: (5000..6500).map(|p| allow(p, "old/#", &["dev00000"])).collect(), ..ConfigFile::default() };
    push(&moto, &table, &old).await;
    let file = write_config(&table, 2500, (1..=500).map(|p| allow(p, "devices/#", &["dev00000"])).collect());

    // WHEN it is pushed with stderr a pipe, as in CI or a log
    let (ok, out, err) = cli(&["config", "push", file.to_str().unwrap(), "--table", &table], "", &moto);

    // THEN stdout holds the changes and nothing else: 3 000 adds, then 1 500 deletes
    assert!(ok, "{err}");
    let changes: Vec<&str> = out.lines().collect();
    assert_eq!(changes.len(), 4500, "{out}");
    assert!(
        changes[..3000].iter().all(|c| c.starts_with("add "))
            && changes[3000..].iter().all(|c| c.starts_with("delete rule "))
    );
    // AND stderr a plain line per thousand items and one per finished step: read, write, then delete
    assert_eq!(
        progress_lines(&err),
        [
            format!("reading table {table}: 1000 items"),
            format!("reading table {table}: 1501 items, done"),
            format!("writing to table {table}: 1000 of 3000 items"),
            format!("writing to table {table}: 2000 of 3000 items"),
            format!("writing to table {table}: 3000 of 3000 items, done"),
            format!("deleting from table {table}: 1000 of 1500 items"),
            format!("deleting from table {table}: 1500 of 1500 items, done"),
        ]
    );

    // AND a pull prints the file's config as TOML on stdout, its progress on stderr
    let (ok, pulled, err) = cli(&["config", "pull", "--table", &table], "", &moto);
    assert!(ok, "{err}");
    assert_eq!(parse_toml(&pulled).unwrap(), parse_toml(&std::fs::read_to_string(&file).unwrap()).unwrap());
    assert_eq!(progress_lines(&err).last().unwrap(), &format!("reading table {table}: 3001 items, done"));
    std::fs::remove_file(file).unwrap();
}

#[tokio::test]
async fn a_write_dynamodb_refuses_is_named_nothing_is_deleted_before_it_and_a_rerun_finishes_the_push() {
    // GIVEN a table holding 100 users that the file to push no longer has
    let moto = moto_url();
    let table = unique_table("refused");
    create_config_table(&moto, &table).await;
    let hash = mqtt_http_publish::auth::hash_argon2id(b"old");
    let old = (0..100).map(|n| UserEntry { username: format!("old{n}"), password_hash: hash.clone() }).collect();
    push(&moto, &table, &ConfigFile { users: old, ..ConfigFile::default() }).await;
    // AND a file of 1 000 rules, rule 500 over DynamoDB's 400 KB item limit
    let rules = |huge: bool| -> Vec<RuleEntry> {
        (1..=1000)
            .map(|p| match (p, huge) {
                (500, true) => RuleEntry {
                    topics: (0..5).map(|n| format!("big/{n}/{}", "x".repeat(100_000))).collect(),
                    ..allow(p, "", &["dev00000"])
                },
                _ => allow(p, "devices/#", &["dev00000"]),
            })
            .collect()
    };
    let file = write_config(&table, 1, rules(true));

    // WHEN it is pushed
    let push_args = ["config", "push", file.to_str().unwrap(), "--table", &table];
    let (ok, out, err) = cli(&push_args, "", &moto);

    // THEN it fails naming that rule and DynamoDB's reason
    assert!(!ok && out.is_empty(), "{out}");
    assert!(err.contains("cannot write rule 500: ValidationException: Item size has exceeded"), "{err}");
    // AND the table keeps every user it had, beside the rules written before the refusal
    let store = TableStore::new(&sdk_config_for(&moto).await, &table);
    let items = store.items().await.unwrap();
    assert_eq!(items.keys().filter(|(pk, _)| pk.starts_with("user#old")).count(), 100, "nothing deleted");
    let written = items.keys().filter(|(_, sk)| sk.starts_with("rule#")).count();
    assert!(written > 0 && written < 1000, "{written} rules written");

    // WHEN rule 500 is made small and the push run again
    let file = write_config(&table, 1, rules(false));
    let (ok, out, err) = cli(&push_args, "", &moto);

    // THEN it writes only what the first run did not, deletes the old users, and the table is the file
    assert!(ok, "{err}");
    let adds = out.lines().filter(|l| l.starts_with("add rule ")).count();
    assert_eq!(adds, 1000 - written, "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("delete user old")).count(), 100);
    let (_, pulled, _) = cli(&["config", "pull", "--table", &table], "", &moto);
    assert_eq!(parse_toml(&pulled).unwrap(), parse_toml(&std::fs::read_to_string(&file).unwrap()).unwrap());
    std::fs::remove_file(file).unwrap();
}

#[tokio::test]
async fn cors_and_publish_travel_through_the_table_to_the_handler_and_back() {
    let moto = moto_url();
    let table = unique_table("publish");
    create_config_table(&moto, &table).await;
    let file = std::env::temp_dir().join(format!("mhp-publish-{}.toml", std::process::id()));
    std::fs::write(&file, format!("{EXAMPLE}\n[publish]\nmessage_id_property = \"message-id\"\n")).unwrap();
    let (ok, out, err) =
        cli(&["config", "push", file.to_str().unwrap(), "--table", &table, "--allow-demo-user"], "", &moto);
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l == "add publish") && out.lines().any(|l| l == "add cors"), "{out}");

    let service = table_service(&moto, &table, CacheSettings::default()).await;
    let rules = service.config().rules().await.unwrap();
    assert_eq!(rules.message_id_property.as_deref(), Some("message-id"));
    assert!(rules.cors.as_ref().is_some_and(|c| c.allows("http://127.0.0.1:9090")));

    let (ok, pulled, err) = cli(&["config", "pull", "--table", &table], "", &moto);
    assert!(ok, "{err}");
    let pulled = mqtt_http_publish::config::parse_toml(&pulled).unwrap();
    assert_eq!(pulled.publish.and_then(|p| p.message_id_property).as_deref(), Some("message-id"));
    assert_eq!(pulled.cors.map(|c| c.allowed_origins.len()), Some(2));
    std::fs::remove_file(file).unwrap();
}

/// An HTTP API event for example 1 with `Idempotency-Key: key` and `payload` as the body.
fn keyed_event(key: &str, payload: &str) -> lambda::Event {
    let mut event = event_json("user0", "secret0", "home/orders");
    event["headers"]["idempotency-key"] = Value::String(key.to_owned());
    event["body"] = Value::String(payload.to_owned());
    event["isBase64Encoded"] = Value::Bool(false);
    event["headers"]["content-length"] = Value::String(payload.len().to_string());
    serde_json::from_value(event).unwrap()
}

/// Status, `X-Message-Id`, `Idempotent-Replayed` and the error code of a handled event.
async fn keyed_answer(service: &Service<IotPublisher>, event: lambda::Event) -> (u64, String, String, String) {
    let response = serde_json::to_value(lambda::handle(service, event, None).await.unwrap()).unwrap();
    let header = |name: &str| response["headers"][name].as_str().unwrap_or_default().to_owned();
    let error = serde_json::from_str::<Value>(response["body"].as_str().unwrap_or_default())
        .map(|body| body["error"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    (response["statusCode"].as_u64().unwrap(), header("x-message-id"), header("idempotent-replayed"), error)
}

#[tokio::test]
async fn concurrent_duplicate_invocations_in_separate_containers_publish_once() {
    use mqtt_http_publish::idempotency::dynamo::DynamoKeys;
    let moto = moto_url();
    start_recording(&moto).await;
    let table = unique_table("idempotency");
    create_config_table(&moto, &table).await;
    let mut config = parse_toml(EXAMPLE).unwrap();
    config.rules.push(allow(1, "home/orders", &["user0"]));
    push(&moto, &table, &config).await;

    // Eight containers, each with its own memory, sharing the table as the function does.
    let app = unique_app_name("idempotency");
    let mut containers = Vec::new();
    for _ in 0..8 {
        let service = tagged_table_service(&moto, &table, CacheSettings::default(), &app).await;
        let keys = DynamoKeys::new(TableStore::new(&sdk_config_for(&moto).await, &table).client().clone(), &table);
        containers.push(Arc::new(service.with_key_store(Arc::new(keys))));
    }
    let answers: Vec<_> = containers
        .iter()
        .map(|service| {
            let service = Arc::clone(service);
            tokio::spawn(async move { keyed_answer(&service, keyed_event("order-1", "ship it")).await })
        })
        .collect();
    let mut ids = BTreeSet::new();
    for answer in answers {
        let (status, id, _, error) = answer.await.unwrap();
        match status {
            200 => {
                ids.insert(id);
            }
            409 => assert_eq!(error, "request_in_progress"),
            other => panic!("{other} {error}"),
        }
    }
    assert_eq!(ids.len(), 1, "every 200 names the one message: {ids:?}");
    let id = ids.into_iter().next().unwrap();
    let sent: Vec<_> = recorded(&moto, &app).await.into_iter().filter(|r| r.method == "POST").collect();
    assert_eq!(sent.len(), 1, "moto received one Publish: {sent:#?}");
    let properties = String::from_utf8(common::base64_decode(&sent[0].headers["x-amz-mqtt5-user-properties"])).unwrap();
    assert_eq!(properties, format!(r#"[{{"message-id":"{id}"}}]"#));

    // Retries in other containers: the first answer; another body under the key: 422.
    let replay = keyed_answer(&containers[7], keyed_event("order-1", "ship it")).await;
    assert_eq!(replay, (200, id.clone(), "true".into(), String::new()));
    let reused = keyed_answer(&containers[3], keyed_event("order-1", "cancel it")).await;
    assert_eq!((reused.0, reused.3.as_str()), (422, "idempotency_key_reused"));
    assert_eq!(recorded(&moto, &app).await.into_iter().filter(|r| r.method == "POST").count(), 1);

    // The record is an item of the table, but no item of the config: pull leaves it out.
    let items = TableStore::new(&sdk_config_for(&moto).await, &table).items().await.unwrap();
    assert!(items.keys().all(|(pk, _)| !pk.starts_with("idem#")), "{:?}", items.keys());
    let (ok, pulled, err) = cli(&["config", "pull", "--table", &table], "", &moto);
    assert!(ok && !pulled.contains("idem#"), "{err}");
}
