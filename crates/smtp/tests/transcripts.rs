//! Scripted SMTP transcripts against the I/O-free session: every file in
//! `rfc-conformance/smtp/` is one case, named by RFC and section.
//!
//! The format, one item per line:
//!
//! - `C: text`  the client sends `text` CRLF. Consecutive `C:` lines are
//!   sent together (pipelined).
//! - `S: text`  the next reply line the server must give.
//! - `T: timeout` / `T: shutdown`  the driver's timer or stop signal fires.
//! - `D: summary`  the last delivered message's envelope (see [`summary`]).
//! - `M: text`  a line of the last delivered message's data (all `M:` lines
//!   after a `D:` together, each with CRLF, are the whole data).
//! - `O: key[=value] ...`  session options: `listener=mx|submission|
//!   submissions`, `notls`, `plaintext-auth`, `max-size=N`,
//!   `max-recipients=N`, `max-errors=N`, `max-line=N`, `whole-groups`.
//! - `L: domain`  a local domain. `U: address password`  an account.
//!   `A: alias address`  another address of an account.
//!   `Q: address used quota`  an account's bytes used and quota (else
//!   unlimited).
//! - `#` comments and blank lines are skipped.
//!
//! Each case runs twice: with each group of `C:` lines fed at once, and fed
//! one byte at a time (unless `whole-groups`: STARTTLS cases, whose
//! pipelined bytes after STARTTLS must be discarded when they arrive with
//! it).
//!
//! A delivery is answered `250 2.0.0 Message accepted` unless its data has
//! an `X-Test-Reply: <reply>` header, which is then the answer.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tern_smtp::session::{DsnRet, Incoming};
use tern_smtp::{
    Action, Answer, ListenerKind, RecipientLookup, Reply, Session, SessionConfig, Step, TlsInfo,
};
use tern_store::AccountId;

#[derive(Default)]
struct World {
    domains: Vec<String>,
    /// address → (account, password)
    users: Vec<(String, AccountId, String)>,
    deliveries: Vec<Incoming>,
    /// account → (bytes used, quota)
    quotas: Vec<(AccountId, u64, u64)>,
}

impl World {
    fn lookup(&self, address: &str) -> Option<AccountId> {
        let address = address.to_lowercase();
        self.users
            .iter()
            .find(|(a, _, _)| *a == address)
            .map(|(_, id, _)| *id)
    }

    fn answer(&mut self, action: Action) -> Answer {
        match action {
            Action::Authenticate { login, password } => Answer::Login(
                self.users
                    .iter()
                    .find(|(a, _, p)| *a == login.to_lowercase() && *p == password)
                    .map(|(_, id, _)| *id),
            ),
            Action::CheckSender { address } => Answer::Sender(self.lookup(&address)),
            Action::CheckRecipient { address, size } => {
                let address = if address.eq_ignore_ascii_case("postmaster") {
                    format!("postmaster@{}", self.domains[0])
                } else {
                    address
                };
                let Some((_, domain)) = address.rsplit_once('@') else {
                    return Answer::Recipient(RecipientLookup::NotLocal);
                };
                if !self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
                    return Answer::Recipient(RecipientLookup::NotLocal);
                }
                let Some(id) = self.lookup(&address) else {
                    return Answer::Recipient(RecipientLookup::UnknownUser);
                };
                let size = size as u64;
                Answer::Recipient(match self.quotas.iter().find(|q| q.0 == id) {
                    Some(&(_, _, limit)) if size > limit => RecipientLookup::TooBigForMailbox,
                    Some(&(_, used, limit)) if used >= limit || used + size > limit => {
                        RecipientLookup::MailboxFull
                    }
                    _ => RecipientLookup::Local(id),
                })
            }
            Action::Deliver(incoming) => {
                let reply = test_reply(&incoming.data)
                    .unwrap_or_else(|| Reply::new(250, [2, 0, 0], "Message accepted"));
                self.deliveries.push(*incoming);
                Answer::Delivered(reply)
            }
        }
    }
}

fn test_reply(data: &[u8]) -> Option<Reply> {
    let text = String::from_utf8_lossy(data);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("X-Test-Reply: "))?;
    let mut parts = line.splitn(3, ' ');
    let code = parts.next()?.parse().ok()?;
    let esc: Vec<u8> = parts
        .next()?
        .split('.')
        .map(|p| p.parse().unwrap())
        .collect();
    Some(Reply::owned(
        code,
        [esc[0], esc[1], esc[2]],
        parts.next()?.to_owned(),
    ))
}

