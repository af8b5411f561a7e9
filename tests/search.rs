//! End to end: full-text search in the real `tern` binary. `tern serve`
//! runs the indexer, so mail delivered over SMTP is found by an Email/query
//! text filter made right after the delivery (read your writes, bounded by
//! `[search] query_wait_ms`), with SearchSnippet/get; `tern reindex
//! [--account ADDRESS]` rebuilds the index through the running server
//! (progress streamed over the admin socket) and, stopped, on the data
//! directory itself (after the index was deleted); a server that finds no
//! index beside existing mail rebuilds it by itself.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_tern");
const USER: &str = "alice@example.com";
const PASSWORD: &str = "wonderland";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn describe(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A data directory with a config on free ports, and `tern serve` while
/// it runs (killed on drop if the test fails first).
struct Tern {
    dir: tempfile::TempDir,
    config: PathBuf,
    jmap: u16,
    smtp: u16,
    child: Option<Child>,
}

impl Tern {
    fn new() -> Tern {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("tern.toml");
        let (jmap, smtp, submission) = (free_port(), free_port(), free_port());
        // DNS is unreachable here: no SPF/DKIM/DMARC checks on the MX. A
        // generous wait: the machine running the tests may be loaded.
        std::fs::write(
            &config,
            format!(
                "data_dir = {data:?}\n\
                 hostname = \"mx.test\"\n\
                 domains = [\"example.com\"]\n\
                 [listen]\n\
                 jmap = \"127.0.0.1:{jmap}\"\n\
                 smtp = \"127.0.0.1:{smtp}\"\n\
                 submission = \"127.0.0.1:{submission}\"\n\
                 metrics = \"127.0.0.1:{metrics}\"\n\
                 [smtp.checks]\n\
                 enabled = false\n\
                 [search]\n\
                 query_wait_ms = 20000\n",
                data = dir.path().join("data"),
                metrics = free_port(),
            ),
        )
        .unwrap();
        Tern {
            dir,
            config,
            jmap,
            smtp,
            child: None,
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn start(&mut self) {
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let socket = self.data().join("admin.sock");
        let deadline = Instant::now() + Duration::from_secs(60);
        while UnixStream::connect(&socket).is_err()
            || TcpStream::connect(("127.0.0.1", self.jmap)).is_err()
            || TcpStream::connect(("127.0.0.1", self.smtp)).is_err()
        {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let out = self.child.take().unwrap().wait_with_output().unwrap();
                panic!("tern serve exited early ({status}): {}", describe(&out));
            }
            assert!(Instant::now() < deadline, "tern serve did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM; the exit status must be success.
    fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(40);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "tern serve ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", describe(&out));
    }

    /// `tern --config CONFIG args` with debug logs of the binary.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("TERN_LOG", "tern=debug")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// The CLI, expecting success: (stdout, stderr).
    fn ok(&self, args: &[&str]) -> (String, String) {
        let out = self.cli(args);
        assert!(out.status.success(), "tern {args:?}: {}", describe(&out));
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    /// One JMAP request (`using` mail) with `calls`; the method responses.
    fn jmap(&self, calls: Value) -> Vec<Value> {
        let body = json!({
            "using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"],
            "methodCalls": calls,
        })
        .to_string();
        let (status, response) = http(
            self.jmap,
            &format!(
                "POST /jmap/api/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                basic(),
                body.len()
            ),
        );
        assert_eq!(status, 200, "{response}");
        let v: Value = serde_json::from_str(&response).unwrap();
        v["methodResponses"].as_array().unwrap().clone()
    }

    fn account_id(&self) -> String {
        let (status, body) = http(
            self.jmap,
            &format!(
                "GET /jmap/session HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {}\r\n\
                 Connection: close\r\n\r\n",
                basic()
            ),
        );
        assert_eq!(status, 200, "{body}");
        let session: Value = serde_json::from_str(&body).unwrap();
        session["primaryAccounts"]["urn:ietf:params:jmap:mail"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Email/query with `filter`, oldest first: the ids.
    fn query(&self, account: &str, filter: Value) -> Vec<String> {
        let r = self.jmap(json!([["Email/query", {
            "accountId": account,
            "filter": filter,
            "sort": [{"property": "receivedAt", "isAscending": true}],
        }, "q"]]));
        assert_eq!(r[0][0], "Email/query", "{r:?}");
        r[0][1]["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_str().unwrap().to_owned())
            .collect()
    }
}

impl Drop for Tern {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn basic() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    )
}

/// One HTTP/1.1 exchange on a fresh connection: the status and the body
/// (de-chunked).
fn http(port: u16, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let chunked = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    if !chunked {
        return (status, body.to_owned());
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return (status, out);
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

/// One SMTP transaction on the MX listener, by hand.
fn smtp_send(port: u16, to: &str, message: &str) {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let expect = |code: &str, reader: &mut BufReader<TcpStream>| {
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert!(line.starts_with(code), "expected {code}, got {line:?}");
            if line.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
    };
    expect("220", &mut reader);
    for (command, code) in [
        ("EHLO client.test".to_string(), "250"),
        ("MAIL FROM:<sender@elsewhere.test>".to_string(), "250"),
        (format!("RCPT TO:<{to}>"), "250"),
        ("DATA".to_string(), "354"),
    ] {
        write!(writer, "{command}\r\n").unwrap();
        expect(code, &mut reader);
    }
    for line in message.lines() {
        let stuffed = if line.starts_with('.') { "." } else { "" };
        write!(writer, "{stuffed}{line}\r\n").unwrap();
    }
    write!(writer, ".\r\n").unwrap();
    expect("250", &mut reader);
    write!(writer, "QUIT\r\n").unwrap();
    expect("221", &mut reader);
}

fn message(n: usize, subject: &str, body: &str) -> String {
    format!(
        "From: Nguyễn Văn An <an{n}@elsewhere.test>\n\
         To: Alice <alice@example.com>\n\
         Subject: {subject}\n\
         Message-ID: <search-{n}@elsewhere.test>\n\
         MIME-Version: 1.0\n\
         Content-Type: text/plain; charset=utf-8\n\
         \n\
         {body}\n"
    )
}

#[test]
fn serve_indexes_deliveries_and_reindex_rebuilds() {
    let mut tern = Tern::new();
    tern.start();
    tern.ok(&["account", "add", USER, "--password", PASSWORD]);
    let account = tern.account_id();

    // Each query right after its delivery: the indexer in `tern serve`
    // indexes it, and the query waits for it.
    let mails = [
        (
            "Chuyến đi Việt Nam",
            "Chúng ta sẽ đến Hà Nội vào tháng sau.",
        ),
        (
            "회의 자료",
            "다음 주 회의 자료를 이메일로 보내 드리겠습니다.",
        ),
        (
            "Quarterly budget <draft>",
            "Please review the budget & the meetings schedule.",
        ),
    ];
    let mut ids = Vec::new();
    for (n, (subject, body)) in mails.iter().enumerate() {
        smtp_send(tern.smtp, USER, &message(n, subject, body));
        let got = tern.query(&account, json!({"from": format!("an{n}@elsewhere.test")}));
        assert_eq!(got.len(), 1, "message {n} found right after delivery");
        ids.push(got[0].clone());
    }
    assert_eq!(
        tern.query(&account, json!({"text": "viet nam"})),
        [ids[0].clone()]
    );
    assert_eq!(
        tern.query(&account, json!({"body": "이메일"})),
        [ids[1].clone()]
    );
    assert_eq!(
        tern.query(&account, json!({"text": "meeting"})),
        [ids[2].clone()]
    );
    assert_eq!(tern.query(&account, json!({"from": "nguyen"})), ids);
    let r = tern.jmap(json!([["SearchSnippet/get", {
        "accountId": account,
        "filter": {"text": "budget"},
        "emailIds": [ids[2]],
    }, "s"]]));
    assert_eq!(
        r[0][1]["list"][0]["subject"],
        json!("Quarterly <mark>budget</mark> &lt;draft&gt;"),
        "{r:?}"
    );

    // Rebuild through the running server: progress, then the answer.
    let (stdout, stderr) = tern.ok(&["reindex", "--account", USER]);
    assert!(stderr.contains("route=\"socket\""), "{stderr}");
    assert!(
        stderr.contains("reindex: alice@example.com (account 1/1): 3/3 emails"),
        "{stderr}"
    );
    assert_eq!(stdout.trim(), "search index rebuilt: 3 emails in 1 account");
    assert_eq!(
        tern.query(&account, json!({"text": "viet nam"})),
        [ids[0].clone()]
    );
    // On a terminal, the progress bar (util-linux `script` gives the CLI a
    // pseudo-terminal).
    match Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{BIN} --config {} reindex --account {USER}",
            tern.config.display()
        ))
        .arg("/dev/null")
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => {
            assert!(out.status.success(), "{}", describe(&out));
            let screen = String::from_utf8_lossy(&out.stdout);
            assert!(
                screen.contains("alice@example.com (1/1) [") && screen.contains("3/3 emails ("),
                "no progress bar: {screen:?}"
            );
            assert!(screen.contains("search index rebuilt: 3 emails in 1 account"));
        }
        Err(err) => eprintln!("SKIPPED the progress bar on a terminal: no `script` ({err})"),
    }
    let out = tern.cli(&["reindex", "--account", "nobody@example.com"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("account nobody@example.com not found"),
        "{}",
        describe(&out)
    );
    tern.stop();

    // Stopped, with the index gone: `tern reindex` rebuilds it on the data
    // directory, and the next server finds everything again.
    std::fs::remove_dir_all(tern.data().join("search")).unwrap();
    let (stdout, stderr) = tern.ok(&["reindex"]);
    assert!(stderr.contains("route=\"direct\""), "{stderr}");
    assert!(stderr.contains("3/3 emails"), "{stderr}");
    assert_eq!(stdout.trim(), "search index rebuilt: 3 emails in 1 account");
    tern.start();
    assert_eq!(
        tern.query(&account, json!({"text": "viet nam"})),
        [ids[0].clone()]
    );
    assert_eq!(tern.query(&account, json!({"from": "nguyen"})), ids);
    tern.stop();

    // A server that finds no index beside existing mail rebuilds it by
    // itself; the first text query waits for that.
    std::fs::remove_dir_all(tern.data().join("search")).unwrap();
    tern.start();
    assert_eq!(tern.query(&account, json!({"from": "nguyen"})), ids);
    assert_eq!(
        tern.query(&account, json!({"body": "이메일"})),
        [ids[1].clone()]
    );
    tern.stop();
}
