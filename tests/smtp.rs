//! End-to-end tests of SMTP in the real `tern` binary: `tern serve` from a
//! temp config on free ports, driven by real clients (Python's smtplib,
//! swaks, raw sockets). What was stored is read back through the store
//! API opened on the data directory once the server has stopped (or was
//! killed), or through JMAP over HTTP against a running server.
//!
//! This machine's resolver is unreachable, so the authentication checks
//! are off (`[smtp.checks] enabled = false`) except in the test that runs
//! them against a DNS server of its own.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Listeners, Ready, Server, Setup, free_port};
use tern_store::MailStore;
use tern_store::email::Listing;

const ALICE: (&str, &str) = ("alice@example.com", "alice-pw");
const BOB: (&str, &str) = ("bob@example.com", "bob-pw");
const UTF8_USER: (&str, &str) = ("δοκιμή@example.com", "utf8-pw");

// ------------------------------------------------------------ the binary ---

/// Config lines added to the sections the tests tune.
#[derive(Default)]
struct Extra {
    /// Lines of `[smtp]`.
    smtp: &'static str,
    /// Lines of `[smtp.checks]`; default `enabled = false`.
    checks: Option<&'static str>,
    /// Lines of `[dns]`.
    dns: String,
}

/// A temp directory with a config file on free ports (submissions too)
/// and the accounts above.
struct Tern {
    setup: Setup,
    jmap: SocketAddr,
    mx: SocketAddr,
    submission: SocketAddr,
    submissions: SocketAddr,
}

impl Tern {
    fn new(extra: Extra) -> Tern {
        let setup = Setup::new(
            Listeners {
                submissions: true,
                ..Listeners::default()
            },
            &format!(
                "[smtp]\n{smtp}\n\
                 [smtp.checks]\n{checks}\n\
                 [dns]\n{dns}\n\
                 [routes]\n\
                 \"example.org\" = \"127.0.0.1:{closed}\"\n\
                 [log]\n\
                 level = \"info\"\n",
                smtp = extra.smtp,
                checks = extra.checks.unwrap_or("enabled = false"),
                dns = extra.dns,
                // Remote mail goes to a port nobody listens on: it waits in
                // the outbound queue (connection refused is temporary).
                closed = free_port(),
            ),
        );
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let tern = Tern {
            jmap: addr(setup.jmap),
            mx: addr(setup.smtp),
            submission: addr(setup.submission),
            submissions: addr(setup.submissions),
            setup,
        };
        // `tern serve` adds the config's domains; the accounts come first.
        tern.setup.cli(&["domain", "add", "example.com"]);
        for (address, password) in [ALICE, BOB, UTF8_USER] {
            tern.setup
                .cli(&["account", "add", address, "--password", password]);
        }
        tern
    }

    /// Starts `tern serve` and waits until every listener is bound (the
    /// log says so: probing the SMTP ports would use up rate limit).
    fn serve(&self) -> Server {
        self.setup.serve(&[], Ready::Logged)
    }

    /// Opens the store on the data directory (the server must be stopped).
    fn store(&self) -> MailStore {
        MailStore::open(&self.setup.data_dir()).unwrap()
    }
}

// -------------------------------------------------------- stored mail ---

/// A stored message as a test sees it.
#[derive(Debug)]
struct Stored {
    raw: String,
    mailbox_role: Option<String>,
}

impl Stored {
    /// The unfolded value of the first header `name`.
    fn header(&self, name: &str) -> Option<String> {
        let head = self.raw.split("\r\n\r\n").next().unwrap_or_default();
        let mut lines = head.split("\r\n").peekable();
        while let Some(line) = lines.next() {
            if let Some((n, v)) = line.split_once(':')
                && n.eq_ignore_ascii_case(name)
            {
                let mut value = v.trim().to_owned();
                while lines
                    .peek()
                    .is_some_and(|l| l.starts_with(' ') || l.starts_with('\t'))
                {
                    value.push(' ');
                    value.push_str(lines.next().unwrap().trim());
                }
                return Some(value);
            }
        }
        None
    }

    fn subject(&self) -> String {
        self.header("Subject").unwrap_or_default()
    }
}

