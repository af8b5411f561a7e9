//! Syntax checks of the DSN parameters (RFC 3461 §4) that the command
//! parser lets through: each parameter at most once, ENVID and ORCPT in
//! well-formed xtext, ORCPT with an address type. smtp-proto checks the
//! values of RET and NOTIFY and decodes the xtext; this module looks at
//! the raw command line before it does.

use crate::reply::Reply;

/// Checks the DSN parameters of a MAIL or RCPT command line (CRLF
/// included or not). Other commands pass.
pub(crate) fn check(line: &[u8]) -> Result<(), Reply> {
    let verb = line.get(..4).unwrap_or_default();
    let names: &[&str] = if verb.eq_ignore_ascii_case(b"MAIL") {
        &["RET", "ENVID"]
    } else if verb.eq_ignore_ascii_case(b"RCPT") {
        &["NOTIFY", "ORCPT"]
    } else {
        return Ok(());
    };
    let Some(params) = parameters(line) else {
        // No well-formed path: the parser gives the syntax error.
        return Ok(());
    };
    let mut seen = [false; 2];
    for param in params.split(|b| b.is_ascii_whitespace()) {
        if param.is_empty() {
            continue;
        }
        let (key, value) = match param.iter().position(|&b| b == b'=') {
            Some(at) => (&param[..at], Some(&param[at + 1..])),
            None => (param, None),
        };
        let Some(index) = names
            .iter()
            .position(|n| n.as_bytes().eq_ignore_ascii_case(key))
        else {
            continue;
        };
        let name = names[index];
        if std::mem::replace(&mut seen[index], true) {
            return Err(Reply::owned(
                501,
                [5, 5, 4],
                format!("Duplicate parameter {name}"),
            ));
        }
        let value = value.unwrap_or_default();
        let valid = match name {
            "ENVID" => is_xtext(value) && !value.is_empty(),
            "ORCPT" => match value.iter().position(|&b| b == b';') {
                Some(at) => {
                    let (addr_type, addr) = (&value[..at], &value[at + 1..]);
                    !addr_type.is_empty()
                        && addr_type
                            .iter()
                            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
                        && !addr.is_empty()
                        && is_xtext(addr)
                }
                None => false,
            },
            // NEVER alone, or a list of the others (RFC 3461 §4.1).
            "NOTIFY" => {
                let items: Vec<&[u8]> = value.split(|&b| b == b',').collect();
                let known = |item: &&[u8]| {
                    ["SUCCESS", "FAILURE", "DELAY"]
                        .iter()
                        .any(|k| k.as_bytes().eq_ignore_ascii_case(item))
                };
                matches!(items.as_slice(), [only] if only.eq_ignore_ascii_case(b"NEVER"))
                    || items.iter().all(known)
            }
            // RET's value is checked by the parser.
            _ => true,
        };
        if !valid {
            return Err(Reply::owned(
                501,
                [5, 5, 4],
                format!("Invalid parameter {name}"),
            ));
        }
    }
    Ok(())
}

/// The parameters after the path `<...>` of `MAIL FROM:` / `RCPT TO:`.
fn parameters(line: &[u8]) -> Option<&[u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    let rest = &line[colon + 1..];
    let open = rest.iter().position(|&b| b != b' ')?;
    if rest[open] != b'<' {
        return None;
    }
    let (mut quoted, mut escaped) = (false, false);
    for (i, &b) in rest.iter().enumerate().skip(open + 1) {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'>' if !quoted => return Some(&rest[i + 1..]),
            _ => {}
        }
    }
    None
}

/// RFC 3461 §4: `xtext = *( xchar / hexchar )`; xchar is `!`..`~` except
/// `+` and `=`; hexchar is `+` and two upper-case hex digits.
fn is_xtext(text: &[u8]) -> bool {
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'+' => {
                let hex =
                    |b: Option<&u8>| b.is_some_and(|b| matches!(*b, b'0'..=b'9' | b'A'..=b'F'));
                if !(hex(text.get(i + 1)) && hex(text.get(i + 2))) {
                    return false;
                }
                i += 3;
            }
            b'=' => return false,
            b'!'..=b'~' => i += 1,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(line: &str) -> Option<String> {
        check(line.as_bytes()).err().map(|r| r.to_string())
    }

    #[test]
    fn well_formed_parameters_pass() {
        for line in [
            "MAIL FROM:<a@x> RET=HDRS ENVID=QQ314159\r\n",
            "MAIL FROM:<> ENVID=hi+20there+2B\r\n",
            "mail from:<\"q>uoted\"@x> envid=a>b SIZE=10\r\n",
            "RCPT TO:<b@y> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+40y\r\n",
            "RCPT TO:<b@y> notify=never\r\n",
            "RCPT TO:<b@y> ORCPT=utf-8;b@y\r\n",
            "NOOP ENVID=1 ENVID=2\r\n",
            "RCPT TO:b@y ORCPT=x\r\n",
        ] {
            assert_eq!(code(line), None, "{line}");
        }
    }

    #[test]
    fn malformed_or_repeated_parameters_get_501_5_5_4() {
        for (line, reply) in [
            (
                "MAIL FROM:<a@x> RET=HDRS RET=FULL",
                "501 5.5.4 Duplicate parameter RET",
            ),
            (
                "MAIL FROM:<a@x> ENVID=a ENVID=b",
                "501 5.5.4 Duplicate parameter ENVID",
            ),
            (
                "MAIL FROM:<a@x> ENVID=",
                "501 5.5.4 Invalid parameter ENVID",
            ),
            (
                "MAIL FROM:<a@x> ENVID=a=b",
                "501 5.5.4 Invalid parameter ENVID",
            ),
            (
                "MAIL FROM:<a@x> ENVID=a+2",
                "501 5.5.4 Invalid parameter ENVID",
            ),
            (
                "MAIL FROM:<a@x> ENVID=a+2f",
                "501 5.5.4 Invalid parameter ENVID",
            ),
            (
                "MAIL FROM:<a@x> ENVID=caf\u{e9}",
                "501 5.5.4 Invalid parameter ENVID",
            ),
            (
                "RCPT TO:<b@y> NOTIFY=SUCCESS NOTIFY=DELAY",
                "501 5.5.4 Duplicate parameter NOTIFY",
            ),
            (
                "RCPT TO:<b@y> NOTIFY=NEVER,SUCCESS",
                "501 5.5.4 Invalid parameter NOTIFY",
            ),
            (
                "RCPT TO:<b@y> NOTIFY=SUCCESS,,DELAY",
                "501 5.5.4 Invalid parameter NOTIFY",
            ),
            (
                "RCPT TO:<b@y> ORCPT=b@y",
                "501 5.5.4 Invalid parameter ORCPT",
            ),
            (
                "RCPT TO:<b@y> ORCPT=;b@y",
                "501 5.5.4 Invalid parameter ORCPT",
            ),
            (
                "RCPT TO:<b@y> ORCPT=rfc822;",
                "501 5.5.4 Invalid parameter ORCPT",
            ),
            (
                "RCPT TO:<b@y> ORCPT=rfc822;a+zz",
                "501 5.5.4 Invalid parameter ORCPT",
            ),
            (
                "RCPT TO:<b@y> ORCPT=rfc822;a ORCPT=rfc822;b",
                "501 5.5.4 Duplicate parameter ORCPT",
            ),
        ] {
            assert_eq!(code(line).as_deref(), Some(reply), "{line}");
        }
    }
}
