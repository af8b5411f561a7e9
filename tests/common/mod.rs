//! The end-to-end harness the root `tests/*.rs` share (each uses it as
//! `mod common;`): a temp data directory with a config on free ports, the
//! `tern` CLI run against it, `tern serve` started, waited for and stopped
//! with SIGTERM (killed on drop if a test fails first), and small clients:
//! HTTP/1.1 with Basic auth, one JMAP request, one SMTP transaction.
//!
//! Each test binary uses a part of it, hence `dead_code` is allowed.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_tern");
pub const CORE: &str = "urn:ietf:params:jmap:core";
pub const MAIL: &str = "urn:ietf:params:jmap:mail";
pub const SUBMISSION: &str = "urn:ietf:params:jmap:submission";

/// How long `tern serve` may take to start, and to exit after SIGTERM.
const START_WAIT: Duration = Duration::from_secs(60);
const STOP_WAIT: Duration = Duration::from_secs(60);

pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free ports, from below the ephemeral range (see
/// [`tern_testkit::free_ports`]).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let ports = tern_testkit::free_ports(N);
    std::array::from_fn(|i| ports[i])
}

/// A finished process's status and output, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Standard base64 with padding, on one line.
pub fn base64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// The `Authorization` value for HTTP Basic auth.
pub fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
}

// ------------------------------------------------------------- config ---

/// The listeners a config binds besides JMAP, the MX and submission.
#[derive(Clone, Copy, Default)]
pub struct Listeners {
    /// `[listen] metrics`.
    pub metrics: bool,
    /// `[listen] submissions` (implicit TLS).
    pub submissions: bool,
}

/// The ports of one setup's listeners on 127.0.0.1, chosen before its
/// config is written: servers that send to each other reserve theirs
/// together ([`Ports::reserve`]) so that each config can name another's
/// MX port.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub jmap: u16,
    pub smtp: u16,
    pub submission: u16,
    /// Bound only with `Listeners::submissions`.
    pub submissions: u16,
    /// Bound only with `Listeners::metrics`.
    pub metrics: u16,
}

impl Ports {
    /// Free ports for one setup.
    pub fn free() -> Ports {
        Ports::reserve::<1>()[0]
    }

    /// Free ports for `N` setups, all distinct.
    pub fn reserve<const N: usize>() -> [Ports; N] {
        let all = tern_testkit::free_ports(5 * N);
        std::array::from_fn(|i| {
            let [jmap, smtp, submission, submissions, metrics] =
                all[5 * i..5 * i + 5].try_into().unwrap();
            Ports {
                jmap,
                smtp,
                submission,
                submissions,
                metrics,
            }
        })
    }
}

/// What a setup's config holds before the sections a test adds, and how
/// its server logs.
pub struct Base<'a> {
    /// `hostname`.
    pub hostname: &'a str,
    /// `domains = [domain]`.
    pub domain: &'a str,
    pub ports: Ports,
    pub listeners: Listeners,
    /// `TERN_LOG` for `tern serve` (env-filter directives); `None`: the
    /// config's `[log]`, or `info` where `Ready::Logged` needs it.
    pub log: Option<&'a str>,
}

impl Default for Base<'_> {
    /// `mx.test` serving `example.com`, on free ports, with the listeners
    /// every config has.
    fn default() -> Self {
        Base {
            hostname: "mx.test",
            domain: "example.com",
            ports: Ports::free(),
            listeners: Listeners::default(),
            log: None,
        }
    }
}

/// A temp directory holding `tern.toml` (its data directory `data/`
/// beside it) with every listener on a free port of 127.0.0.1.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub jmap: u16,
    pub smtp: u16,
    pub submission: u16,
    /// Free but unused unless `Listeners::submissions`.
    pub submissions: u16,
    /// Free but unused unless `Listeners::metrics`.
    pub metrics: u16,
    listeners: Listeners,
    log: Option<String>,
}