/// The messages of `address`'s account, oldest first.
fn messages(store: &MailStore, address: &str) -> Vec<Stored> {
    let account = store.lookup_address(address).unwrap().expect("account");
    store
        .kv()
        .read(|tx| -> tern_store::Result<Vec<Stored>> {
            let mut out = Vec::new();
            let listed =
                tern_store::email::list_by_date(tx, account, Listing::All, false, None, 100_000)?;
            for (_, id) in listed {
                let meta = tern_store::email::get(tx, account, id)?.expect("meta");
                let raw = tern_store::blob::read(tx, &meta.blob)?.expect("blob");
                let mailbox =
                    tern_store::mailbox::get(tx, account, meta.mailbox_ids[0])?.expect("mailbox");
                out.push(Stored {
                    raw: String::from_utf8_lossy(&raw).into_owned(),
                    mailbox_role: mailbox.role,
                });
            }
            Ok(out)
        })
        .unwrap()
}

fn subjects(store: &MailStore, address: &str) -> Vec<String> {
    messages(store, address)
        .iter()
        .map(Stored::subject)
        .collect()
}

// ------------------------------------------------------------- clients ---

/// Runs a Python script with `args`; returns its stdout. Fails the test
/// with the script's stderr when it exits non-zero.
fn python(script: &str, args: &[String]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn port(addr: SocketAddr) -> String {
    addr.port().to_string()
}

/// swaks with `args`: (exit status success, stdout + stderr). `None`
/// after saying SKIPPED when swaks is not installed.
fn swaks(args: &[&str]) -> Option<(bool, String)> {
    let out = match Command::new("swaks")
        .args(args)
        .args(["--helo", "client.example.org", "--timeout", "20"])
        .output()
    {
        Ok(out) => out,
        Err(err) => {
            eprintln!("SKIPPED: swaks is not installed ({err}); scripts/setup.sh installs it");
            return None;
        }
    };
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Some((out.status.success(), text))
}

/// A raw SMTP connection: bytes out, whole replies in.
struct Raw {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Raw {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// One whole reply (all its lines); "" at the end of the stream.
    fn reply(&mut self) -> String {
        let mut out = String::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return out,
                Ok(_) => {}
            }
            out.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return out;
            }
        }
    }

    /// Whether the server closed the connection.
    fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(self.reader.read(&mut buf), Ok(0) | Err(_))
    }
}

// --------------------------------------------------------------- tests ---

const SMTPLIB_MX: &str = r#"
import smtplib, ssl, sys
port = int(sys.argv[1])
s = smtplib.SMTP('127.0.0.1', port, local_hostname='client.example.org')
s.ehlo()
print('ehlo', ' '.join(sorted(s.esmtp_features)))
print('vrfy', s.verify('alice@example.com')[0])
print('auth-on-mx', s.docmd('AUTH', 'PLAIN AGFsaWNlQGV4YW1wbGUuY29tAGFsaWNlLXB3')[0])
s.mail('sender@example.org')
print('rcpt-alice', *s.rcpt('alice@example.com'))
print('rcpt-unknown', *s.rcpt('nobody@example.com'))
print('rcpt-relay', *s.rcpt('victim@example.net'))
print('data', s.data(b'From: sender@example.org\r\nSubject: plain\r\n\r\nHi Alice.\r\n')[0])
# 8-bit body and a UTF-8 address, sender and recipient.
msg = 'From: χρήστης@example.org\r\nSubject: γειά σου\r\n\r\nΚαλημέρα, naïve café\r\n'.encode()
s.sendmail('χρήστης@example.org', ['δοκιμή@example.com'], msg,
           mail_options=['SMTPUTF8', 'BODY=8BITMIME'])
print('utf8 sent')
try:
    s.sendmail('sender@example.org', ['δοκιμή@example.com'], b'Subject: no utf8\r\n\r\nx\r\n')
except smtplib.SMTPRecipientsRefused as e:
    print('utf8-without-smtputf8', *e.recipients['δοκιμή@example.com'])
s.sendmail('sender@example.org', ['bob@example.com'], 'Subject: 8bit\r\n\r\nnaïve\r\n'.encode(),
           mail_options=['BODY=8BITMIME'])
print('8bit sent')
# STARTTLS on the MX: the session starts over, then mail goes through.
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s.starttls(context=ctx)
s.ehlo()
print('after-tls starttls', s.has_extn('starttls'), 'auth', s.has_extn('auth'))
s.sendmail('sender@example.org', ['bob@example.com'], b'Subject: over tls\r\n\r\nsecret\r\n')
print('tls sent')
s.quit()
"#;

