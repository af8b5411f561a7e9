//! A small HTML scanner for the spam rules: the visible text, the text a
//! reader cannot see (hidden by CSS, zero-size or white-on-white fonts),
//! and every link with its visible text. One linear pass, no DOM: mail
//! HTML is often broken, and a cost bound matters more than fidelity.

/// A link: where it goes and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The `href` as written (entities decoded).
    pub href: String,
    /// Its visible text, whitespace collapsed.
    pub text: String,
}

/// What the scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scanned {
    /// Visible text, whitespace collapsed, blocks separated by spaces.
    pub text: String,
    /// Characters (not whitespace) of text a reader cannot see.
    pub hidden_chars: usize,
    /// Links in order.
    pub links: Vec<Link>,
    /// `src` of images.
    pub images: usize,
}

/// Most bytes of HTML looked at.
const MAX_HTML: usize = 512 * 1024;

struct Open {
    name: String,
    hidden: bool,
}

/// Scans `html`.
pub fn scan(html: &str) -> Scanned {
    let html = truncate(html, MAX_HTML);
    let bytes = html.as_bytes();
    let mut out = Scanned::default();
    let mut stack: Vec<Open> = Vec::new();
    let mut hidden_depth = 0usize;
    let mut link: Option<Link> = None;
    let mut i = 0;
    let mut text_start = 0;
    while i < bytes.len() {
        if bytes[i] != b'<' {
            i += 1;
            continue;
        }
        // Text before the tag.
        emit_text(
            &html[text_start..i],
            hidden_depth > 0,
            &mut out,
            link.as_mut(),
        );
        if html[i..].starts_with("<!--") {
            i = find(html, i + 4, "-->").map_or(bytes.len(), |e| e + 3);
            text_start = i;
            continue;
        }
        let Some(end) = tag_end(bytes, i + 1) else {
            // A lone '<': text.
            text_start = i;
            i += 1;
            continue;
        };
        let tag = &html[i + 1..end];
        i = end + 1;
        text_start = i;
        let (closing, name, attrs) = split_tag(tag);
        if name.is_empty() {
            continue;
        }
        if closing {
            if name == "a"
                && let Some(done) = link.take()
            {
                out.links.push(done);
            }
            if let Some(pos) = stack.iter().rposition(|o| o.name == name) {
                for o in stack.drain(pos..) {
                    if o.hidden {
                        hidden_depth -= 1;
                    }
                }
            }
            continue;
        }
        if name == "script" || name == "style" || name == "title" || name == "head" {
            if name == "head" {
                // Keep scanning inside <head> only for <style>/<title>.
                continue;
            }
            let close = format!("</{name}");
            i = find_ci(html, i, &close).map_or(bytes.len(), |e| {
                tag_end(bytes, e + 1).map_or(bytes.len(), |t| t + 1)
            });
            text_start = i;
            continue;
        }
        match name.as_str() {
            "br" | "p" | "div" | "tr" | "td" | "li" | "table" | "h1" | "h2" | "h3" => {
                push_space(&mut out.text);
                if let Some(l) = link.as_mut() {
                    push_space(&mut l.text);
                }
            }
            "img" => out.images += 1,
            _ => {}
        }
        if name == "a" {
            if let Some(done) = link.take() {
                out.links.push(done);
            }
            if let Some(href) = attr(attrs, "href") {
                link = Some(Link {
                    href: decode_entities(&href).trim().to_owned(),
                    text: String::new(),
                });
            }
        }
        let void = matches!(
            name.as_str(),
            "br" | "img" | "hr" | "meta" | "input" | "link" | "col" | "area" | "base" | "wbr"
        ) || tag.ends_with('/');
        if !void {
            let hidden = is_hidden(attrs);
            if hidden {
                hidden_depth += 1;
            }
            if stack.len() < 256 {
                stack.push(Open { name, hidden });
            } else if hidden {
                hidden_depth -= 1;
            }
        }
    }
    emit_text(
        &html[text_start.min(bytes.len())..],
        hidden_depth > 0,
        &mut out,
        link.as_mut(),
    );
    if let Some(done) = link.take() {
        out.links.push(done);
    }
    let trimmed = out.text.trim_end().len();
    out.text.truncate(trimmed);
    for l in &mut out.links {
        let t = l.text.trim().to_owned();
        l.text = t;
    }
    out
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn find(s: &str, from: usize, needle: &str) -> Option<usize> {
    s.get(from..)?.find(needle).map(|p| p + from)
}

/// Case-insensitive find of an ASCII needle.
fn find_ci(s: &str, from: usize, needle: &str) -> Option<usize> {
    let hay = s.as_bytes().get(from..)?;
    let n = needle.as_bytes();
    hay.windows(n.len())
        .position(|w| w.eq_ignore_ascii_case(n))
        .map(|p| p + from)
}

/// The index of the `>` ending a tag that starts at `from`, honouring
/// quoted attribute values.
fn tag_end(bytes: &[u8], from: usize) -> Option<usize> {
    let first = *bytes.get(from)?;
    if !(first.is_ascii_alphabetic() || first == b'/' || first == b'!' || first == b'?') {
        return None;
    }
    let mut quote = None;
    for (j, &b) in bytes.iter().enumerate().skip(from) {
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'"' || b == b'\'' => quote = Some(b),
            None if b == b'>' => return Some(j),
            None => {}
        }
    }
    None
}