impl Setup {
    /// The base config (data directory, `hostname = "mx.test"`,
    /// `domains = ["example.com"]`, `[listen]`) followed by `sections`,
    /// TOML the test adds (`[smtp.checks]`, `[log]`, ...).
    pub fn new(listeners: Listeners, sections: &str) -> Setup {
        Setup::with(
            Base {
                listeners,
                ..Base::default()
            },
            sections,
        )
    }

    /// The config `base` says (data directory, `hostname`, `domains`,
    /// `[listen]`) followed by `sections`.
    pub fn with(base: Base<'_>, sections: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("tern.toml");
        let Ports {
            jmap,
            smtp,
            submission,
            submissions,
            metrics,
        } = base.ports;
        let setup = Setup {
            config,
            jmap,
            smtp,
            submission,
            submissions,
            metrics,
            listeners: base.listeners,
            log: base.log.map(str::to_owned),
            dir,
        };
        let mut text = format!(
            "data_dir = {data:?}\n\
             hostname = {hostname:?}\n\
             domains = [{domain:?}]\n\
             [listen]\n\
             jmap = \"127.0.0.1:{}\"\n\
             smtp = \"127.0.0.1:{}\"\n\
             submission = \"127.0.0.1:{}\"\n",
            setup.jmap,
            setup.smtp,
            setup.submission,
            data = setup.data_dir(),
            hostname = base.hostname,
            domain = base.domain,
        );
        if base.listeners.submissions {
            text.push_str(&format!(
                "submissions = \"127.0.0.1:{}\"\n",
                setup.submissions
            ));
        }
        if base.listeners.metrics {
            text.push_str(&format!("metrics = \"127.0.0.1:{}\"\n", setup.metrics));
        }
        text.push_str(sections);
        std::fs::write(&setup.config, text).unwrap();
        setup
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn socket(&self) -> PathBuf {
        self.data_dir().join("admin.sock")
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.jmap)
    }