/// The MX: extensions, VRFY, no AUTH, unknown users, relaying, 8-bit and
/// UTF-8 mail, STARTTLS (smtplib); PIPELINING and BDAT (raw socket).
#[test]
fn mx_delivers_locally_refuses_unknown_users_and_relaying_pipelines_and_chunks() {
    let tern = Tern::new(Extra::default());
    let server = tern.serve();
    let out = python(SMTPLIB_MX, &[port(tern.mx)]);
    assert_eq!(
        out,
        "ehlo 8bitmime chunking dsn enhancedstatuscodes pipelining size smtputf8 starttls\n\
         vrfy 252\n\
         auth-on-mx 502\n\
         rcpt-alice 250 b'2.1.5 Recipient OK'\n\
         rcpt-unknown 550 b'5.1.1 Mailbox does not exist'\n\
         rcpt-relay 554 b'5.7.1 Relay access denied: this server only accepts mail for its own domains'\n\
         data 250\n\
         utf8 sent\n\
         utf8-without-smtputf8 553 b'5.6.7 Non-ASCII recipient address requires the SMTPUTF8 parameter'\n\
         8bit sent\n\
         after-tls starttls False auth False\n\
         tls sent\n"
    );

    // One write: EHLO, MAIL, three RCPTs (one unknown, one relay) and a
    // message in three BDAT chunks, then QUIT.
    let mut c = Raw::connect(tern.mx);
    assert!(c.reply().starts_with("220 mx.test"));
    let chunks: [&[u8]; 3] = [b"Subject: chunks\r\n\r\n", b"first, ", b"second\r\n"];
    let mut batch = b"EHLO client.example.org\r\nMAIL FROM:<sender@example.org>\r\n".to_vec();
    batch.extend_from_slice(b"RCPT TO:<alice@example.com>\r\nRCPT TO:<nobody@example.com>\r\n");
    batch.extend_from_slice(b"RCPT TO:<victim@example.net>\r\nRCPT TO:<bob@example.com>\r\n");
    for (i, chunk) in chunks.iter().enumerate() {
        let last = if i == chunks.len() - 1 { " LAST" } else { "" };
        batch.extend_from_slice(format!("BDAT {}{last}\r\n", chunk.len()).as_bytes());
        batch.extend_from_slice(chunk);
    }
    batch.extend_from_slice(b"QUIT\r\n");
    c.send(&batch);
    assert!(c.reply().contains("250-PIPELINING\r\n"));
    assert_eq!(c.reply(), "250 2.1.0 Sender OK\r\n");
    assert_eq!(c.reply(), "250 2.1.5 Recipient OK\r\n");
    assert_eq!(c.reply(), "550 5.1.1 Mailbox does not exist\r\n");
    assert!(c.reply().starts_with("554 5.7.1 Relay access denied"));
    assert_eq!(c.reply(), "250 2.1.5 Recipient OK\r\n");
    assert_eq!(c.reply(), "250 2.0.0 19 octets received\r\n");
    assert_eq!(c.reply(), "250 2.0.0 7 octets received\r\n");
    assert!(c.reply().starts_with("250 2.0.0 Message accepted"));
    assert_eq!(c.reply(), "221 2.0.0 Bye\r\n");
    assert!(c.closed());

    let log = server.stop();
    // Addresses are personal data: not logged at info.
    assert!(!log.contains("alice@example.com"), "{log}");
    let store = tern.store();
    let alice = messages(&store, ALICE.0);
    assert_eq!(
        alice.iter().map(Stored::subject).collect::<Vec<_>>(),
        ["plain", "chunks"]
    );
    assert_eq!(alice[0].mailbox_role.as_deref(), Some("inbox"));
    let received = alice[0].header("Received").unwrap();
    assert!(
        received
            .starts_with("from client.example.org ([127.0.0.1]) by mx.test (Tern) with ESMTP id "),
        "{received}"
    );
    assert!(received.contains("for <alice@example.com>;"), "{received}");
    assert!(
        alice[1]
            .raw
            .ends_with("Subject: chunks\r\n\r\nfirst, second\r\n")
    );
    assert!(alice[0].header("Authentication-Results").is_none());

    let utf8 = messages(&store, UTF8_USER.0);
    assert_eq!(utf8.len(), 1);
    assert!(utf8[0].raw.ends_with("Καλημέρα, naïve café\r\n"));
    assert_eq!(utf8[0].subject(), "γειά σου");

    let bob = messages(&store, BOB.0);
    assert_eq!(
        bob.iter().map(Stored::subject).collect::<Vec<_>>(),
        ["8bit", "over tls", "chunks"]
    );
    assert!(bob[0].raw.ends_with("naïve\r\n"));
    let received = bob[1].header("Received").unwrap();
    assert!(
        received.contains("(using TLSv1.3 with cipher"),
        "{received}"
    );
    assert!(received.contains("with ESMTPS id"), "{received}");
}