/// The envelope of a delivered message on one line.
fn summary(m: &Incoming) -> String {
    let e = &m.envelope;
    let mut s = format!("from=<{}> to=", e.mail_from);
    let to: Vec<String> = e
        .recipients
        .iter()
        .map(|r| format!("<{}>", r.address))
        .collect();
    s.push_str(&to.join(","));
    let _ = write!(s, " size={}", m.data.len());
    if e.body == tern_smtp::session::BodyType::EightBitMime {
        s.push_str(" body=8BITMIME");
    }
    if e.smtputf8 {
        s.push_str(" smtputf8");
    }
    match e.dsn_ret {
        Some(DsnRet::Full) => s.push_str(" ret=FULL"),
        Some(DsnRet::Headers) => s.push_str(" ret=HDRS"),
        None => {}
    }
    if let Some(envid) = &e.dsn_envid {
        let _ = write!(s, " envid={envid}");
    }
    for r in &e.recipients {
        if let Some(n) = r.notify {
            let mut flags = Vec::new();
            if n.is_never() {
                flags.push("NEVER");
            }
            if n.success {
                flags.push("SUCCESS");
            }
            if n.failure {
                flags.push("FAILURE");
            }
            if n.delay {
                flags.push("DELAY");
            }
            let _ = write!(s, " notify<{}>={}", r.address, flags.join(","));
        }
        if let Some(orcpt) = &r.orcpt {
            let _ = write!(s, " orcpt<{}>={orcpt}", r.address);
        }
    }
    if let Some(auth) = &m.auth {
        let _ = write!(s, " auth={}", auth.login);
    }
    let _ = write!(s, " proto={}", m.protocol());
    s
}

enum Item {
    Client(String),
    Server(String),
    Timer(String),
    Delivery(String),
    Data(String),
}

struct Case {
    config: SessionConfig,
    implicit_tls: bool,
    whole_groups: bool,
    world: World,
    items: Vec<(usize, Item)>,
}

fn parse(text: &str) -> Case {
    let mut config = SessionConfig::new("mx.test", ListenerKind::Mx);
    let mut implicit_tls = false;
    let mut whole_groups = false;
    let mut world = World::default();
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (tag, rest) = line
            .split_once(": ")
            .or_else(|| line.split_once(':'))
            .unwrap_or_else(|| panic!("line {n}: expected `X: ...`: {line:?}"));
        match tag {
            "C" => items.push((n, Item::Client(rest.to_owned()))),
            "S" => items.push((n, Item::Server(rest.to_owned()))),
            "T" => items.push((n, Item::Timer(rest.to_owned()))),
            "D" => items.push((n, Item::Delivery(rest.to_owned()))),
            "M" => items.push((n, Item::Data(rest.to_owned()))),
            "L" => world.domains.push(rest.to_owned()),
            "U" => {
                let (address, password) = rest.split_once(' ').expect("U: address password");
                let id = AccountId(world.users.len() as u32 + 1);
                world
                    .users
                    .push((address.to_lowercase(), id, password.to_owned()));
            }
            "Q" => {
                let mut parts = rest.split_whitespace();
                let (Some(address), Some(used), Some(limit)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    panic!("line {n}: Q: address used quota");
                };
                let id = world.lookup(address).expect("quota of a known user");
                world
                    .quotas
                    .push((id, used.parse().unwrap(), limit.parse().unwrap()));
            }
            "A" => {
                let (alias, address) = rest.split_once(' ').expect("A: alias address");
                let id = world.lookup(address).expect("alias of a known user");
                world.users.push((alias.to_lowercase(), id, String::new()));
            }
            "O" => {
                for option in rest.split_whitespace() {
                    let (key, value) = option.split_once('=').unwrap_or((option, ""));
                    let number = || value.parse::<usize>().expect("a number");
                    match key {
                        "listener" => {
                            config.kind = match value {
                                "mx" => ListenerKind::Mx,
                                "submission" => ListenerKind::Submission,
                                "submissions" => {
                                    implicit_tls = true;
                                    ListenerKind::Submissions
                                }
                                other => panic!("line {n}: unknown listener {other}"),
                            }
                        }
                        "notls" => config.tls_available = false,
                        "plaintext-auth" => config.allow_plaintext_auth = true,
                        "max-size" => config.max_message_size = number(),
                        "max-recipients" => config.max_recipients = number(),
                        "max-errors" => config.max_errors = number(),
                        "max-line" => config.max_line_length = number(),
                        "whole-groups" => whole_groups = true,
                        other => panic!("line {n}: unknown option {other}"),
                    }
                }
            }
            other => panic!("line {n}: unknown tag {other:?}"),
        }
    }
    Case {
        config,
        implicit_tls,
        whole_groups,
        world,
        items,
    }
}

fn fake_tls() -> TlsInfo {
    TlsInfo {
        version: "TLSv1.3".into(),
        cipher: "TLS13_AES_128_GCM_SHA256".into(),
    }
}

