//! Browsers: a POST from a page on another origin, and Debian's Chromium
//! publishing from an allowed page.

use std::process::Command;
use std::time::Duration;

use crate::common;
use crate::common::{free_port, Proc};
use crate::support::{drain, mosquitto, next, post, serve, subscriber, temp_dir, write_config, USER0};

#[tokio::test]
async fn a_post_from_a_page_on_another_origin_is_403_before_its_credentials_are_read() {
    let (_broker, port) = mosquitto("cross-origin").await;
    let serve = serve(Some(port), &[]).await;
    let mut rx = subscriber(port, "home/#").await;
    let own = serve.url.clone();
    let cases: [(&[(&str, &str)], u16); 6] = [
        (&[USER0, ("origin", "https://evil.example")], 403),
        (&[USER0, ("origin", "https://evil.example"), ("sec-fetch-site", "cross-site")], 403),
        (&[("origin", "null"), ("authorization", "Basic c3RyYW5nZXI6cHctb2YtYS1zdHJhbmdlcg==")], 403),
        (&[USER0], 200),
        (&[USER0, ("origin", &own)], 200),
        (&[USER0, ("origin", "http://localhost:1"), ("sec-fetch-site", "same-origin")], 200),
    ];
    for (headers, status) in cases {
        let answer = post(&serve.url, "/topics/home/csrf", headers, b"x").await;
        assert_eq!(answer.status(), status, "{headers:?}: {answer:?}");
        if status == 403 {
            assert!(String::from_utf8_lossy(&answer.body).contains("\"error\":\"origin_not_allowed\""), "{answer:?}");
            assert!(!answer.headers.contains_key("access-control-allow-origin"));
            assert!(!answer.headers.contains_key("www-authenticate"), "no credentials were asked for");
        }
    }
    assert_eq!(drain(&mut rx, Duration::from_millis(500)).await.len(), 3, "the three 200s, nothing else");
}

/// Debian's Chromium, headless, driven over the DevTools protocol on a pipe
/// (`--remote-debugging-pipe`: JSON messages ended by NUL, the browser reading
/// fd 3 and writing fd 4), so no port and no download are involved.
struct Chromium {
    _proc: Proc,
    to_browser: std::fs::File,
    from_browser: std::sync::mpsc::Receiver<serde_json::Value>,
    next_id: u64,
    _profile: std::path::PathBuf,
}