const SMTPLIB_OVERSIZE: &str = r#"
import smtplib, sys
port = int(sys.argv[1])
s = smtplib.SMTP('127.0.0.1', port, local_hostname='client.example.org')
s.ehlo()
print('size', s.esmtp_features['size'])
big = b'Subject: big\r\n\r\n' + (b'x' * 78 + b'\r\n') * 200
try:
    s.sendmail('sender@example.org', ['alice@example.com'], big)
except smtplib.SMTPSenderRefused as e:
    print('mail', e.smtp_code, e.smtp_error.decode())
# Without SIZE= the limit is enforced while reading DATA.
s.mail('sender@example.org')
s.rcpt('alice@example.com')
print('data', *s.data(big))
s.sendmail('sender@example.org', ['alice@example.com'], b'Subject: small\r\n\r\nok\r\n')
print('small sent')
s.quit()
"#;

/// `[smtp] max_message_size` is enforced at MAIL SIZE=, in DATA and in
/// BDAT; the session goes on.
#[test]
fn oversized_messages_are_refused_at_mail_in_data_and_in_bdat() {
    let tern = Tern::new(Extra {
        smtp: "max_message_size = 10000",
        ..Extra::default()
    });
    let server = tern.serve();
    let out = python(SMTPLIB_OVERSIZE, &[port(tern.mx)]);
    assert_eq!(
        out,
        "size 10000\n\
         mail 552 5.3.4 Message size exceeds fixed maximum message size\n\
         data 552 b'5.3.4 Message size exceeds fixed maximum message size'\n\
         small sent\n"
    );
    let mut c = Raw::connect(tern.mx);
    c.reply();
    c.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.com>\r\nBDAT 6000\r\n");
    c.send(&[b'x'; 6000]);
    c.send(b"BDAT 6000 LAST\r\n");
    c.send(&[b'y'; 6000]);
    c.send(b"NOOP\r\n");
    c.reply();
    assert_eq!(c.reply(), "250 2.1.0 Sender OK\r\n");
    assert_eq!(c.reply(), "250 2.1.5 Recipient OK\r\n");
    assert_eq!(c.reply(), "250 2.0.0 6000 octets received\r\n");
    assert_eq!(
        c.reply(),
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    assert_eq!(c.reply(), "250 2.0.0 OK\r\n");
    drop(c);
    server.stop();
    assert_eq!(subjects(&tern.store(), ALICE.0), ["small"]);
}

const SMTPLIB_SUBMISSION: &str = r#"
import smtplib, ssl, sys
port, ssl_port = int(sys.argv[1]), int(sys.argv[2])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP('127.0.0.1', port, local_hostname='laptop.example.com')
s.ehlo()
print('before-tls auth', s.has_extn('auth'))
print('auth-in-clear', s.docmd('AUTH', 'PLAIN AGFsaWNlQGV4YW1wbGUuY29tAGFsaWNlLXB3')[0])
print('mail-without-auth', s.docmd('MAIL', 'FROM:<alice@example.com>')[0])
s.starttls(context=ctx)
s.ehlo()
print('after-tls auth', s.esmtp_features.get('auth', '').strip())
try:
    s.login('alice@example.com', 'wrong')
except smtplib.SMTPAuthenticationError as e:
    print('bad-login', e.smtp_code, e.smtp_error.decode())
s.login('alice@example.com', 'alice-pw')
print('login ok')
for sender in ['bob@example.com', 'nobody@example.com', 'alice@example.net']:
    try:
        s.sendmail(sender, ['bob@example.com'], b'Subject: spoof\r\n\r\nx\r\n')
    except smtplib.SMTPSenderRefused as e:
        print('as', sender, e.smtp_code, e.smtp_error.decode())
s.sendmail('alice@example.com', ['friend@example.org'], b'Subject: out\r\n\r\nx\r\n')
print('remote accepted')
refused = s.sendmail('alice@example.com', ['bob@example.com', 'friend@example.org'],
                     b'From: alice@example.com\r\nSubject: mixed\r\n\r\nhello bob\r\n')
print('mixed refused', sorted(refused))
s.quit()
# Implicit TLS (RFC 8314) with AUTH LOGIN.
s = smtplib.SMTP_SSL('127.0.0.1', ssl_port, local_hostname='laptop.example.com', context=ctx)
s.ehlo()
print('465 starttls', s.has_extn('starttls'))
s.user, s.password = 'bob@example.com', 'bob-pw'
print('465 login', s.auth('LOGIN', s.auth_login)[0])
s.sendmail('bob@example.com', ['alice@example.com'], b'Subject: implicit tls\r\n\r\nhi\r\n')
print('465 sent')
s.quit()
"#;

/// Submission: AUTH only over TLS, the user sends only as their own
/// addresses (553 5.7.1), local recipients delivered, remote ones kept in
/// the outbound queue, never dropped.
#[test]
fn submission_needs_tls_and_auth_sends_as_own_address_only_and_defers_remote() {
    let tern = Tern::new(Extra::default());
    let server = tern.serve();
    let out = python(
        SMTPLIB_SUBMISSION,
        &[port(tern.submission), port(tern.submissions)],
    );
    let sender_refused = "553 5.7.1 Sender address is not an address of the authenticated user";
    let expected = format!(
        "before-tls auth False\n\
         auth-in-clear 538\n\
         mail-without-auth 530\n\
         after-tls auth PLAIN LOGIN\n\
         bad-login 535 5.7.8 Authentication credentials invalid\n\
         login ok\n\
         as bob@example.com {sender_refused}\n\
         as nobody@example.com {sender_refused}\n\
         as alice@example.net {sender_refused}\n\
         remote accepted\n\
         mixed refused []\n\
         465 starttls False\n\
         465 login 235\n\
         465 sent\n"
    );
    assert_eq!(out, expected);
    server.stop();
    let store = tern.store();
    let bob = messages(&store, BOB.0);
    assert_eq!(
        bob.iter().map(Stored::subject).collect::<Vec<_>>(),
        ["mixed"]
    );
    let received = bob[0].header("Received").unwrap();
    assert!(received.contains("(using TLSv1."), "{received}");
    assert!(received.contains("with ESMTPSA id"), "{received}");
    assert!(bob[0].raw.ends_with("hello bob\r\n"));
    assert_eq!(subjects(&store, ALICE.0), ["implicit tls"]);
    // Both messages to friend@example.org are in the outbound queue (the
    // resolver here is unreachable: they wait for their next attempt).
    let queued = tern_store::queue::list(store.kv()).unwrap();
    assert_eq!(queued.len(), 2, "{queued:?}");
    for (_, m) in &queued {
        assert_eq!(m.mail_from, ALICE.0);
        let to: Vec<&str> = m.recipients.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(to, ["friend@example.org"]);
    }
}

/// Concatenates argument lists.
fn cat<'a>(parts: &[&[&'a str]]) -> Vec<&'a str> {
    parts.concat()
}

