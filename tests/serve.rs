//! `serve` as users run it: the built binary, in front of Debian's mosquitto
//! (started here on a free loopback port) or its embedded broker, with a real
//! MQTT 5 subscriber checking what arrives.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{request, Wire};
use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-http-publish");
const USER0: (&str, &str) = ("authorization", "Basic dXNlcjA6c2VjcmV0MA==");

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn wait_for_port(port: u16, what: &str) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what} did not listen on {port}");
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mhp-serve-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Debian's mosquitto on a free loopback port, anonymous, no persistence.
async fn mosquitto(name: &str) -> (Proc, u16) {
    let port = free_port();
    let conf = temp_dir(name).join("mosquitto.conf");
    std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")).unwrap();
    let child = Command::new("mosquitto")
        .args(["-c", conf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto (scripts/test installs it)");
    wait_for_port(port, "mosquitto").await;
    (Proc(child), port)
}

/// `serve` on free ports with `args`; returns once a publish succeeds (the broker is connected).
struct Serve {
    proc: Proc,
    url: String,
    /// The MQTT port subscribers use: the external broker's or the embedded one's.
    mqtt_port: u16,
}

async fn serve(mqtt_port: Option<u16>, args: &[&str]) -> Serve {
    let http = free_port();
    let embedded = free_port();
    let listen = format!("127.0.0.1:{http}");
    let mut command = Command::new(BIN);
    command.args(["serve", "--listen", &listen]).args(args);
    let broker_port = match mqtt_port {
        Some(port) => {
            command.args(["--mqtt", &format!("mqtt://127.0.0.1:{port}")]);
            port
        }
        None => {
            command.args(["--broker-listen", &format!("127.0.0.1:{embedded}")]);
            embedded
        }
    };
    let (stdout, stderr) = common::child_logs("serve");
    let child = command.stdout(stdout).stderr(stderr).spawn().unwrap();
    let serve = Serve { proc: Proc(child), url: format!("http://{listen}"), mqtt_port: broker_port };
    wait_for_port(http, "serve").await;
    for _ in 0..200 {
        if post(&serve.url, "/topics/ready", &[USER0], b"").await.status() == 200 {
            return serve;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("serve never connected to its broker");
}

async fn post(url: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Wire {
    request(url, "POST", path, headers, body).await
}

/// A real MQTT 5 subscriber on `filter`; returns once the broker acknowledged the subscription.
async fn subscriber(port: u16, filter: &str) -> mpsc::UnboundedReceiver<Publish> {
    subscribe(port, filter, false).await
}

/// A subscriber whose session outlives its connection (and the broker's restart, with persistence on).
async fn persistent_subscriber(port: u16, filter: &str) -> mpsc::UnboundedReceiver<Publish> {
    subscribe(port, filter, true).await
}

async fn subscribe(port: u16, filter: &str, durable: bool) -> mpsc::UnboundedReceiver<Publish> {
    let mut options = MqttOptions::new(format!("sub-{}", free_port()), "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    if durable {
        options.set_clean_start(false);
        options.set_session_expiry_interval(Some(600));
    }
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _client = client;
        let mut ready = Some(ready_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    if tx.send(p).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(5), ready_rx).await.expect("SUBACK").unwrap();
    rx
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Publish>) -> Publish {
    tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("a message at the subscriber").unwrap()
}

const PROPERTIES: &str = "/topics/home/sensor?qos=1&client_id=curl-x&ResponseTopic=sample%2Fresponse%2Ftopic\
    &CorrelationData=SN0001&ContentType=application%2Fjson&PayloadFormatIndicator=1&MessageExpiryInterval=3600\
    &UserProp.2.Key=k&UserProp.2.Value=second&UserProp.1.Key=k&UserProp.1.Value=first";

async fn every_property_arrives(serve: &Serve) {
    let mut rx = subscriber(serve.mqtt_port, "home/#").await;
    let response = post(&serve.url, PROPERTIES, &[USER0], br#"{"t": 21.5}"#).await;
    assert_eq!(response.status(), 200, "{response:?}");
    let p = next(&mut rx).await;
    assert_eq!((&p.topic[..], &p.payload[..], p.qos), (&b"home/sensor"[..], &br#"{"t": 21.5}"#[..], QoS::AtLeastOnce));
    let props = p.properties.expect("MQTT 5 properties");
    assert_eq!(props.response_topic.as_deref(), Some("sample/response/topic"));
    assert_eq!(props.correlation_data.as_deref(), Some(&b"SN0001"[..]));
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    assert_eq!(props.payload_format_indicator, Some(1));
    assert!(props.message_expiry_interval.is_some_and(|e| (3590..=3600).contains(&e)), "{props:?}");
    assert_eq!(props.user_properties, [("k".to_owned(), "first".to_owned()), ("k".to_owned(), "second".to_owned())]);
}

#[tokio::test]
async fn every_mqtt5_property_reaches_a_mosquitto_subscriber() {
    let (_broker, port) = mosquitto("props").await;
    every_property_arrives(&serve(Some(port), &[]).await).await;
}

#[tokio::test]
async fn every_mqtt5_property_reaches_an_embedded_broker_subscriber() {
    every_property_arrives(&serve(None, &[]).await).await;
}

async fn retained_reaches_a_later_subscriber(serve: &Serve) {
    let response = post(&serve.url, "/topics/home/door?retained=true&qos=1", &[USER0], b"open").await;
    assert_eq!(response.status(), 200);
    let mut rx = subscriber(serve.mqtt_port, "home/door").await;
    let p = next(&mut rx).await;
    assert_eq!((&p.payload[..], p.retain), (&b"open"[..], true));
}

#[tokio::test]
async fn a_retained_message_reaches_a_later_mosquitto_subscriber() {
    let (_broker, port) = mosquitto("retained").await;
    retained_reaches_a_later_subscriber(&serve(Some(port), &[]).await).await;
}

#[tokio::test]
async fn a_retained_message_reaches_a_later_embedded_broker_subscriber() {
    retained_reaches_a_later_subscriber(&serve(None, &[]).await).await;
}

#[tokio::test]
async fn qos_0_and_qos_1_are_delivered_over_http_1_0() {
    let (_broker, port) = mosquitto("qos").await;
    let serve = serve(Some(port), &[]).await;
    let mut rx = subscriber(serve.mqtt_port, "q/#").await;
    // common::request speaks HTTP/1.0.
    for qos in ["0", "1"] {
        let response = post(&serve.url, &format!("/topics/q/{qos}?qos={qos}"), &[USER0], qos.as_bytes()).await;
        assert!(response.start_line.starts_with("HTTP/1.0 200"), "{response:?}");
        let id = &response.headers["x-message-id"];
        assert!(id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()));
        let p = next(&mut rx).await;
        assert_eq!(p.payload, qos.as_bytes());
        assert_eq!(p.qos, if qos == "0" { QoS::AtMostOnce } else { QoS::AtLeastOnce });
    }
}

#[tokio::test]
async fn the_demo_config_refuses_dollar_topics_and_strangers() {
    let serve = serve(None, &[]).await;
    assert_eq!(post(&serve.url, "/topics/%24SYS/x", &[USER0], b"").await.status(), 401);
    assert_eq!(post(&serve.url, "/topics/x", &[], b"").await.status(), 401);
    assert_eq!(post(&serve.url, "/topics/x", &[("authorization", "Basic dXNlcjA6d3Jvbmc=")], b"").await.status(), 401);
    assert_eq!(request(&serve.url, "GET", "/topics/x", &[USER0], b"").await.status(), 405);
    assert_eq!(post(&serve.url, "/nope", &[USER0], b"").await.status(), 400);
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_before_it_is_read() {
    let serve = serve(None, &[]).await;
    let big = vec![b'x'; 128 * 1024 + 1];
    let response = post(&serve.url, "/topics/big", &[USER0], &big).await;
    assert_eq!(response.status(), 413);
    // A 10 MB declared length is answered at once, from the header alone.
    let host = serve.url.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&host).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let head = format!(
        "POST /topics/big HTTP/1.1\r\nhost: {host}\r\nauthorization: {}\r\ncontent-length: 10485760\r\n\r\n",
        USER0.1
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 413"), "{}", String::from_utf8_lossy(&buf[..n]));
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let serve = serve(None, &[]).await;
    let huge = "x".repeat(20 * 1024);
    let response = post(&serve.url, "/topics/a", &[USER0, ("x-padding", &huge)], b"").await;
    assert_eq!(response.status(), 431);
}

fn write_config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        "{}\n[[rules]]\npriority = 1\neffect = \"allow\"\ntopics = [\"ready\", \"home/#\"]\n{extra}",
        include_str!("../config/example.toml").split("[[rules]]").next().unwrap()
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn over_quota_is_429_with_retry_after() {
    let dir = temp_dir("quota");
    let config = write_config(&dir, "[limits]\nuser_messages_per_second = 0.2\nuser_burst = 3\n");
    let serve = serve(None, &["--config", config.to_str().unwrap()]).await;
    // The readiness publish took one token; two more fit in the burst.
    for _ in 0..2 {
        assert_eq!(post(&serve.url, "/topics/home", &[USER0], b"").await.status(), 200);
    }
    let response = post(&serve.url, "/topics/home", &[USER0], b"").await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers["retry-after"], "5");
}

#[tokio::test]
async fn sighup_reloads_the_config_and_keeps_the_old_one_when_the_new_is_broken() {
    let dir = temp_dir("reload");
    let config = write_config(&dir, "");
    let serve = serve(None, &["--config", config.to_str().unwrap()]).await;
    let pid = serve.proc.0.id().to_string();
    assert_eq!(post(&serve.url, "/topics/office", &[USER0], b"").await.status(), 401);

    write_config(&dir, "[[rules]]\npriority = 2\neffect = \"allow\"\ntopics = [\"office\"]\n");
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    let mut reloaded = false;
    for _ in 0..100 {
        if post(&serve.url, "/topics/office", &[USER0], b"").await.status() == 200 {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reloaded, "SIGHUP did not load the new rule");

    std::fs::write(&config, "this is not toml [").unwrap();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(post(&serve.url, "/topics/office", &[USER0], b"").await.status(), 200, "the old config stays");
}

#[tokio::test]
async fn sigterm_stops_accepting_and_exits_0() {
    let mut serve = serve(None, &[]).await;
    Command::new("kill").args(["-TERM", &serve.proc.0.id().to_string()]).status().unwrap();
    let status = tokio::task::spawn_blocking(move || serve.proc.0.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
}

fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl").args(["-s", "-o", "-", "-w", "\n%{http_code}"]).args(args).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[tokio::test]
async fn the_product_page_examples_work_over_tls_with_and_without_a_client_certificate() {
    let dir = temp_dir("tls");
    let certs = dir.join("certs");
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo-certs"))
        .args([certs.to_str().unwrap(), "curl001"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let c = |name: &str| certs.join(name).to_str().unwrap().to_owned();
    let http = free_port();
    let embedded = free_port();
    let (stdout, stderr) = common::child_logs("serve-tls");
    let _proc = Proc(
        Command::new(BIN)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{http}"),
                "--broker-listen",
                &format!("127.0.0.1:{embedded}"),
            ])
            .args(["--tls-cert", &c("server.crt"), "--tls-key", &c("server.key"), "--client-ca", &c("CA.crt")])
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap(),
    );
    wait_for_port(http, "serve").await;
    let base = format!("https://localhost:{http}");
    let data = r#"{ "message": "Hello, world" }"#;
    let example_2 = |base: &str| {
        curl(&[
            "-k",
            "-X",
            "POST",
            "-H",
            "Authorization: Basic dXNlcjA6c2VjcmV0MA==",
            "--data",
            data,
            &format!("{base}/topics/home?qos=1&client_id=curl-x&retained=true&username=sample-user"),
        ])
    };
    let mut status = 0;
    for _ in 0..100 {
        status = example_2(&base).0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status, 200, "example 2: Basic over TLS, no client certificate");
    let (status, _) = curl(&[
        "--tlsv1.2",
        "--cacert",
        &c("CA.crt"),
        "--cert",
        &c("client.chain.crt"),
        "--key",
        &c("client.pkcs8.key"),
        "-X",
        "POST",
        "--data",
        data,
        &format!("{base}/topics/home?qos=1"),
    ]);
    assert_eq!(status, 200, "example 3: the client certificate alone");
    let (status, body) = curl(&[
        "--cacert",
        &c("CA.crt"),
        "--cert",
        &c("client.chain.crt"),
        "--key",
        &c("client.pkcs8.key"),
        "-X",
        "POST",
        "--data",
        data,
        &format!("{base}/topics/home?client_id=other"),
    ]);
    assert_eq!((status, body.contains("client_id_mismatch")), (401, true), "{body}");
}

#[tokio::test]
async fn with_the_broker_stopped_mid_load_every_answer_is_200_or_503_and_every_200_arrives() {
    let port = free_port();
    let dir = temp_dir("midload");
    // mosquitto started as root drops to its own user, which must be able to write its database here.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n",
            dir.display()
        ),
    )
    .unwrap();
    let start_broker = || async {
        let child = Command::new("mosquitto")
            .args(["-c", conf.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port, "mosquitto").await;
        child
    };
    let mut broker = start_broker().await;
    let serve = serve(Some(port), &[]).await;
    let mut rx = persistent_subscriber(port, "load/#").await;

    let started = tokio::time::Instant::now();
    let load = Duration::from_millis(4000);
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let url = serve.url.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let mut i = 0;
                while started.elapsed() < load {
                    let payload = format!("m-{worker}-{i}");
                    let at = started.elapsed();
                    let status =
                        post(&url, &format!("/topics/load/{worker}"), &[USER0], payload.as_bytes()).await.status();
                    answers.push((payload, status, at));
                    i += 1;
                }
                answers
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(1200)).await;
    // A clean stop: mosquitto saves its sessions, the subscriber's queue included.
    Command::new("kill").args(["-TERM", &broker.id().to_string()]).status().unwrap();
    broker.wait().unwrap();
    let stopped_at = started.elapsed();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let _broker = Proc(start_broker().await);
    let restarted_at = started.elapsed();

    let mut answers = Vec::new();
    for worker in workers {
        answers.extend(worker.await.unwrap());
    }
    let odd: Vec<_> = answers.iter().filter(|(_, s, _)| *s != 200 && *s != 503).collect();
    assert!(odd.is_empty(), "only 200 or 503 while the broker comes and goes: {odd:?}");
    let ok: std::collections::BTreeSet<&str> =
        answers.iter().filter(|(_, s, _)| *s == 200).map(|(p, _, _)| p.as_str()).collect();
    assert!(answers.iter().any(|(_, s, at)| *s == 503 && *at >= stopped_at), "the outage was seen");
    assert!(
        answers.iter().any(|(_, s, at)| *s == 200 && *at > restarted_at),
        "service resumed after the broker returned"
    );

    let mut seen = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !ok.iter().all(|p| seen.contains(*p)) && tokio::time::Instant::now() < deadline {
        if let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
            seen.insert(String::from_utf8(p.payload.to_vec()).unwrap());
        }
    }
    let missing: Vec<_> = ok.iter().filter(|p| !seen.contains(**p)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages never arrived: {:?}",
        missing.len(),
        ok.len(),
        &missing[..missing.len().min(10)]
    );
}

/// mosquitto with TLS (the demo server certificate), a password file and an ACL
/// that lets serve's connection write only under `allowed/`.
async fn strict_mosquitto(dir: &std::path::Path) -> (Proc, u16) {
    let port = free_port();
    let certs = dir.join("certs");
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo-certs"))
        .arg(certs.to_str().unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let passwd = dir.join("passwd");
    let out = Command::new("mosquitto_passwd")
        .args(["-b", "-c", passwd.to_str().unwrap(), "svc", "svc-pw"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let acl = dir.join("acl");
    std::fs::write(&acl, "user svc\ntopic write allowed/#\n").unwrap();
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for file in [&passwd, &acl] {
        std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    }
    for file in ["server.key", "server.crt", "CA.crt"] {
        std::fs::set_permissions(certs.join(file), std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    }
    let conf = dir.join("mosquitto.conf");
    let c = |name: &str| certs.join(name).display().to_string();
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\nacl_file {}\n\
             cafile {}\ncertfile {}\nkeyfile {}\npersistence false\n",
            passwd.display(),
            acl.display(),
            c("CA.crt"),
            c("server.crt"),
            c("server.key")
        ),
    )
    .unwrap();
    let child = Command::new("mosquitto")
        .args(["-c", conf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, "mosquitto").await;
    (Proc(child), port)
}

#[tokio::test]
async fn over_mqtts_with_credentials_a_broker_refusal_maps_from_its_puback_reason_code() {
    let dir = temp_dir("strict");
    let (_broker, port) = strict_mosquitto(&dir).await;
    let ca = dir.join("certs/CA.crt");
    let http = free_port();
    let (stdout, stderr) = common::child_logs("serve-mqtts");
    let _serve = Proc(
        Command::new(BIN)
            .args(["serve", "--listen", &format!("127.0.0.1:{http}")])
            .args(["--mqtt", &format!("mqtts://127.0.0.1:{port}"), "--mqtt-ca", ca.to_str().unwrap()])
            .args(["--mqtt-username", "svc"])
            .env("MQTT_PASSWORD", "svc-pw")
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap(),
    );
    wait_for_port(http, "serve").await;
    let url = format!("http://127.0.0.1:{http}");
    let mut status = 0;
    for _ in 0..200 {
        status = post(&url, "/topics/allowed/x", &[USER0], b"ok").await.status();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status, 200, "TLS to the broker with its CA, and the broker credentials, work");
    let refused = post(&url, "/topics/forbidden/x", &[USER0], b"no").await;
    assert_eq!(refused.status(), 500, "PUBACK 0x87 (not authorized) is our connection's fault: {refused:?}");
    assert!(!String::from_utf8_lossy(&refused.body).contains("0x87"), "no internals in the body");
}