/// (closing, lowercase name, attribute text).
fn split_tag(tag: &str) -> (bool, String, &str) {
    let (closing, rest) = match tag.strip_prefix('/') {
        Some(r) => (true, r),
        None => (false, tag),
    };
    let end = rest
        .find(|c: char| c.is_ascii_whitespace() || c == '/')
        .unwrap_or(rest.len());
    let name = rest[..end].to_ascii_lowercase();
    (closing, name, &rest[end..])
}

/// The value of attribute `name` in an attribute list.
fn attr(attrs: &str, name: &str) -> Option<String> {
    let bytes = attrs.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'/') {
            i += 1;
        }
        let start = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'=' {
            i += 1;
        }
        let key = &attrs[start..i];
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = "";
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < bytes.len() && (bytes[i] == b'"' || bytes[i] == b'\'') {
                let q = bytes[i];
                let vs = i + 1;
                i = vs;
                while i < bytes.len() && bytes[i] != q {
                    i += 1;
                }
                value = &attrs[vs..i];
                i += 1;
            } else {
                let vs = i;
                while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                    i += 1;
                }
                value = &attrs[vs..i];
            }
        }
        if key.eq_ignore_ascii_case(name) {
            return Some(value.to_owned());
        }
        if i == start {
            i += 1;
        }
    }
    None
}

/// Whether an element's attributes hide its content from a reader.
fn is_hidden(attrs: &str) -> bool {
    if attrs.is_empty() {
        return false;
    }
    if attr(attrs, "hidden").is_some() {
        return true;
    }
    if let Some(style) = attr(attrs, "style") {
        let style: String = style
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        for decl in style.split(';') {
            let Some((prop, value)) = decl.split_once(':') else {
                continue;
            };
            let value = value.trim_end_matches("!important");
            let hidden = match prop {
                "display" => value == "none",
                "visibility" => value == "hidden" || value == "collapse",
                "font-size" | "line-height" | "max-height" | "height" | "width" => {
                    prop != "line-height" && tiny_length(value)
                        || prop == "font-size" && tiny_length_font(value)
                }
                "opacity" => value.parse::<f32>().is_ok_and(|o| o < 0.1),
                "color" => is_white(value),
                _ => false,
            };
            if hidden {
                return true;
            }
        }
    }
    if let Some(color) = attr(attrs, "color")
        && is_white(&color.to_ascii_lowercase())
    {
        return true;
    }
    if let Some(size) = attr(attrs, "size") {
        // <font size="0">.
        return size.trim() == "0";
    }
    false
}