/// swaks against the MX and the submission ports.
#[test]
fn swaks_mx_pipelining_relay_unknown_user_and_submission() {
    let tern = Tern::new(Extra::default());
    let server = tern.serve();
    let (mx, sub, subs) = (
        tern.mx.to_string(),
        tern.submission.to_string(),
        tern.submissions.to_string(),
    );
    let outside = ["--from", "sender@example.org"];
    let login = ["-tls", "-a", "PLAIN", "-au", ALICE.0, "-ap", ALICE.1];

    let Some((ok, out)) = swaks(&cat(&[
        &["--server", &mx, "--pipeline"],
        &outside,
        &["--to", ALICE.0, "--header", "Subject: swaks mx"],
    ])) else {
        return;
    };
    assert!(ok, "{out}");
    assert!(out.contains("250 2.0.0 Message accepted"), "{out}");

    for (rcpt, reply) in [
        ("victim@example.net", "554 5.7.1 Relay access denied"),
        ("nobody@example.com", "550 5.1.1 Mailbox does not exist"),
        // swaks does not say SMTPUTF8: a UTF-8 address is refused.
        (UTF8_USER.0, "553 5.6.7 Non-ASCII recipient address"),
    ] {
        let (ok, out) = swaks(&cat(&[&["--server", &mx], &outside, &["--to", rcpt]])).unwrap();
        assert!(!ok, "{out}");
        assert!(out.contains(reply), "{reply} in {out}");
    }

    let (ok, out) = swaks(&cat(&[
        &["--server", &sub, "--from", ALICE.0, "--to", BOB.0],
        &login,
        &["--header", "Subject: swaks submission"],
    ]))
    .unwrap();
    assert!(ok, "{out}");
    assert!(out.contains("235 2.7.0 Authentication successful"), "{out}");

    let (ok, out) = swaks(&cat(&[
        &["--server", &sub, "--from", BOB.0, "--to", BOB.0],
        &login,
    ]))
    .unwrap();
    assert!(!ok, "{out}");
    assert!(
        out.contains("553 5.7.1 Sender address is not an address"),
        "{out}"
    );

    // A remote recipient: accepted for the outbound queue.
    let (ok, out) = swaks(&cat(&[
        &[
            "--server",
            &sub,
            "--from",
            ALICE.0,
            "--to",
            "friend@example.org",
        ],
        &login,
    ]))
    .unwrap();
    assert!(ok, "{out}");

    let (ok, out) = swaks(&cat(&[&[
        "--server", &sub, "--from", ALICE.0, "--to", BOB.0, "-tls",
    ]]))
    .unwrap();
    assert!(!ok, "{out}");
    assert!(out.contains("530 5.7.0 Authentication required"), "{out}");

    let (ok, out) = swaks(&cat(&[
        &[
            "--server",
            &subs,
            "--tls-on-connect",
            "--from",
            BOB.0,
            "--to",
            ALICE.0,
        ],
        &["-a", "LOGIN", "-au", BOB.0, "-ap", BOB.1],
        &["--header", "Subject: swaks submissions"],
    ]))
    .unwrap();
    assert!(ok, "{out}");

    server.stop();
    let store = tern.store();
    assert_eq!(subjects(&store, ALICE.0), ["swaks mx", "swaks submissions"]);
    assert_eq!(subjects(&store, BOB.0), ["swaks submission"]);
    assert_eq!(tern_store::queue::list(store.kv()).unwrap().len(), 1);
}