/// Runs the session until it needs input or closes; appends its output.
fn run(session: &mut Session, world: &mut World, out: &mut Vec<u8>) -> bool {
    loop {
        match session.step() {
            Step::NeedInput => break,
            Step::Close => {
                out.extend(session.take_output());
                return true;
            }
            Step::StartTls => session.tls_started(fake_tls()),
            Step::Act(action) => {
                let answer = world.answer(action);
                session.resolve(answer);
            }
        }
    }
    out.extend(session.take_output());
    false
}

/// Runs one transcript; `bytewise` feeds input one byte at a time.
fn check_case(name: &str, text: &str, bytewise: bool) {
    let mut case = parse(text);
    let peer: SocketAddr = "192.0.2.1:40000".parse().unwrap();
    let tls = case.implicit_tls.then(fake_tls);
    let mut session = Session::new(Arc::new(case.config.clone()), peer, tls);
    let mut out = session.take_output();
    let mut input: Vec<u8> = Vec::new();
    let mut closed = false;
    let mode = if bytewise { "bytewise" } else { "grouped" };
    let mut expected_data: Option<(usize, String)> = None;

    let flush_input = |session: &mut Session,
                       world: &mut World,
                       input: &mut Vec<u8>,
                       out: &mut Vec<u8>,
                       closed: &mut bool| {
        if input.is_empty() || *closed {
            input.clear();
            return;
        }
        if bytewise {
            for b in input.iter() {
                session.feed(std::slice::from_ref(b));
                if run(session, world, out) {
                    *closed = true;
                    break;
                }
            }
        } else {
            session.feed(input);
            *closed = run(session, world, out);
        }
        input.clear();
    };

    let check_data = |world: &World, expected: &mut Option<(usize, String)>| {
        if let Some((line, data)) = expected.take() {
            let got = world.deliveries.last().expect("a delivery");
            assert_eq!(
                String::from_utf8_lossy(&got.data),
                data,
                "{name} ({mode}) line {line}: delivered data"
            );
        }
    };

    for (line, item) in std::mem::take(&mut case.items) {
        if !matches!(item, Item::Data(_)) {
            check_data(&case.world, &mut expected_data);
        }
        match item {
            Item::Client(text) => {
                input.extend_from_slice(text.as_bytes());
                input.extend_from_slice(b"\r\n");
            }
            Item::Timer(what) => {
                flush_input(
                    &mut session,
                    &mut case.world,
                    &mut input,
                    &mut out,
                    &mut closed,
                );
                match what.as_str() {
                    "timeout" => session.timed_out(),
                    "shutdown" => session.shutting_down(),
                    other => panic!("{name} line {line}: unknown timer {other}"),
                }
                closed = run(&mut session, &mut case.world, &mut out) || closed;
            }
            Item::Server(expected) => {
                flush_input(
                    &mut session,
                    &mut case.world,
                    &mut input,
                    &mut out,
                    &mut closed,
                );
                let Some(end) = out.windows(2).position(|w| w == b"\r\n") else {
                    panic!(
                        "{name} ({mode}) line {line}: expected {expected:?}, the server said nothing more{}",
                        if closed { " (closed)" } else { "" }
                    );
                };
                let got = String::from_utf8_lossy(&out[..end]).into_owned();
                out.drain(..end + 2);
                assert_eq!(got, expected, "{name} ({mode}) line {line}");
            }
            Item::Delivery(expected) => {
                flush_input(
                    &mut session,
                    &mut case.world,
                    &mut input,
                    &mut out,
                    &mut closed,
                );
                let got = case
                    .world
                    .deliveries
                    .last()
                    .unwrap_or_else(|| panic!("{name} ({mode}) line {line}: no delivery"));
                assert_eq!(summary(got), expected, "{name} ({mode}) line {line}");
            }
            Item::Data(text) => {
                let entry = expected_data.get_or_insert((line, String::new()));
                entry.1.push_str(&text);
                entry.1.push_str("\r\n");
            }
        }
    }
    check_data(&case.world, &mut expected_data);
    flush_input(
        &mut session,
        &mut case.world,
        &mut input,
        &mut out,
        &mut closed,
    );
    assert!(
        out.is_empty(),
        "{name} ({mode}): unexpected output at the end: {:?}",
        String::from_utf8_lossy(&out)
    );
}

/// Runs one transcript file both ways.
fn check(path: &Path) {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let text = std::fs::read_to_string(path).unwrap();
    check_case(&name, &text, false);
    if !parse(&text).whole_groups {
        check_case(&name, &text, true);
    }
}

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rfc-conformance/smtp")
}

#[test]
fn rfc_conformance_transcripts() {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .expect("rfc-conformance/smtp exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 20,
        "expected the SMTP cases, found {}",
        paths.len()
    );
    let mut failed = Vec::new();
    for path in &paths {
        let result = std::panic::catch_unwind(|| check(path));
        if let Err(err) = result {
            let msg = err
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(format!("{}: {msg}", path.display()));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} transcripts failed:\n{}",
        failed.len(),
        paths.len(),
        failed.join("\n")
    );
}
