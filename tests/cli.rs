//! The command line as users type it: `passwd`, `config check`, `invoke`.
// A test unwraps and prints: its failure, and what it saw, are its answer.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use mqtt_http_publish::auth::StoredHash;

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-http-publish");

fn run(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("AWS_LAMBDA_RUNTIME_API")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    keep(child.wait_with_output().unwrap())
}

/// Leaves what the command printed in the suite's log directory (scripts/check-logs scans it).
fn keep(out: Output) -> Output {
    common::keep_log("cli", &[&out.stdout[..], &out.stderr[..]].concat());
    out
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("mhp-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn passwd_prints_an_argon2id_hash_of_stdin() {
    let out = run(&["passwd"], b"secret0\n", &[]);
    assert!(out.status.success(), "{out:?}");
    let hash = String::from_utf8(out.stdout).unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(StoredHash::parse(hash.trim()).unwrap().verify(b"secret0"));
}

#[test]
fn passwd_refuses_an_empty_password() {
    let out = run(&["passwd"], b"", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no password"));
}

#[test]
fn config_check_summarises_a_good_file() {
    let out = run(&["config", "check", concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml")], b"", &[]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("users: 1") && text.contains("rules: 4 (3 allow, 1 deny)"), "{text}");
    assert!(text.contains("browsers (cors): 2 origin(s)") && text.contains("message id property: none"), "{text}");
    assert!(text.contains("idempotency keys kept: 86400 s"), "{text}");
}

#[test]
fn config_check_exits_1_naming_the_bad_entry() {
    let file = temp_file("bad.toml", "[[users]]\nusername = \"user0\"\npassword_hash = \"secret0\"\n");
    let out = run(&["config", "check", file.to_str().unwrap()], b"", &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("user \"user0\"") && err.contains("plain-text"), "{err}");
    assert!(!err.contains("secret0\""), "the refused value is not echoed back: {err}");
}

#[test]
fn no_command_outside_lambda_is_a_usage_error() {
    assert_eq!(run(&[], b"", &[]).status.code(), Some(2));
}

#[tokio::test]
async fn invoke_runs_one_event_through_the_function() {
    let moto = common::moto_url();
    common::start_recording(&moto).await;
    let app = common::unique_app_name("invoke");
    let out = run(
        &["invoke", concat!(env!("CARGO_MANIFEST_DIR"), "/events/example-1-basic-auth.json")],
        b"",
        &[
            ("CONFIG_FILE", concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml")),
            ("IOT_DATA_ENDPOINT", &moto),
            ("AWS_SDK_UA_APP_ID", &app),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let response: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(response["statusCode"], 200);
    let sent = common::recorded(&moto, &app).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].topic(), "home");
}

#[test]
fn invoke_without_config_file_fails_clearly() {
    let out = Command::new(BIN)
        .args(["invoke", "events/example-1-basic-auth.json"])
        .env_remove("CONFIG_FILE")
        .env_remove("CONFIG_TABLE")
        .output()
        .unwrap();
    let out = keep(out);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither CONFIG_TABLE nor CONFIG_FILE is set"));
}