/// `[smtp]` limits from the config file: the command timeout, connections
/// per IP and the per-IP connection rate each answer 421 and close.
#[test]
fn limits_from_the_config_file_answer_421_and_close() {
    let tern = Tern::new(Extra {
        smtp: "command_timeout = 1\nmax_connections_per_ip = 2\nconnections_per_minute = 4",
        ..Extra::default()
    });
    let server = tern.serve();
    let mut first = Raw::connect(tern.mx);
    assert!(first.reply().starts_with("220 "));
    let mut second = Raw::connect(tern.submission);
    assert!(second.reply().starts_with("220 "));
    let mut third = Raw::connect(tern.mx);
    assert_eq!(
        third.reply(),
        "421 4.7.0 Too many connections from your address; try again later\r\n"
    );
    assert!(third.closed());
    // The second connection is alive (it would time out as the first does
    // if it waited as long, so it leaves now).
    second.send(b"QUIT\r\n");
    assert_eq!(second.reply(), "221 2.0.0 Bye\r\n");
    // Nothing said for a second: the command timeout.
    let started = Instant::now();
    assert_eq!(
        first.reply(),
        "421 4.4.2 mx.test Timeout waiting for command; closing connection\r\n"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(first.closed());
    // Four connections this minute: the fifth is over the rate.
    std::thread::sleep(Duration::from_millis(200));
    let mut fourth = Raw::connect(tern.mx);
    assert!(fourth.reply().starts_with("220 "));
    drop(fourth);
    std::thread::sleep(Duration::from_millis(200));
    let mut fifth = Raw::connect(tern.mx);
    assert_eq!(
        fifth.reply(),
        "421 4.7.0 Connection rate limit exceeded; try again later\r\n"
    );
    assert!(fifth.closed());
    server.stop();
}

const JMAP_SUBJECTS: &str = r#"
import base64, json, sys, urllib.request
base, user, password = sys.argv[1], sys.argv[2], sys.argv[3]
auth = 'Basic ' + base64.b64encode(f'{user}:{password}'.encode()).decode()
def call(url, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={
        'Authorization': auth, 'Content-Type': 'application/json'})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)