fn tiny_length(value: &str) -> bool {
    let digits: String = value
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    digits.parse::<f32>().is_ok_and(|v| v == 0.0)
}

fn tiny_length_font(value: &str) -> bool {
    let digits: String = value
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let unit = &value[digits.len()..];
    digits
        .parse::<f32>()
        .is_ok_and(|v| v < 2.0 && (unit == "px" || unit == "pt" || unit.is_empty()))
}

fn is_white(value: &str) -> bool {
    matches!(
        value,
        "#fff" | "#ffffff" | "white" | "rgb(255,255,255)" | "#fefefe" | "transparent"
    )
}

fn push_space(s: &mut String) {
    if !s.is_empty() && !s.ends_with(' ') {
        s.push(' ');
    }
}

fn emit_text(raw: &str, hidden: bool, out: &mut Scanned, link: Option<&mut Link>) {
    if raw.is_empty() {
        return;
    }
    let decoded = decode_entities(raw);
    if hidden {
        out.hidden_chars += decoded.chars().filter(|c| !c.is_whitespace()).count();
        return;
    }
    let mut link = link;
    for word in decoded.split_whitespace() {
        push_space(&mut out.text);
        out.text.push_str(word);
        if let Some(l) = link.as_deref_mut() {
            push_space(&mut l.text);
            l.text.push_str(word);
        }
    }
    if decoded.ends_with(char::is_whitespace) {
        push_space(&mut out.text);
    }
}

/// Decodes the common named entities and numeric references.
pub fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos..];
        let end = rest[1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '#'))
            .map(|e| e + 1)
            .unwrap_or(rest.len());
        let name = &rest[1..end];
        let decoded = match name {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some(' '),
            _ if name.starts_with("#x") || name.starts_with("#X") => {
                u32::from_str_radix(&name[2..], 16)
                    .ok()
                    .and_then(char::from_u32)
            }
            _ if name.starts_with('#') => name[1..].parse::<u32>().ok().and_then(char::from_u32),
            _ => None,
        };
        match decoded {
            Some(c) if end > 1 => {
                out.push(c);
                rest = &rest[end..];
                if rest.starts_with(';') {
                    rest = &rest[1..];
                }
            }
            _ => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_text_and_links() {
        let s = scan(
            "<html><head><title>T</title><style>p{color:red}</style></head>\
             <body><p>Hello &amp; welcome</p><a href=\"https://evil.example/x\">\
             https://bank.example</a><script>var x='<b>';</script>bye</body></html>",
        );
        assert_eq!(s.text, "Hello & welcome https://bank.example bye");
        assert_eq!(
            s.links,
            [Link {
                href: "https://evil.example/x".into(),
                text: "https://bank.example".into()
            }]
        );
        assert_eq!(s.hidden_chars, 0);
    }

    #[test]
    fn hidden_text_is_counted_not_shown() {
        for html in [
            "<div style=\"display: none\">cheap pills here</div>shown",
            "<span style='font-size:0px'>cheap pills here</span>shown",
            "<font color=\"#ffffff\">cheap pills here</font>shown",
            "<p style=\"visibility:hidden;\">cheap pills here</p>shown",
            "<div hidden>cheap pills here</div>shown",
        ] {
            let s = scan(html);
            assert_eq!(s.text, "shown", "{html}");
            assert_eq!(s.hidden_chars, 14, "{html}");
        }
    }

    #[test]
    fn broken_html_is_bounded_and_does_not_panic() {
        for html in [
            "<",
            "<a href='x",
            "<<<>>>",
            "<a href=x>t",
            "</div></div>x",
            "&#xZZ;&",
        ] {
            let _ = scan(html);
        }
        assert_eq!(decode_entities("a&#65;&#x42;&zz;&"), "aAB&zz;&");
    }
}