    /// `tern --config CONFIG args` with `stdin` fed to it and the CLI's
    /// debug log on stderr (it names the route: socket or direct).
    pub fn run(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("TERN_LOG", "tern=debug")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// The CLI, expecting success: (stdout, stderr).
    pub fn cli_ok(&self, args: &[&str]) -> (String, String) {
        let out = self.run(args, "");
        assert!(out.status.success(), "tern {args:?}: {}", describe(&out));
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    /// The CLI, expecting success: its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        self.cli_ok(args).0
    }

    /// The CLI, expecting failure: its stderr.
    pub fn cli_fails(&self, args: &[&str]) -> String {
        let out = self.run(args, "");
        assert!(
            !out.status.success(),
            "tern {args:?} succeeded: {}",
            describe(&out)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// `tern serve args`, once `ready` says it is up.
    pub fn serve(&self, args: &[&str], ready: Ready) -> Server {
        let mut command = Command::new(BIN);
        command
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match (&self.log, ready) {
            (Some(filter), _) => {
                command.env("TERN_LOG", filter);
            }
            (None, Ready::Logged) => {
                command.env("TERN_LOG", "info");
            }
            (None, _) => {}
        }
        let mut child = command.spawn().unwrap();
        let stdout = Drain::start(child.stdout.take().unwrap());
        let stderr = Drain::start(child.stderr.take().unwrap());
        let mut server = Server {
            child: Some(child),
            stdout,
            stderr,
        };
        let smtp_listeners = if self.listeners.submissions { 3 } else { 2 };
        let deadline = Instant::now() + START_WAIT;
        loop {
            let up = match ready {
                Ready::Socket => UnixStream::connect(self.socket()).is_ok(),
                Ready::Listeners => {
                    UnixStream::connect(self.socket()).is_ok()
                        && TcpStream::connect(("127.0.0.1", self.jmap)).is_ok()
                        && TcpStream::connect(("127.0.0.1", self.smtp)).is_ok()
                }
                Ready::Logged => {
                    let log = server.log();
                    log.matches("SMTP listening").count() == smtp_listeners
                        && log.contains("JMAP listening")
                }
            };
            if up {
                return server;
            }
            if let Some(status) = server.child.as_mut().unwrap().try_wait().unwrap() {
                server.child = None;
                panic!(
                    "tern serve exited early ({status}):\n--- stdout\n{}\n--- stderr\n{}",
                    server.stdout.text(),
                    server.stderr.text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "tern serve did not start:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// When `Setup::serve` takes the server for started.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// The admin socket accepts.
    Socket,
    /// The admin socket, the JMAP and the MX listeners accept.
    Listeners,
    /// The log (at `TERN_LOG=info`) says every SMTP listener and the JMAP
    /// listener are bound: no connection is made, so no SMTP rate limit
    /// is used up.
    Logged,
}

/// A pipe read to its end by a thread, so that the child never blocks on
/// a full pipe and the text so far can be read at any time.
struct Drain {
    text: Arc<Mutex<Vec<u8>>>,
    thread: Option<JoinHandle<()>>,
}

impl Drain {
    fn start(mut pipe: impl Read + Send + 'static) -> Drain {
        let text = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&text);
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Drain {
            text,
            thread: Some(thread),
        }
    }

    fn text(&self) -> String {
        // Poison-tolerant: also read while a failing test unwinds.
        let text = self.text.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&text).into_owned()
    }

    /// Everything, once the writer has exited.
    fn finish(&mut self) -> String {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.text()
    }
}

/// A running `tern serve`; killed if the test ends without stopping it.
pub struct Server {
    child: Option<Child>,
    stdout: Drain,
    stderr: Drain,
}

impl Server {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Its stderr (the log) so far.
    pub fn log(&self) -> String {
        self.stderr.text()
    }

    /// SIGTERM, then waits for the exit: (status, stdout, stderr).
    pub fn terminate(mut self) -> (ExitStatus, String, String) {
        let mut child = self.child.take().unwrap();
        // The workspace forbids unsafe code, so no libc::kill.
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill failed");
        let deadline = Instant::now() + STOP_WAIT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "tern serve ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        (status, self.stdout.finish(), self.stderr.finish())
    }

    /// SIGTERM; the exit must be a success. Returns the log.
    pub fn stop(self) -> String {
        let (status, stdout, stderr) = self.terminate();
        assert!(
            status.success(),
            "tern serve exited with {status}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        );
        stderr
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Server {
    /// Kills a server still running. When the test is failing, first
    /// prints whether it had already exited, and its log: what it said is
    /// often what explains the failure.
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            if std::thread::panicking() {
                let exited = child.try_wait().ok().flatten();
                let log = self.stderr.text();
                let tail = log.char_indices().rev().nth(20_000).map_or(0, |(i, _)| i);
                eprintln!(
                    "--- tern serve (pid {}) at the failure; exited: {exited:?}; its log{}:\n{}\n---",
                    child.id(),
                    if tail > 0 {
                        " (last 20,000 characters)"
                    } else {
                        ""
                    },
                    &log[tail..]
                );
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A setup and, while it runs, its server: what most tests want. Reads
/// as the `Setup` (fields and methods) through `Deref`.
pub struct Tern {
    server: Option<Server>,
    setup: Setup,
}

impl Tern {
    pub fn new(listeners: Listeners, sections: &str) -> Tern {
        Tern::with(
            Base {
                listeners,
                ..Base::default()
            },
            sections,
        )
    }

    /// [`Setup::with`], not started.
    pub fn with(base: Base<'_>, sections: &str) -> Tern {
        Tern {
            server: None,
            setup: Setup::with(base, sections),
        }
    }

    /// Starts `tern serve` and waits for its socket and listeners.
    pub fn start(&mut self) {
        assert!(self.server.is_none(), "already running");
        self.server = Some(self.setup.serve(&[], Ready::Listeners));
    }

    /// SIGTERM: (status, stdout, stderr).
    pub fn terminate(&mut self) -> (ExitStatus, String, String) {
        self.server.take().expect("running").terminate()
    }

    /// SIGTERM; the exit must be a success. Returns the log.
    pub fn stop(&mut self) -> String {
        self.server.take().expect("running").stop()
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self) {
        self.server.take().expect("running").kill();
    }

    /// The running server's log so far (empty when it is not running).
    pub fn log(&self) -> String {
        self.server.as_ref().map(Server::log).unwrap_or_default()
    }
}

impl std::ops::Deref for Tern {
    type Target = Setup;

    fn deref(&self) -> &Setup {
        &self.setup
    }
}

// --------------------------------------------------------------- HTTP ---

/// An HTTP response: status, headers (lowercase names) and body
/// (de-chunked).
pub struct Response {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: status {} {}", self.status, self.text()))
    }
}

/// An HTTP/1.1 request's bytes for 127.0.0.1:`port`, one per
/// connection (`Connection: close`).
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A whole HTTP/1.1 response as read to the connection's end.
pub fn parse_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head}"));
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

/// One HTTP/1.1 exchange on a fresh connection to 127.0.0.1:`port`
/// (retried for a few seconds while the listener is not up yet).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => panic!("port {port}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream
        .write_all(&request(port, method, path, headers, body))
        .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    parse_response(&raw)
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size line");
        let size = std::str::from_utf8(&rest[..line_end]).unwrap();
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        let start = line_end + 2;
        out.extend_from_slice(&rest[start..start + size]);
        rest = &rest[start + size + 2..];
    }
}

/// `GET` with Basic auth as `user`; the status must be 200: the body as
/// JSON.
pub fn get_json(port: u16, user: &str, password: &str, path: &str) -> Value {
    let r = http(
        port,
        "GET",
        path,
        &[("Authorization", &basic(user, password))],
        b"",
    );
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.json()
}

/// `user`'s primary mail account id, from the session resource.
pub fn account_id(port: u16, user: &str, password: &str) -> String {
    get_json(port, user, password, "/.well-known/jmap")["primaryAccounts"][MAIL]
        .as_str()
        .unwrap()
        .to_owned()
}

/// One JMAP API request as `user` with the capabilities `using` and
/// `calls`; the status must be 200: the method responses.
pub fn jmap(port: u16, user: &str, password: &str, using: &[&str], calls: Value) -> Vec<Value> {
    let body = json!({"using": using, "methodCalls": calls}).to_string();
    let r = http(
        port,
        "POST",
        "/jmap/api/",
        &[
            ("Authorization", &basic(user, password)),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["methodResponses"].as_array().unwrap().clone()
}

// --------------------------------------------------------------- SMTP ---

/// One SMTP transaction on 127.0.0.1:`port`, by hand: EHLO, MAIL, RCPT,
/// DATA (the message's lines dot-stuffed, CRLF-terminated), QUIT. Panics
/// on any reply but 220/250/354 before the end of the data and on any but
/// 221 to QUIT; returns the reply to the data.
pub fn smtp_send(port: u16, from: &str, to: &str, message: &str) -> String {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let reply = |reader: &mut BufReader<TcpStream>| loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.as_bytes().get(3) != Some(&b'-') {
            return line;
        }
    };
    let greeting = reply(&mut reader);
    assert!(greeting.starts_with("220"), "{greeting}");
    for (command, code) in [
        ("EHLO client.test".to_string(), "250"),
        (format!("MAIL FROM:<{from}>"), "250"),
        (format!("RCPT TO:<{to}>"), "250"),
        ("DATA".to_string(), "354"),
    ] {
        write!(writer, "{command}\r\n").unwrap();
        let r = reply(&mut reader);
        assert!(r.starts_with(code), "{command}: expected {code}, got {r:?}");
    }
    for line in message.lines() {
        let stuffed = if line.starts_with('.') { "." } else { "" };
        write!(writer, "{stuffed}{line}\r\n").unwrap();
    }
    write!(writer, ".\r\n").unwrap();
    let r = reply(&mut reader);
    write!(writer, "QUIT\r\n").unwrap();
    let bye = reply(&mut reader);
    assert!(bye.starts_with("221"), "QUIT: {bye:?}");
    r
}

/// `smtp_send`, and the message must be accepted (250).
pub fn smtp_deliver(port: u16, from: &str, to: &str, message: &str) {
    let r = smtp_send(port, from, to, message);
    assert!(r.starts_with("250"), "end of data: {r:?}");
}