session = call(base + '/.well-known/jmap')
account = session['primaryAccounts']['urn:ietf:params:jmap:mail']
response = call(session['apiUrl'], {
    'using': ['urn:ietf:params:jmap:core', 'urn:ietf:params:jmap:mail'],
    'methodCalls': [
        ['Email/query', {'accountId': account, 'limit': 450}, 'q'],
        ['Email/get', {'accountId': account, 'properties': ['subject'],
                       '#ids': {'resultOf': 'q', 'name': 'Email/query', 'path': '/ids'}}, 'g'],
    ]})
for email in response['methodResponses'][1][1]['list']:
    print(email['subject'])
"#;

/// Several sessions send messages to two local recipients; the server is
/// killed with SIGKILL as soon as a batch of 250s has come back, while
/// other messages are in flight. After the crash every acknowledged
/// message is in both mailboxes (store opened on the data directory),
/// each message is in both or in neither (one transaction), and the
/// restarted server serves them over JMAP.
#[test]
fn sigkill_right_after_the_250s_loses_no_acknowledged_message() {
    const SESSIONS: usize = 4;
    const KILL_AFTER: usize = 120;
    let tern = Tern::new(Extra::default());
    let server = tern.serve();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let sessions: Vec<_> = (0..SESSIONS)
        .map(|s| {
            let acked = Arc::clone(&acked);
            let mx = tern.mx;
            std::thread::spawn(move || {
                let mut c = Raw::connect(mx);
                assert!(c.reply().starts_with("220 "));
                c.send(b"EHLO client.example.org\r\n");
                c.reply();
                for i in 0.. {
                    let subject = format!("kill-{s}-{i}");
                    let envelope = "MAIL FROM:<sender@example.org>\r\n\
                                    RCPT TO:<alice@example.com>\r\n\
                                    RCPT TO:<bob@example.com>\r\nDATA\r\n";
                    let message = format!("Subject: {subject}\r\n\r\nbody {i}\r\n.\r\n");
                    if c.writer.write_all(envelope.as_bytes()).is_err() {
                        return;
                    }
                    for _ in 0..4 {
                        if c.reply().is_empty() {
                            return; // killed
                        }
                    }
                    if c.writer.write_all(message.as_bytes()).is_err() {
                        return;
                    }
                    let reply = c.reply();
                    if !reply.starts_with("250 2.0.0 Message accepted") {
                        assert!(reply.is_empty(), "{reply}");
                        return;
                    }
                    acked.lock().unwrap().push(subject);
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.lock().unwrap().len() < KILL_AFTER {
        assert!(Instant::now() < deadline, "the 250s are too slow");
        std::thread::sleep(Duration::from_millis(1));
    }
    let cert_path = tern.setup.data_dir().join("tls").join("cert.pem");
    let cert = std::fs::read(&cert_path).expect("a self-signed certificate was generated");
    server.kill();
    for session in sessions {
        session.join().unwrap();
    }
    let mut acked = acked.lock().unwrap().clone();
    acked.sort();

    let store = tern.store();
    let mut alice = subjects(&store, ALICE.0);
    let mut bob = subjects(&store, BOB.0);
    alice.sort();
    bob.sort();
    let lost: Vec<_> = acked
        .iter()
        .filter(|s| alice.binary_search(s).is_err())
        .collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert_eq!(
        alice, bob,
        "every message is in both mailboxes or in neither"
    );
    assert!(
        alice.len() <= acked.len() + SESSIONS,
        "at most one unacknowledged per session"
    );
    drop(store);

    let server = tern.serve();
    assert_eq!(
        std::fs::read(&cert_path).unwrap(),
        cert,
        "the certificate is kept"
    );
    let base = format!("http://{}", tern.jmap);
    let listed = python(JMAP_SUBJECTS, &[base, ALICE.0.into(), ALICE.1.into()]);
    let mut listed: Vec<String> = listed.lines().map(str::to_owned).collect();
    listed.sort();
    assert_eq!(listed, alice);
    server.stop();
}

// ------------------------------------------------------------- checks ---

/// DNS wire format: a name as labels.
fn dns_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

const TXT: u16 = 16;
const A: u16 = 1;
const PTR: u16 = 12;

/// Serves `zone` ((name, type, rdata)) over UDP on 127.0.0.1 from a
/// thread; unknown names get NXDOMAIN.
fn dns_server(zone: Vec<(&'static str, u16, Vec<u8>)>) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                return;
            };
            let query = &buf[..n];
            if n < 12 {
                continue;
            }
            // The question: labels, then type and class.
            let mut at = 12;
            let mut labels = Vec::new();
            while at < n && query[at] != 0 {
                let len = query[at] as usize;
                let end = (at + 1 + len).min(n);
                labels.push(String::from_utf8_lossy(&query[at + 1..end]).to_lowercase());
                at = end;
            }
            if at + 5 > n {
                continue;
            }
            let qtype = u16::from_be_bytes([query[at + 1], query[at + 2]]);
            let question_end = at + 5;
            let name = labels.join(".");
            let answers: Vec<&Vec<u8>> = zone
                .iter()
                .filter(|(n, t, _)| *n == name && *t == qtype)
                .map(|(_, _, rdata)| rdata)
                .collect();
            let known = zone.iter().any(|(n, _, _)| *n == name);
            let mut out = Vec::with_capacity(512);
            out.extend_from_slice(&query[..2]);
            out.push(0x84 | (query[2] & 0x01)); // response, authoritative, RD
            out.push(if known { 0x80 } else { 0x83 }); // RA, NOERROR/NXDOMAIN
            out.extend_from_slice(&[0, 1]);
            out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0]);
            out.extend_from_slice(&query[12..question_end]);
            for rdata in answers {
                out.extend_from_slice(&[0xc0, 0x0c]);
                out.extend_from_slice(&qtype.to_be_bytes());
                out.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
                out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
                out.extend_from_slice(rdata);
            }
            let _ = socket.send_to(&out, from);
        }
    });
    addr
}

