//! End-to-end tests of the `tern` binary: `tern serve` with the admin
//! socket, the CLI against a running and a stopped server, SIGTERM, and
//! config refusal.

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tern");

/// A temp directory with a config file pointing at free ports.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    /// The JMAP listener's port.
    jmap_port: u16,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("tern.toml");
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        std::fs::write(
            &config,
            format!(
                "data_dir = {data:?}\n\
                 hostname = \"mx.test\"\n\
                 domains = [\"example.com\"]\n\
                 [listen]\n\
                 jmap = \"127.0.0.1:{}\"\n\
                 smtp = \"127.0.0.1:{}\"\n\
                 submission = \"127.0.0.1:{}\"\n\
                 [log]\n\
                 level = \"info\"\n",
                ports[0],
                ports[1],
                ports[2],
                data = dir.path().join("data"),
            ),
        )
        .unwrap();
        Setup {
            dir,
            config,
            jmap_port: ports[0],
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket(&self) -> PathBuf {
        self.data_dir().join("admin.sock")
    }

    /// `tern --config <config> <args>`, with `stdin` fed to it.
    fn tern(&self, args: &[&str], stdin: &str) -> Output {
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

    /// Runs the CLI, expecting success; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.tern(args, "");
        assert!(
            out.status.success(),
            "tern {args:?} failed: {}",
            describe(&out)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs the CLI, expecting failure; returns its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.tern(args, "");
        assert!(
            !out.status.success(),
            "tern {args:?} succeeded: {}",
            describe(&out)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// Starts `tern serve` and waits until its admin socket accepts.
    fn serve(&self, extra: &[&str]) -> Server {
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut server = Server { child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while UnixStream::connect(self.socket()).is_err() {
            if let Some(status) = server.child().try_wait().unwrap() {
                let out = server.child.take().unwrap().wait_with_output().unwrap();
                panic!("tern serve exited early ({status}): {}", describe(&out));
            }
            assert!(Instant::now() < deadline, "tern serve did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

/// A running `tern serve`, killed if the test fails before stopping it.
struct Server {
    child: Option<Child>,
}

impl Server {
    fn child(&mut self) -> &mut Child {
        self.child.as_mut().unwrap()
    }

    /// Sends SIGTERM and waits for the exit; returns status and output.
    fn terminate(mut self) -> (ExitStatus, String, String) {
        let pid = self.child().id().to_string();
        // The workspace forbids unsafe code, so no libc::kill: the shell's
        // kill builtin sends the signal.
        let sent = Command::new("sh")
            .args(["-c", "kill -TERM \"$0\"", &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child().try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "tern serve ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = self.child.take().unwrap().wait_with_output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

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

/// Leaves a socket file nobody listens on, as a crashed server would.
fn make_stale_socket(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(path).unwrap());
    assert!(path.exists());
}

#[test]
fn cli_works_through_a_running_server_and_without_one() {
    let setup = Setup::new();
    // A crashed earlier run left its socket behind: serve must replace it.
    make_stale_socket(&setup.socket());

    let server = setup.serve(&[]);
    let mode = std::fs::metadata(setup.socket()).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    // While the server holds the store, commands go through the socket.
    let out = setup.tern(
        &["account", "add", "alice@example.com", "--password", "pw1"],
        "",
    );
    assert!(out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("route=Socket"),
        "not via the socket: {stderr}"
    );
    let out = setup.tern(
        &["account", "add", "bob@example.com", "--password-stdin"],
        "pw-b\n",
    );
    assert!(out.status.success(), "{}", describe(&out));

    let list = setup.ok(&["account", "list"]);
    assert!(list.contains("alice@example.com"), "{list}");
    assert!(list.contains("bob@example.com"), "{list}");
    assert!(setup.ok(&["domain", "list"]).contains("example.com"));
    setup.ok(&["domain", "add", "example.org"]);
    setup.ok(&[
        "account",
        "passwd",
        "alice@example.com",
        "--password",
        "pw2",
    ]);

    let err = setup.fails(&["account", "add", "carol@elsewhere.test", "--password", "x"]);
    assert!(err.contains("not local"), "{err}");
    let err = setup.fails(&["account", "add", "alice@example.com", "--password", "x"]);
    assert!(err.contains("already exists"), "{err}");
    let err = setup.fails(&["account", "passwd", "nobody@example.com", "--password", "x"]);
    assert!(err.contains("not found"), "{err}");

    let (status, stdout, stderr) = server.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("JMAP session:"), "{stdout}");
    assert!(!setup.socket().exists(), "socket left after a clean stop");
    // Addresses are personal data: not logged at info.
    assert!(!stderr.contains("alice@example.com"), "{stderr}");

    // Server stopped: the CLI opens the store itself and sees the same data.
    let out = setup.tern(&["account", "list"], "");
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("route=Direct"));
    let list = String::from_utf8(out.stdout).unwrap();
    assert!(list.contains("alice@example.com"), "{list}");
    assert!(list.contains("bob@example.com"), "{list}");
    let domains = setup.ok(&["domain", "list"]);
    assert!(domains.contains("example.org"), "{domains}");

    // Also with a stale socket file present.
    make_stale_socket(&setup.socket());
    setup.ok(&["account", "remove", "bob@example.com"]);
    let list = setup.ok(&["account", "list"]);
    assert!(list.contains("alice@example.com"), "{list}");
    assert!(!list.contains("bob@example.com"), "{list}");
    let err = setup.fails(&["account", "remove", "bob@example.com"]);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn demo_mode_creates_the_demo_account_and_prints_the_endpoints() {
    let setup = Setup::new();
    let server = setup.serve(&["--demo"]);
    let list = setup.ok(&["account", "list"]);
    assert!(list.contains("demo@localhost"), "{list}");
    let domains = setup.ok(&["domain", "list"]);
    assert!(domains.contains("localhost"), "{domains}");
    assert!(domains.contains("example.com"), "{domains}");
    let (status, stdout, _) = server.terminate();
    assert_eq!(status.code(), Some(0));
    assert!(stdout.contains("demo@localhost"), "{stdout}");
    assert!(stdout.contains("/.well-known/jmap"), "{stdout}");
    assert!(stdout.contains("JMAP session:"), "{stdout}");

    // A second start finds the account already there.
    let server = setup.serve(&["--demo"]);
    let (status, _, stderr) = server.terminate();
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn a_bad_config_is_refused_with_the_key_named() {
    let setup = Setup::new();
    let bad = setup.dir.path().join("bad.toml");

    std::fs::write(&bad, "[listen]\nsmtp = \"not-an-address\"\n").unwrap();
    for args in [&["serve"][..], &["account", "list"][..]] {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&bad)
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("`listen.smtp`"), "{stderr}");
        assert!(stderr.contains("bad.toml"), "{stderr}");
    }

    std::fs::write(
        &bad,
        "data_dir = \"/tmp/x\"\n[listen]\nsmtpp = \"127.0.0.1:25\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&bad)
        .arg("serve")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown key `listen.smtpp`"), "{stderr}");

    let out = Command::new(BIN)
        .arg("--config")
        .arg(setup.dir.path().join("missing.toml"))
        .arg("serve")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

/// `GET path` on the JMAP listener with an Authorization header, over a
/// raw HTTP/1.1 connection; returns the status code and the body.
fn jmap_get(port: u16, path: &str, authorization: &str) -> (u16, String) {
    use std::io::Read;
    // The JMAP listener starts right after the admin socket: allow it a
    // moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => panic!("JMAP port {port}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {authorization}\r\n\
         Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn app_tokens_from_the_cli_authenticate_jmap_until_revoked() {
    let setup = Setup::new();
    let server = setup.serve(&[]);
    setup.ok(&["account", "add", "alice@example.com", "--password", "pw"]);
    setup.ok(&["account", "add", "bob@example.com", "--password", "pw"]);

    let out = setup.tern(
        &["token", "create", "alice@example.com", "--name", "phone"],
        "",
    );
    assert!(out.status.success(), "{}", describe(&out));
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(secret.starts_with("tern_"), "{secret}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("route=Socket"),
        "not via the socket: {stderr}"
    );
    assert!(stderr.contains("shown only now"), "{stderr}");
    let bob_secret = setup.ok(&["token", "create", "bob@example.com"]);
    let err = setup.fails(&["token", "create", "nobody@example.com"]);
    assert!(err.contains("not found"), "{err}");

    // The token authenticates JMAP on the running server.
    let bearer = format!("Bearer {secret}");
    let (status, body) = jmap_get(setup.jmap_port, "/.well-known/jmap", &bearer);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"username\":\"alice@example.com\""),
        "{body}"
    );

    // Listed by id, with the label, never with the secret.
    let list = setup.ok(&["token", "list", "alice@example.com"]);
    assert!(!list.contains(&secret), "{list}");
    let rows: Vec<&str> = list.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{list}");
    assert!(
        rows[0].contains("alice@example.com") && rows[0].ends_with("phone"),
        "{list}"
    );
    let id = rows[0].split_whitespace().next().unwrap().to_owned();
    assert_eq!(id.len(), 12, "{list}");
    let all = setup.ok(&["token", "list"]);
    assert_eq!(all.lines().count(), 3, "{all}");
    assert!(!all.contains(bob_secret.trim()), "{all}");

    // Revoked: the very next request is refused.
    setup.ok(&["token", "revoke", &id]);
    let (status, _) = jmap_get(setup.jmap_port, "/.well-known/jmap", &bearer);
    assert_eq!(status, 401);
    let err = setup.fails(&["token", "revoke", &id]);
    assert!(err.contains("not found"), "{err}");
    let (status, _) = jmap_get(
        setup.jmap_port,
        "/.well-known/jmap",
        &format!("Bearer {}", bob_secret.trim()),
    );
    assert_eq!(status, 200);

    // Without a server the CLI manages tokens on the store directly.
    let (status, _, stderr) = server.terminate();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let list = setup.ok(&["token", "list"]);
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(list.contains("bob@example.com"), "{list}");
    let bob_id = list
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    setup.ok(&["token", "revoke", &bob_id]);
    let server = setup.serve(&[]);
    let (status, _) = jmap_get(
        setup.jmap_port,
        "/.well-known/jmap",
        &format!("Bearer {}", bob_secret.trim()),
    );
    assert_eq!(status, 401);
    let (status, _, stderr) = server.terminate();
    assert_eq!(status.code(), Some(0), "{stderr}");
}
