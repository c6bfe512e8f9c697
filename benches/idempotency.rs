//! What an `Idempotency-Key` adds to a request: the service's own work with a
//! publisher that accepts at once, without a key and with a new key each time,
//! its records in memory (serve's default), in Redis on loopback (`serve
//! --redis`: Debian's redis-server, started here) and in DynamoDB (the Lambda
//! function: moto on loopback, started here from MOTO_SERVER). Also a replay of
//! a key already done. Prints figures; asserts nothing but that each request
//! was answered as it should.
//!
//!     MOTO_SERVER=~/.cache/mqtt-http-publish/venv-moto-5.2.5/bin/moto_server cargo bench --bench idempotency
// A benchmark unwraps and prints: its figures are its output, a failure its answer.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use mqtt_http_publish::config::table::TableStore;
use mqtt_http_publish::config::Policy;
use mqtt_http_publish::contract::query::decode_query;
use mqtt_http_publish::contract::{BackendLimits, HttpRequest, RequestPath};
use mqtt_http_publish::idempotency::dynamo::DynamoKeys;
use mqtt_http_publish::idempotency::redis::RedisKeys;
use mqtt_http_publish::idempotency::KeyStore;
use mqtt_http_publish::publish::iot::IOT_LIMITS;
use mqtt_http_publish::publish::{Message, PublishError, Publisher};
use mqtt_http_publish::service::Service;
use mqtt_http_publish::store::redis::Redis;

/// Accepts every message at once: what is left is the service's and the key store's work.
struct Accept;

impl Publisher for Accept {
    fn limits(&self) -> BackendLimits {
        IOT_LIMITS
    }

    async fn publish(&self, message: Message) -> Result<(), PublishError> {
        std::hint::black_box(message);
        Ok(())
    }
}

fn request(key: Option<&str>) -> HttpRequest {
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_static("Basic dXNlcjA6c2VjcmV0MA=="));
    if let Some(key) = key {
        headers.insert("idempotency-key", HeaderValue::from_str(key).unwrap());
    }
    HttpRequest {
        method: Method::POST,
        path: RequestPath::Encoded("/topics/home".into()),
        query: decode_query("qos=1&client_id=curl-x&retained=false").unwrap(),
        headers,
        body: Bytes::from_static(br#"{ "message": "Hello, world" }"#),
        source_ip: Some("203.0.113.7".parse().unwrap()),
        client_certificate: None,
    }
}

fn service(keys: Option<Arc<dyn KeyStore>>) -> Service<Accept> {
    let policy = Policy::from_toml(include_str!("../config/example.toml")).unwrap();
    let service = Service::new(Accept, policy);
    match keys {
        Some(keys) => service.with_key_store(keys),
        None => service,
    }
}

/// Median and p99 of `n` requests, in µs; `key(i)` is the i-th request's key.
async fn measure(service: &Service<Accept>, n: usize, key: impl Fn(usize) -> Option<String>) -> (f64, f64) {
    assert_eq!(service.handle(request(None)).await.status(), 200, "the first request warms the credential cache");
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let request = request(key(i).as_deref());
        let started = Instant::now();
        let response = service.handle(request).await;
        samples.push(started.elapsed());
        assert_eq!(response.status(), 200, "{response:?}");
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99))
}

fn print(row: &str, (median, p99): (f64, f64), base: f64, n: usize) {
    println!("idempotency: {row}: median {median:.1} us (+{:.1} us), p99 {p99:.1} us over {n}", median - base);
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on {port}");
}

fn start(program: &str, args: &[&str], port: u16) -> Option<Killed> {
    let child = Command::new(program).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().ok()?;
    wait_for(port);
    Some(Killed(child))
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        const LOCAL: usize = 100_000;
        const NETWORK: usize = 2_000;
        let fresh = |prefix: &'static str| move |i: usize| Some(format!("{prefix}-{i}"));

        let base = measure(&service(None), LOCAL, |_| None).await;
        print("no key", base, base.0, LOCAL);
        let memory = service(None);
        print("a new key each request, in memory", measure(&memory, LOCAL, fresh("m")).await, base.0, LOCAL);
        print("a replay, in memory", measure(&memory, LOCAL, |_| Some("m-0".into())).await, base.0, LOCAL);

        let port = free_port();
        let redis_args = ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
        match start("redis-server", &redis_args, port) {
            Some(_redis) => {
                let redis = Redis::new(&format!("redis://127.0.0.1:{port}")).unwrap();
                let keys: Arc<dyn KeyStore> = Arc::new(RedisKeys::new(redis));
                let redis = service(Some(keys));
                print(
                    "a new key each request, Redis on loopback",
                    measure(&redis, NETWORK, fresh("r")).await,
                    base.0,
                    NETWORK,
                );
                print(
                    "a replay, Redis on loopback",
                    measure(&redis, NETWORK, |_| Some("r-0".into())).await,
                    base.0,
                    NETWORK,
                );
            }
            None => println!("idempotency: Redis not measured: no redis-server (apt-get install redis-server)"),
        }

        let port = free_port();
        let moto = std::env::var("MOTO_SERVER")
            .ok()
            .and_then(|server| start(&server, &["-H", "127.0.0.1", "-p", &port.to_string()], port));
        match moto {
            Some(_moto) => {
                for (name, value) in [
                    ("AWS_REGION", "us-east-1"),
                    ("AWS_ACCESS_KEY_ID", "testing"),
                    ("AWS_SECRET_ACCESS_KEY", "testing"),
                    ("AWS_EC2_METADATA_DISABLED", "true"),
                ] {
                    std::env::set_var(name, value);
                }
                let sdk = mqtt_http_publish::aws::sdk_config()
                    .await
                    .into_builder()
                    .endpoint_url(format!("http://127.0.0.1:{port}"))
                    .build();
                create_table(&sdk, "bench-idempotency").await;
                let table = TableStore::new(&sdk, "bench-idempotency");
                let keys: Arc<dyn KeyStore> = Arc::new(DynamoKeys::new(table.client().clone(), table.table()));
                let dynamo = service(Some(keys));
                print(
                    "a new key each request, DynamoDB (moto on loopback)",
                    measure(&dynamo, NETWORK / 4, fresh("d")).await,
                    base.0,
                    NETWORK / 4,
                );
                print(
                    "a replay, DynamoDB (moto on loopback)",
                    measure(&dynamo, NETWORK / 4, |_| Some("d-0".into())).await,
                    base.0,
                    NETWORK / 4,
                );
            }
            None => println!("idempotency: DynamoDB not measured: set MOTO_SERVER (scripts/test installs moto)"),
        }
    });
}

async fn create_table(sdk: &aws_config::SdkConfig, name: &str) {
    use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
    let client = aws_sdk_dynamodb::Client::new(sdk);
    let attribute = |n: &str| {
        AttributeDefinition::builder().attribute_name(n).attribute_type(ScalarAttributeType::S).build().unwrap()
    };
    let key = |n: &str, t| KeySchemaElement::builder().attribute_name(n).key_type(t).build().unwrap();
    client
        .create_table()
        .table_name(name)
        .attribute_definitions(attribute("pk"))
        .attribute_definitions(attribute("sk"))
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap();
}