fn txt(text: &str) -> Vec<u8> {
    let mut out = vec![text.len() as u8];
    out.extend_from_slice(text.as_bytes());
    out
}

/// `[smtp.checks]` on, `[dns] nameservers` at a local DNS server: SPF,
/// DMARC and iprev are evaluated, recorded in Authentication-Results, and
/// a DMARC p=reject failure is refused.
#[test]
fn checks_run_against_the_configured_dns_server() {
    let dns = dns_server(vec![
        ("example.org", TXT, txt("v=spf1 ip4:127.0.0.1 -all")),
        ("_dmarc.example.org", TXT, txt("v=DMARC1; p=reject")),
        ("reject.test", TXT, txt("v=spf1 -all")),
        ("_dmarc.reject.test", TXT, txt("v=DMARC1; p=reject")),
        ("client.example.org", A, vec![127, 0, 0, 1]),
        (
            "1.0.0.127.in-addr.arpa",
            PTR,
            dns_name("client.example.org"),
        ),
    ]);
    let tern = Tern::new(Extra {
        checks: Some("enabled = true\ndmarc_reject = true"),
        dns: format!("nameservers = [\"{dns}\"]\ntimeout = 2"),
        ..Extra::default()
    });
    let server = tern.serve();
    let send = |from: &str| {
        let mut c = Raw::connect(tern.mx);
        c.reply();
        c.send(
            format!(
                "EHLO client.example.org\r\nMAIL FROM:<{from}>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n"
            )
            .as_bytes(),
        );
        for _ in 0..4 {
            c.reply();
        }
        c.send(format!("From: {from}\r\nSubject: from {from}\r\n\r\nhello\r\n.\r\n").as_bytes());
        c.reply()
    };
    assert!(send("news@example.org").starts_with("250 2.0.0 Message accepted"));
    assert_eq!(
        send("ceo@reject.test"),
        "550 5.7.1 Rejected by the DMARC policy of reject.test\r\n"
    );
    server.stop();
    let stored = messages(&tern.store(), ALICE.0);
    assert_eq!(stored.len(), 1);
    let results = stored[0].header("Authentication-Results").unwrap();
    for expected in [
        "mx.test;",
        "spf=pass",
        "smtp.mailfrom=news@example.org",
        "dmarc=pass",
        "iprev=pass",
    ] {
        assert!(results.contains(expected), "{expected} in {results}");
    }
}
