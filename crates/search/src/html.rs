//! HTML to text for indexing and previews (RFC 8621 section 4.4.1: markup,
//! `<head>`, CSS and scripts are not content; `alt` and `title` are).

/// Elements whose content is never shown as text.
const HIDDEN: [&str; 6] = ["head", "script", "style", "template", "noscript", "title"];

/// Elements that break the text flow (a newline in the output).
const BLOCKS: [&str; 30] = [
    "address",
    "article",
    "aside",
    "blockquote",
    "br",
    "dd",
    "div",
    "dl",
    "dt",
    "footer",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hr",
    "li",
    "ol",
    "p",
    "pre",
    "section",
    "table",
    "td",
    "th",
    "tr",
    "ul",
    "img",
];

/// Decodes an entity (`&amp;`, `&#233;`, `&#xE9;`) starting at `s[0] ==
/// '&'`; returns the text and the bytes consumed, or `None` when `s` does
/// not start with a known entity.
fn entity(s: &str) -> Option<(String, usize)> {
    let end = s.as_bytes().iter().take(34).position(|&b| b == b';')?;
    let token = &s[..=end];
    if token.len() < 3
        || !token[1..end]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'#')
    {
        return None;
    }
    let mut out = String::new();
    mail_parser::decoders::html::add_html_token(&mut out, token.as_bytes(), false);
    (out != token).then_some((out, end + 1))
}

/// Appends `text` with entities decoded.
fn push_decoded(out: &mut String, text: &str) {
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        match entity(&rest[i..]) {
            Some((decoded, len)) => {
                out.push_str(&decoded);
                rest = &rest[i + len..];
            }
            None => {
                out.push('&');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
}

/// Parses the inside of a tag (`<...>` without the brackets): the
/// lowercase name, whether it closes, and the values of `alt` and `title`.
fn parse_tag(inner: &str) -> (String, bool, Vec<&str>) {
    let inner = inner.trim_start();
    let (closing, inner) = match inner.strip_prefix('/') {
        Some(rest) => (true, rest.trim_start()),
        None => (false, inner),
    };
    let name_end = inner
        .find(|c: char| c.is_whitespace() || c == '/')
        .unwrap_or(inner.len());
    let name = inner[..name_end].to_ascii_lowercase();
    let mut shown = Vec::new();
    let mut rest = &inner[name_end..];
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '/');
        if rest.is_empty() {
            break;
        }
        let key_end = rest
            .find(|c: char| c.is_whitespace() || c == '=' || c == '/')
            .unwrap_or(rest.len());
        let key = &rest[..key_end];
        rest = rest[key_end..].trim_start();
        let mut value = "";
        if let Some(after) = rest.strip_prefix('=') {
            let after = after.trim_start();
            let (v, next) = match after.chars().next() {
                Some(q @ ('"' | '\'')) => match after[1..].find(q) {
                    Some(e) => (&after[1..1 + e], &after[e + 2..]),
                    None => (&after[1..], ""),
                },
                _ => {
                    let e = after.find(char::is_whitespace).unwrap_or(after.len());
                    (&after[..e], &after[e..])
                }
            };
            value = v;
            rest = next;
        }
        if key.eq_ignore_ascii_case("alt") || key.eq_ignore_ascii_case("title") {
            shown.push(value);
        }
        if key.is_empty() {
            // Defensive: skip one character so malformed input ends.
            let mut chars = rest.chars();
            chars.next();
            rest = chars.as_str();
        }
    }
    (name, closing, shown)
}

/// The text a reader sees in `html`: tags dropped (block elements end a
/// line), hidden elements and comments skipped, entities decoded, `alt`
/// and `title` attribute text kept.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let mut hidden: Option<String> = None;
    let mut rest = html;
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            if hidden.is_none() {
                push_decoded(&mut out, rest);
            }
            break;
        };
        if hidden.is_none() {
            push_decoded(&mut out, &rest[..lt]);
        }
        rest = &rest[lt..];
        // A tag starts with a letter, `/`, `!` or `?`; any other `<` is text.
        if !rest[1..].starts_with(|c: char| c.is_ascii_alphabetic() || matches!(c, '/' | '!' | '?'))
        {
            if hidden.is_none() {
                out.push('<');
            }
            rest = &rest[1..];
            continue;
        }
        if let Some(comment) = rest.strip_prefix("<!--") {
            rest = match comment.find("-->") {
                Some(e) => &comment[e + 3..],
                None => "",
            };
            continue;
        }
        let Some(gt) = rest.find('>') else {
            // A lone '<' is text.
            if hidden.is_none() {
                out.push('<');
            }
            rest = &rest[1..];
            continue;
        };
        let inner = &rest[1..gt];
        rest = &rest[gt + 1..];
        if inner.starts_with('!') || inner.starts_with('?') {
            continue;
        }
        let (name, closing, shown) = parse_tag(inner);
        if let Some(h) = &hidden {
            if closing && *h == name {
                hidden = None;
            }
            continue;
        }
        if !closing && HIDDEN.contains(&name.as_str()) && !inner.trim_end().ends_with('/') {
            hidden = Some(name);
            continue;
        }
        if BLOCKS.contains(&name.as_str()) {
            out.push('\n');
        }
        for v in shown {
            out.push(' ');
            push_decoded(&mut out, v);
            out.push(' ');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> String {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn keeps_content_drops_markup() {
        let html = "<html><head><title>T</title><style>p{color:red}</style></head>\
            <body><p>Hello <b>wor</b>ld &amp; caf&eacute; &#233;&#x41;</p><script>var x=1;</script>\
            <!-- hidden --><div>Next<br/>line</div><img src=\"a.png\" alt=\"A cat\" title='Tom'>\
            a &lt; b &bogus; 5 < 6</body></html>";
        assert_eq!(
            words(&html_to_text(html)),
            "Hello world & café éA Next line A cat Tom a < b &bogus; 5 < 6"
        );
        assert!(html_to_text("<p>x</p>").contains('\n'));
    }

    #[test]
    fn unterminated_input_ends() {
        assert_eq!(words(&html_to_text("a <b")), "a <b");
        assert_eq!(words(&html_to_text("<script>never closed")), "");
        assert_eq!(words(&html_to_text("x <!-- open")), "x");
        assert_eq!(words(&html_to_text("<img alt=\"unclosed>z")), "unclosed z");
    }
}
