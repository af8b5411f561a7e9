//! End-to-end tests of the `tern` binary: `tern serve` with the admin
//! socket, the CLI against a running and a stopped server, SIGTERM, and
//! config refusal.

mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::Command;

use common::{BIN, Listeners, Ready, Setup, describe};

/// A temp directory with a config file pointing at free ports.
fn setup() -> Setup {
    Setup::new(Listeners::default(), "[log]\nlevel = \"info\"\n")
}

/// Leaves a socket file nobody listens on, as a crashed server would.
fn make_stale_socket(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(path).unwrap());
    assert!(path.exists());
}

#[test]
fn cli_works_through_a_running_server_and_without_one() {
    let setup = setup();
    // A crashed earlier run left its socket behind: serve must replace it.
    make_stale_socket(&setup.socket());

    let server = setup.serve(&[], Ready::Socket);
    // The server runs without transparent huge pages (see main.rs); the
    // kernel reports the process's setting (since Linux 5.0).
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    match status.lines().find_map(|l| l.strip_prefix("THP_enabled:")) {
        Some(v) => assert_eq!(v.trim(), "0", "huge pages still enabled"),
        // Straight to the stream: the test harness captures `println!`.
        None => {
            let _ = writeln!(
                std::io::stderr(),
                "cli: huge-page check SKIPPED (this kernel does not report THP_enabled)"
            );
        }
    }
    let mode = std::fs::metadata(setup.socket()).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    // While the server holds the store, commands go through the socket.
    let out = setup.run(
        &["account", "add", "alice@example.com", "--password", "pw1"],
        "",
    );
    assert!(out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("route=Socket"),
        "not via the socket: {stderr}"
    );
    let out = setup.run(
        &["account", "add", "bob@example.com", "--password-stdin"],
        "pw-b\n",
    );
    assert!(out.status.success(), "{}", describe(&out));

    let list = setup.cli(&["account", "list"]);
    assert!(list.contains("alice@example.com"), "{list}");
    assert!(list.contains("bob@example.com"), "{list}");
    assert!(setup.cli(&["domain", "list"]).contains("example.com"));
    setup.cli(&["domain", "add", "example.org"]);
    setup.cli(&[
        "account",
        "passwd",
        "alice@example.com",
        "--password",
        "pw2",
    ]);

    let err = setup.cli_fails(&["account", "add", "carol@elsewhere.test", "--password", "x"]);
    assert!(err.contains("not local"), "{err}");
    let err = setup.cli_fails(&["account", "add", "alice@example.com", "--password", "x"]);
    assert!(err.contains("already exists"), "{err}");
    let err = setup.cli_fails(&["account", "passwd", "nobody@example.com", "--password", "x"]);
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
    let out = setup.run(&["account", "list"], "");
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("route=Direct"));
    let list = String::from_utf8(out.stdout).unwrap();
    assert!(list.contains("alice@example.com"), "{list}");
    assert!(list.contains("bob@example.com"), "{list}");
    let domains = setup.cli(&["domain", "list"]);
    assert!(domains.contains("example.org"), "{domains}");

    // Also with a stale socket file present.
    make_stale_socket(&setup.socket());
    setup.cli(&["account", "remove", "bob@example.com"]);
    let list = setup.cli(&["account", "list"]);
    assert!(list.contains("alice@example.com"), "{list}");
    assert!(!list.contains("bob@example.com"), "{list}");
    let err = setup.cli_fails(&["account", "remove", "bob@example.com"]);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn demo_mode_creates_the_demo_account_and_prints_the_endpoints() {
    let setup = setup();
    let server = setup.serve(&["--demo"], Ready::Socket);
    let list = setup.cli(&["account", "list"]);
    assert!(list.contains("demo@localhost"), "{list}");
    let domains = setup.cli(&["domain", "list"]);
    assert!(domains.contains("localhost"), "{domains}");
    assert!(domains.contains("example.com"), "{domains}");
    let (status, stdout, _) = server.terminate();
    assert_eq!(status.code(), Some(0));
    assert!(stdout.contains("demo@localhost"), "{stdout}");
    assert!(stdout.contains("/.well-known/jmap"), "{stdout}");
    assert!(stdout.contains("JMAP session:"), "{stdout}");

    // A second start finds the account already there.
    let server = setup.serve(&["--demo"], Ready::Socket);
    let (status, _, stderr) = server.terminate();
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn a_bad_config_is_refused_with_the_key_named() {
    let setup = setup();
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

/// `GET path` on the JMAP listener with an Authorization header; returns
/// the status code and the body.
fn jmap_get(port: u16, path: &str, authorization: &str) -> (u16, String) {
    let r = common::http(port, "GET", path, &[("Authorization", authorization)], b"");
    (r.status, r.text())
}

#[test]
fn app_tokens_from_the_cli_authenticate_jmap_until_revoked() {
    let setup = setup();
    let server = setup.serve(&[], Ready::Socket);
    setup.cli(&["account", "add", "alice@example.com", "--password", "pw"]);
    setup.cli(&["account", "add", "bob@example.com", "--password", "pw"]);

    let out = setup.run(
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
    let bob_secret = setup.cli(&["token", "create", "bob@example.com"]);
    let err = setup.cli_fails(&["token", "create", "nobody@example.com"]);
    assert!(err.contains("not found"), "{err}");

    // The token authenticates JMAP on the running server.
    let bearer = format!("Bearer {secret}");
    let (status, body) = jmap_get(setup.jmap, "/.well-known/jmap", &bearer);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"username\":\"alice@example.com\""),
        "{body}"
    );

    // Listed by id, with the label, never with the secret.
    let list = setup.cli(&["token", "list", "alice@example.com"]);
    assert!(!list.contains(&secret), "{list}");
    let rows: Vec<&str> = list.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{list}");
    assert!(
        rows[0].contains("alice@example.com") && rows[0].ends_with("phone"),
        "{list}"
    );
    let id = rows[0].split_whitespace().next().unwrap().to_owned();
    assert_eq!(id.len(), 12, "{list}");
    let all = setup.cli(&["token", "list"]);
    assert_eq!(all.lines().count(), 3, "{all}");
    assert!(!all.contains(bob_secret.trim()), "{all}");

    // Revoked: the very next request is refused.
    setup.cli(&["token", "revoke", &id]);
    let (status, _) = jmap_get(setup.jmap, "/.well-known/jmap", &bearer);
    assert_eq!(status, 401);
    let err = setup.cli_fails(&["token", "revoke", &id]);
    assert!(err.contains("not found"), "{err}");
    let (status, _) = jmap_get(
        setup.jmap,
        "/.well-known/jmap",
        &format!("Bearer {}", bob_secret.trim()),
    );
    assert_eq!(status, 200);

    // Without a server the CLI manages tokens on the store directly.
    let (status, _, stderr) = server.terminate();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let list = setup.cli(&["token", "list"]);
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
    setup.cli(&["token", "revoke", &bob_id]);
    let server = setup.serve(&[], Ready::Socket);
    let (status, _) = jmap_get(
        setup.jmap,
        "/.well-known/jmap",
        &format!("Bearer {}", bob_secret.trim()),
    );
    assert_eq!(status, 401);
    let (status, _, stderr) = server.terminate();
    assert_eq!(status.code(), Some(0), "{stderr}");
}