impl Chromium {
    /// Chromium headless, speaking the DevTools protocol on fds 3 and 4.
    #[allow(unsafe_code, reason = "pipes and a pre_exec handing them to the child as fds 3 and 4")]
    fn launch(name: &str) -> Chromium {
        use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
        use std::os::unix::process::CommandExt;
        let pipe = || {
            let mut fds = [0; 2];
            assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
        };
        let ((browser_reads, we_write), (we_read, browser_writes)) = (pipe(), pipe());
        let profile = temp_dir(&format!("chromium-{name}"));
        let (stdout, stderr) = common::child_logs("chromium");
        let (r, w) = (browser_reads.into_raw_fd(), browser_writes.into_raw_fd());
        let mut command = Command::new("chromium");
        command
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run"])
            .args(["--no-default-browser-check", "--disable-extensions", "--disable-background-networking"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(stdout)
            .stderr(stderr);
        // SAFETY: dup2 and close are async-signal-safe; fds 3 and 4 are the protocol's.
        unsafe {
            command.pre_exec(move || {
                let (high_r, high_w) = (libc::dup(r), libc::dup(w));
                if high_r < 0 || high_w < 0 || libc::dup2(high_r, 3) < 0 || libc::dup2(high_w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("chromium (scripts/test installs it)");
        unsafe {
            libc::close(r);
            libc::close(w);
        }
        let (tx, from_browser) = std::sync::mpsc::channel();
        let reader = std::fs::File::from(we_read);
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut reader = std::io::BufReader::new(reader);
            let mut message = Vec::new();
            while reader.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                message.pop();
                if let Ok(value) = serde_json::from_slice(&message) {
                    if tx.send(value).is_err() {
                        return;
                    }
                }
                message.clear();
            }
        });
        Chromium { _proc: Proc(child), to_browser: we_write.into(), from_browser, next_id: 0, _profile: profile }
    }

    /// Sends one command (to a page's `session`, or to the browser) and returns its result.
    fn call(&mut self, method: &str, params: serde_json::Value, session: Option<&str>) -> serde_json::Value {
        use std::io::Write;
        self.next_id += 1;
        let mut message = serde_json::json!({ "id": self.next_id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = session.into();
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to_browser.write_all(&bytes).unwrap();
        loop {
            let answer = self.from_browser.recv_timeout(Duration::from_secs(20)).expect("chromium answers");
            if answer["id"] == self.next_id {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// Opens `url` in a new tab and returns the tab's session once the page has loaded.
    fn open(&mut self, url: &str) -> String {
        let target = self.call("Target.createTarget", serde_json::json!({ "url": url }), None)["targetId"].clone();
        let attached =
            self.call("Target.attachToTarget", serde_json::json!({ "targetId": target, "flatten": true }), None);
        let session = attached["sessionId"].as_str().unwrap().to_owned();
        // Up to 15 s: a browser's first start on a fresh machine builds its profile.
        for _ in 0..600 {
            let state = self.evaluate(&session, "location.href + ' ' + document.readyState");
            if state == format!("{url} complete") {
                return session;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("{url} did not load");
    }

    /// The value of a JavaScript expression in the page (awaited if a promise).
    fn evaluate(&mut self, session: &str, expression: &str) -> serde_json::Value {
        let params = serde_json::json!({ "expression": expression, "awaitPromise": true, "returnByValue": true });
        let result = self.call("Runtime.evaluate", params, Some(session));
        assert!(result["exceptionDetails"].is_null(), "{expression}: {result}");
        result["result"]["value"].clone()
    }
}

/// Fills in the try-it page as a person would, sends, and returns what the page shows.
const TRY_IT: &str = r#"(async () => {
    const set = (id, value) => { document.getElementById(id).value = value; };
    set("topic", "home/browser"); set("props", "from=chromium"); set("body", "hello from a page");
    set("username", "user0"); set("password", PASSWORD);
    document.getElementById("send").click();
    while (!["done", "failed"].includes(document.body.dataset.state)) await new Promise(r => setTimeout(r, 20));
    const text = id => document.getElementById(id).textContent;
    return { state: document.body.dataset.state, status: text("status"), id: text("message-id"), answer: text("answer") };
})()"#;

/// Sends two messages from the try-it page's batch form and returns what the page shows.
const BATCH_IT: &str = r#"(async () => {
    const set = (id, value) => { document.getElementById(id).value = value; };
    set("username", "user0"); set("password", "secret0");
    set("batch", '[{"topic": "home/b1", "payload": "one"}, {"topic": "home/b2", "payload": "two"}]');
    document.getElementById("send-batch").click();
    while (!["done", "failed"].includes(document.body.dataset.state)) await new Promise(r => setTimeout(r, 20));
    const text = id => document.getElementById(id).textContent;
    return { state: document.body.dataset.state, status: text("status"), answer: text("answer") };
})()"#;

#[tokio::test]
async fn a_page_from_an_allowed_origin_publishes_from_a_real_browser_and_another_origin_is_blocked() {
    let (_broker, port) = mosquitto("browser").await;
    let admin = free_port();
    let dir = temp_dir("browser");
    let page = format!("http://127.0.0.1:{admin}");
    let config = write_config(&dir, &format!("[cors]\nallowed_origins = [\"{page}\"]\n"));
    let admin_listen = format!("127.0.0.1:{admin}");
    let serve = serve(Some(port), &["--admin-listen", &admin_listen, "--config", config.to_str().unwrap()]).await;
    let mut rx = subscriber(port, "home/#").await;

    let api = serve.url.clone();
    let shown = tokio::task::spawn_blocking(move || {
        let mut chromium = Chromium::launch("cors");
        let mut shows = Vec::new();
        for (url, password) in [
            (format!("{page}/"), "secret0"),
            (format!("{page}/"), "wrong"),
            (format!("http://localhost:{admin}/"), "secret0"),
        ] {
            let session = chromium.open(&url);
            shows.push(chromium.evaluate(&session, &TRY_IT.replace("PASSWORD", &format!("{password:?}"))));
        }
        // The batch form: a preflight for application/json to /messages, then the batch.
        let session = chromium.open(&format!("{page}/"));
        shows.push(chromium.evaluate(&session, BATCH_IT));
        // The other origin's page again, with a request the browser sends without a
        // preflight (a form's: no-cors, text/plain, credentials it would add itself).
        let session = chromium.open(&format!("http://localhost:{admin}/"));
        let simple = format!(
            "fetch('{api}/topics/home/forged', {{method: 'POST', mode: 'no-cors', credentials: 'include', \
             headers: {{'Content-Type': 'text/plain'}}, body: 'forged'}}).then(r => r.type)"
        );
        shows.push(chromium.evaluate(&session, &simple));
        shows
    })
    .await
    .unwrap();

    let (published, refused, blocked) = (&shown[0], &shown[1], &shown[2]);
    assert_eq!(published["state"], "done", "{published}");
    assert!(published["status"].as_str().unwrap().starts_with("200"), "{published}");
    let id = published["id"].as_str().unwrap();
    assert_eq!(id.len(), 32, "the page read X-Message-Id: {published}");
    let message = next(&mut rx).await;
    assert_eq!((&message.topic[..], &message.payload[..]), (&b"home/browser"[..], &b"hello from a page"[..]));
    let props = message.properties.expect("MQTT 5 properties");
    assert_eq!(props.user_properties, [("from".to_owned(), "chromium".to_owned())]);
    let batch = &shown[3];
    assert!(batch["status"].as_str().unwrap().starts_with("200"), "{batch}");
    assert!(batch["answer"].as_str().unwrap().contains("\"results\""), "the page shows each message's answer: {batch}");
    let (b1, b2) = (next(&mut rx).await, next(&mut rx).await);
    let mut arrived = [(b1.topic.to_vec(), b1.payload.to_vec()), (b2.topic.to_vec(), b2.payload.to_vec())];
    arrived.sort();
    assert_eq!(arrived, [(b"home/b1".to_vec(), b"one".to_vec()), (b"home/b2".to_vec(), b"two".to_vec())]);

    assert!(refused["status"].as_str().unwrap().starts_with("401"), "{refused}");
    assert!(
        refused["answer"].as_str().unwrap().contains("authentication_failed"),
        "the page reads the error: {refused}"
    );

    assert_eq!(blocked["state"], "failed", "a page from another origin is blocked: {blocked}");
    assert!(blocked["status"].as_str().unwrap().contains("network error"), "{blocked}");
    let nothing = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
    assert!(nothing.is_err(), "nothing more was published: {nothing:?}");
    let log = std::fs::read_to_string(&serve.log).unwrap();
    assert!(
        log.lines().any(|l| l.contains("status=405") && l.contains("method_not_allowed")),
        "the preflight was refused"
    );
    assert_eq!(shown[4], "opaque", "the browser sent the simple request: {}", shown[4]);
    assert!(
        log.lines().any(|l| l.contains("status=403") && l.contains("origin_not_allowed")),
        "the simple request reached serve and was refused:\n{log}"
    );
    let nothing = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
    assert!(nothing.is_err(), "nothing was published: {nothing:?}");
}
