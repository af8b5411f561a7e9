//! End to end: full-text search in the real `tern` binary. `tern serve`
//! runs the indexer, so mail delivered over SMTP is found by an Email/query
//! text filter made right after the delivery (read your writes, bounded by
//! `[search] query_wait_ms`), with SearchSnippet/get; `tern reindex
//! [--account ADDRESS]` rebuilds the index through the running server
//! (progress streamed over the admin socket) and, stopped, on the data
//! directory itself (after the index was deleted); a server that finds no
//! index beside existing mail rebuilds it by itself.

mod common;

use std::process::{Command, Stdio};

use common::{BIN, Listeners, Tern, describe, smtp_deliver};
use serde_json::{Value, json};

const USER: &str = "alice@example.com";
const PASSWORD: &str = "wonderland";

/// A data directory with a config on free ports. DNS is unreachable here:
/// no SPF/DKIM/DMARC checks on the MX. A generous wait: the machine
/// running the tests may be loaded.
fn setup() -> Tern {
    Tern::new(
        Listeners {
            metrics: true,
            ..Listeners::default()
        },
        "[smtp.checks]\nenabled = false\n[search]\nquery_wait_ms = 20000\n",
    )
}

impl Tern {
    /// One JMAP request (`using` mail) with `calls`; the method responses.
    fn jmap_calls(&self, calls: Value) -> Vec<Value> {
        common::jmap(
            self.jmap,
            USER,
            PASSWORD,
            &[common::CORE, common::MAIL],
            calls,
        )
    }

    /// Email/query with `filter`, oldest first: the ids.
    fn query(&self, account: &str, filter: Value) -> Vec<String> {
        let r = self.jmap_calls(json!([["Email/query", {
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

/// One SMTP delivery on the MX listener.
fn smtp_send(port: u16, to: &str, message: &str) {
    smtp_deliver(port, "sender@elsewhere.test", to, message);
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
    let mut tern = setup();
    tern.start();
    tern.cli_ok(&["account", "add", USER, "--password", PASSWORD]);
    let account = common::account_id(tern.jmap, USER, PASSWORD);

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
    let r = tern.jmap_calls(json!([["SearchSnippet/get", {
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
    let (stdout, stderr) = tern.cli_ok(&["reindex", "--account", USER]);
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
    let out = tern.run(&["reindex", "--account", "nobody@example.com"], "");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("account nobody@example.com not found"),
        "{}",
        describe(&out)
    );
    tern.stop();

    // Stopped, with the index gone: `tern reindex` rebuilds it on the data
    // directory, and the next server finds everything again.
    std::fs::remove_dir_all(tern.data_dir().join("search")).unwrap();
    let (stdout, stderr) = tern.cli_ok(&["reindex"]);
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
    std::fs::remove_dir_all(tern.data_dir().join("search")).unwrap();
    tern.start();
    assert_eq!(tern.query(&account, json!({"from": "nguyen"})), ids);
    assert_eq!(
        tern.query(&account, json!({"body": "이메일"})),
        [ids[1].clone()]
    );
    tern.stop();
}
