//! Request-path normal form. Rules and bypass routes match on it: `//admin`,
//! `/healthz/../admin` or `/%61dmin` must not steer a request past them. Pure.

use std::borrow::Cow;

/// The path without its query, in normal form: `\` read as `/`, percent-escapes of
/// unreserved characters, `/`, `\` and `.` decoded, repeated slashes merged, `.` and
/// `..` segments removed. Borrowed when the path is normal already (the usual case,
/// found by one scan).
pub fn normalise(path: &str) -> Cow<'_, str> {
    let p = path.split_once('?').map_or(path, |(p, _)| p);
    let suspicious =
        p.bytes().any(|b| b == b'%' || b == b'\\') || p.contains("//") || p.contains("/.");
    if !suspicious || !p.starts_with('/') {
        return Cow::Borrowed(p);
    }
    let decoded = decode(p);
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut n = String::with_capacity(decoded.len());
    for s in &out {
        n.push('/');
        n.push_str(s);
    }
    if n.is_empty() || (decoded.ends_with('/') && !out.is_empty()) {
        n.push('/');
    }
    if n == p {
        Cow::Borrowed(p)
    } else {
        Cow::Owned(n)
    }
}

/// Decodes the escapes normalisation resolves (unreserved, `/`, `\`) and reads `\` as
/// `/`; other escapes stay as they are.
fn decode(p: &str) -> String {
    let b = p.as_bytes();
    let mut out = String::with_capacity(p.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let escaped = (c == b'%')
            .then(|| {
                let hi = (*b.get(i + 1)? as char).to_digit(16)?;
                let lo = (*b.get(i + 2)? as char).to_digit(16)?;
                u8::try_from(hi * 16 + lo).ok()
            })
            .flatten()
            .filter(|d| d.is_ascii_alphanumeric() || b"-._~/\\".contains(d));
        let (ch, step) = match escaped {
            Some(d) => (d, 3),
            None => (c, 1),
        };
        if ch == b'\\' {
            out.push('/');
        } else if step == 3 {
            out.push(char::from(ch));
        } else if let Some(s) = p.get(i..i + 1) {
            out.push_str(s);
        } else {
            // Inside a multi-byte character: copy the whole character.
            let rest = &p[i..];
            let len = rest.chars().next().map_or(1, char::len_utf8);
            out.push_str(&rest[..len]);
            i += len;
            continue;
        }
        i += step;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::normalise;

    #[test]
    fn normal_paths_are_borrowed_and_others_resolved() {
        for p in ["/", "/orders/1", "/.well-known/x", "/a/b/", "/a%20b"] {
            assert_eq!(normalise(p), p, "{p}");
        }
        assert_eq!(normalise("/orders?x=//..").as_ref(), "/orders");
        for (p, n) in [
            ("//admin", "/admin"),
            ("/healthz/../admin", "/admin"),
            ("/healthz/./x", "/healthz/x"),
            ("/%61dmin", "/admin"),
            ("/healthz%2F..%2Fadmin", "/admin"),
            ("/a\\..\\admin", "/admin"),
            ("/../..", "/"),
            ("/é/../x", "/x"),
        ] {
            assert_eq!(normalise(p).as_ref(), n, "{p}");
        }
    }
}
