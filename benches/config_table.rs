//! The config table's costs against moto's DynamoDB on loopback. Prints figures; asserts nothing.
//!
//!     MOTO_SERVER=~/.cache/mqtt-http-publish/venv-moto-5.2.5/bin/moto_server cargo bench --bench config_table
//!
//! (`scripts/test` installs that moto; any `moto_server` on PATH works too.)
//! Figures: the time to load 10 000 rules (one paginated Query, then validation
//! and indexing), the in-process cost of turning the config into items and back
//! (what `push` and `pull` do around their calls), and the latency of a user lookup that the cache answers and of
//! one that goes to the table. moto is far slower than DynamoDB; the ratio is the point.
// A benchmark unwraps and prints: its figures are its output, a failure its answer.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
use mqtt_http_publish::config::manage::new_user;
use mqtt_http_publish::config::source::{CacheSettings, CachedTable, ConfigStore};
use mqtt_http_publish::config::table::{config_from_items, config_items, TableStore};
use mqtt_http_publish::config::{ConfigFile, EffectEntry, RuleEntry, RuleSet};

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    // This process uses the AWS SDK: keep it on this machine.
    for (name, value) in [
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ] {
        std::env::set_var(name, value);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
    let _moto = Moto(
        Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {server} (set MOTO_SERVER): {e}")),
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run(&endpoint));
}

async fn run(endpoint: &str) {
    let sdk = mqtt_http_publish::aws::sdk_config().await.into_builder().endpoint_url(endpoint).build();
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let attribute = |n: &str| {
        AttributeDefinition::builder().attribute_name(n).attribute_type(ScalarAttributeType::S).build().unwrap()
    };
    let key = |n: &str, t| KeySchemaElement::builder().attribute_name(n).key_type(t).build().unwrap();
    client
        .create_table()
        .table_name("bench")
        .attribute_definitions(attribute("pk"))
        .attribute_definitions(attribute("sk"))
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap();

    let users: Vec<_> = (0..300).map(|n| new_user(&format!("user-{n}"), "pw")).collect();
    let rules = (0..10_000)
        .map(|n| RuleEntry {
            priority: n,
            effect: EffectEntry::Allow,
            topics: vec![format!("devices/dev-{n}/#")],
            usernames: Some(vec![format!("user-{n}")]),
            client_ids: None,
            source_ips: None,
            qos: None,
            retain: None,
            auth: None,
            actions: None,
        })
        .collect();
    let config = ConfigFile { users, rules, ..ConfigFile::default() };
    let (mut to_items, mut from_items) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let started = Instant::now();
        let items = config_items(&config);
        to_items.push(started.elapsed());
        let started = Instant::now();
        let back = config_from_items(&items).unwrap();
        from_items.push(started.elapsed());
        assert_eq!(back.rules.len(), 10_000);
    }
    println!(
        "config_table: item conversion of 10 000 rules and 300 users: to items median {:.1} ms, from items median {:.1} ms",
        median(to_items).as_secs_f64() * 1e3,
        median(from_items).as_secs_f64() * 1e3
    );
    // moto answers a Query of a 10 000-item partition in seconds (DynamoDB in milliseconds).
    let store = TableStore::with_timeout(&sdk, "bench", Duration::from_secs(120));
    let started = Instant::now();
    store.write(config_items(&config).into_values().collect(), Vec::new()).await.unwrap();
    println!("config_table: push of 10 000 rules and 300 users: {:.2} s", started.elapsed().as_secs_f64());

    let (mut loads, mut builds) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let started = Instant::now();
        let acl = store.rules().await.unwrap();
        let fetched = started.elapsed();
        let set = RuleSet::from_config(acl).unwrap();
        loads.push(started.elapsed());
        builds.push(started.elapsed() - fetched);
        assert_eq!(set.acl.rules().len(), 10_000);
    }
    println!(
        "config_table: load 10 000 rules: median {:.1} ms in all, of which validate + index {:.1} ms (the rest is moto's Query)",
        median(loads).as_secs_f64() * 1e3,
        median(builds).as_secs_f64() * 1e3
    );

    let source = CachedTable::new(store, CacheSettings::default());
    let mut uncached = Vec::new();
    for n in 0..300 {
        let started = Instant::now();
        assert!(source.user(&format!("user-{n}")).await.unwrap().is_some());
        uncached.push(started.elapsed());
    }
    let mut cached = Vec::new();
    for n in 0..10_000 {
        let started = Instant::now();
        assert!(source.user(&format!("user-{}", n % 300)).await.unwrap().is_some());
        cached.push(started.elapsed());
    }
    println!(
        "config_table: user lookup, uncached (GetItem to moto): median {:.0} us; cached: median {:.2} us",
        median(uncached).as_secs_f64() * 1e6,
        median(cached).as_secs_f64() * 1e6
    );
}
