//! The sender-authentication results the spam rules look at, read from
//! the `Authentication-Results` header this server wrote (crate::checks) —
//! never from headers that came with the message, which anyone can forge.

/// Results per method, lowercase (`pass`, `fail`, `softfail`, `none`,
/// `neutral`, `temperror`, `permerror`, ...). `None`: not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthResults {
    /// SPF of the MAIL FROM identity (of HELO for the null sender).
    pub spf: Option<String>,
    /// DKIM: `pass` if any signature passed, else the first result.
    pub dkim: Option<String>,
    /// DMARC.
    pub dmarc: Option<String>,
    /// ARC.
    pub arc: Option<String>,
    /// iprev.
    pub iprev: Option<String>,
}

impl AuthResults {
    /// No checks were run (submissions, or checks disabled).
    pub fn none() -> AuthResults {
        AuthResults::default()
    }

    /// Parses the header lines written by [`crate::checks`]: one
    /// `Authentication-Results` field (RFC 8601), possibly folded.
    pub fn parse(headers: &str) -> AuthResults {
        let mut out = AuthResults::default();
        let mut spf_helo = None;
        // Unfold, drop the field name and the authserv-id.
        let unfolded = headers.replace("\r\n", "").replace('\n', "");
        let value = match unfolded.split_once(':') {
            Some((name, v)) if name.trim().eq_ignore_ascii_case("authentication-results") => v,
            _ => unfolded.as_str(),
        };
        for resinfo in value.split(';').skip(1) {
            let resinfo = strip_comments(resinfo);
            let mut words = resinfo.split_whitespace();
            let Some((method, result)) = words.next().and_then(|w| w.split_once('=')) else {
                continue;
            };
            let method = method.to_ascii_lowercase();
            let result = result.to_ascii_lowercase();
            let rest: Vec<&str> = words.collect();
            match method.as_str() {
                "spf" => {
                    if rest.iter().any(|p| p.starts_with("smtp.mailfrom=")) {
                        out.spf = Some(result);
                    } else {
                        spf_helo = Some(result);
                    }
                }
                "dkim" if out.dkim.is_none() || result == "pass" => out.dkim = Some(result),
                "dmarc" => out.dmarc = Some(result),
                "arc" => out.arc = Some(result),
                "iprev" => out.iprev = Some(result),
                _ => {}
            }
        }
        if out.spf.is_none() {
            out.spf = spf_helo;
        }
        out
    }

    /// The result of a method by name (`spf`, `dkim`, `dmarc`, `arc`,
    /// `iprev`).
    pub fn get(&self, method: &str) -> Option<&str> {
        match method {
            "spf" => self.spf.as_deref(),
            "dkim" => self.dkim.as_deref(),
            "dmarc" => self.dmarc.as_deref(),
            "arc" => self.arc.as_deref(),
            "iprev" => self.iprev.as_deref(),
            _ => None,
        }
    }
}

/// Removes RFC 5322 comments `( ... )`, nested.
fn strip_comments(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut depth = 0usize;
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' if depth == 0 => {
                quoted = !quoted;
                out.push(c);
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_checks_header() {
        let header = "Authentication-Results: mx.test;\r\n\
\tdkim=fail (signature mismatch) header.d=a.example header.s=s1;\r\n\
\tdkim=pass header.d=b.example header.s=s2;\r\n\
\tspf=pass (mx.test: domain of x@a.example designates 1.2.3.4) smtp.helo=mail.a.example;\r\n\
\tspf=softfail smtp.mailfrom=x@a.example;\r\n\
\tdmarc=fail (p=REJECT) header.from=a.example;\r\n\
\tiprev=pass policy.iprev=1.2.3.4\r\n";
        let r = AuthResults::parse(header);
        assert_eq!(r.dkim.as_deref(), Some("pass"));
        assert_eq!(r.spf.as_deref(), Some("softfail"));
        assert_eq!(r.dmarc.as_deref(), Some("fail"));
        assert_eq!(r.iprev.as_deref(), Some("pass"));
        assert_eq!(r.arc, None);
        assert_eq!(AuthResults::parse(""), AuthResults::none());
    }

    #[test]
    fn helo_spf_is_the_fallback() {
        let r = AuthResults::parse("Authentication-Results: h; spf=fail smtp.helo=x");
        assert_eq!(r.spf.as_deref(), Some("fail"));
    }
}
