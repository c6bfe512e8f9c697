//! Configuration while running: SIGHUP reloads, SIGTERM stops, the product
//! page's TLS examples, and a config table on DynamoDB.

use std::process::Command;
use std::time::Duration;

use crate::common;
use crate::common::{free_port, Proc};
use crate::support::{
    mosquitto, next, post, serve, serve_with_env, subscriber, temp_dir, wait_for_port, write_config, BIN, USER0,
};

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

/// Writes `config` into `table` on moto, whole.
async fn push_to_table(moto: &str, table: &str, config: &std::path::Path) {
    use mqtt_http_publish::config::table::{config_items, TableStore};
    let text = std::fs::read_to_string(config).unwrap();
    let items = config_items(&mqtt_http_publish::config::parse_toml(&text).unwrap());
    let store = TableStore::new(&common::sdk_config_for(moto).await, table);
    store.write(items.into_values().collect(), Vec::new()).await.unwrap();
}

#[tokio::test]
async fn with_config_table_serve_authorizes_from_the_table_and_sees_its_changes_after_the_ttl() {
    // GIVEN a config table on moto where user0 may publish under home/, and mosquitto
    let moto = common::moto_url();
    let table = format!("{}-serve", common::unique_app_name("serve-table"));
    common::create_config_table(&moto, &table).await;
    let dir = temp_dir("table");
    push_to_table(&moto, &table, &write_config(&dir, "")).await;
    let (_broker, port) = mosquitto("table").await;

    // WHEN serve reads that table, DynamoDB's endpoint and the TTL from the usual variables
    let env = [("AWS_ENDPOINT_URL_DYNAMODB", moto.as_str()), ("CONFIG_CACHE_TTL_SECONDS", "1")];
    let serve = serve_with_env(Some(port), &["--config-table", &table], &env).await;
    let mut rx = subscriber(serve.mqtt_port, "home/#").await;

    // THEN the table's user publishes, and the message arrives
    let response = post(&serve.url, "/topics/home/hall", &[USER0], b"from the table").await;
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(&next(&mut rx).await.payload[..], b"from the table");
    // a wrong password, and a topic outside the table's rules, are 401
    let wrong = ("authorization", "Basic dXNlcjA6d3Jvbmc=");
    assert_eq!(post(&serve.url, "/topics/home/hall", &[wrong], b"no").await.status(), 401);
    assert_eq!(post(&serve.url, "/topics/office", &[USER0], b"").await.status(), 401);

    // and a rule added to the table (by another instance's operator) is in force after the TTL;
    // a SIGHUP meanwhile changes nothing and stops nothing
    push_to_table(
        &moto,
        &table,
        &write_config(&dir, "[[rules]]\npriority = 2\neffect = \"allow\"\ntopics = [\"office\"]\n"),
    )
    .await;
    Command::new("kill").args(["-HUP", &serve.proc.0.id().to_string()]).status().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while post(&serve.url, "/topics/office", &[USER0], b"").await.status() != 200 {
        assert!(tokio::time::Instant::now() < deadline, "the table's new rule was never used");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn config_and_config_table_exclude_each_other_and_an_empty_config_table_is_none() {
    let dir = temp_dir("exclusive");
    let config = write_config(&dir, "");
    let config = config.to_str().unwrap();
    // Both, given as options or one of them from the environment: refused, saying why, before listening.
    for (args, env) in [(&["--config", config, "--config-table", "t"][..], ""), (&["--config", config][..], "t")] {
        let out = Command::new(BIN)
            .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--broker-listen", &format!("127.0.0.1:{}", free_port())])
            .args(args)
            .env("CONFIG_TABLE", env)
            .output()
            .unwrap();
        common::keep_log("serve-config-conflict", &out.stderr);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("--config and --config-table (or CONFIG_TABLE) exclude each other"), "{stderr}");
    }
    // An empty CONFIG_TABLE is no table, as on Lambda: the file is served.
    let serve = serve_with_env(None, &["--config", config], &[("CONFIG_TABLE", "")]).await;
    assert_eq!(post(&serve.url, "/topics/home", &[USER0], b"").await.status(), 200);
}
