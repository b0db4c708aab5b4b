//! Request-path normal form. Rules and bypass routes match on it: `//admin`,
//! `/healthz/../admin` or `/%61dmin` must not steer a request past them. Pure.

use std::borrow::Cow;

/// The path without its query, in normal form: `\` read as `/`, percent-escapes of
/// unreserved characters, `/`, `\` and `.` decoded, `.` and `..` segments removed
/// (RFC 3986, a final one leaving its slash), then repeated slashes merged. Borrowed when the path is normal already (the usual case,
/// found by one scan).
pub fn normalise(path: &str) -> Cow<'_, str> {
    let p = path.split_once('?').map_or(path, |(p, _)| p);
    let suspicious =
        p.bytes().any(|b| b == b'%' || b == b'\\') || p.contains("//") || p.contains("/.");
    if !suspicious || !p.starts_with('/') {
        return Cow::Borrowed(p);
    }
    let decoded = decode(p);
    // RFC 3986 §5.2.4 over the segments after the leading `/` (an empty one is a
    // segment too, so `..` removes it as Envoy's `normalize_path` does), then repeated
    // slashes merged (Envoy's `merge_slashes`).
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/').skip(1) {
        // `..;x` is `..` with a parameter: Tomcat and Spring read it as `..`.
        match seg.split(';').next().unwrap_or(seg) {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut n = String::with_capacity(decoded.len());
    for s in out.iter().filter(|s| !s.is_empty()) {
        n.push('/');
        n.push_str(s);
    }
    // A final empty, `.` or `..` segment names a directory: the slash stays.
    let last = decoded
        .rsplit('/')
        .next()
        .map(|s| s.split(';').next().unwrap_or(s));
    if n.is_empty() || matches!(last, Some("" | "." | "..")) {
        n.push('/');
    }
    if n == p {
        Cow::Borrowed(p)
    } else {
        Cow::Owned(n)
    }
}

/// Whether `path` holds what Envoy forwards as it is while the normal form reads it
/// otherwise, so that where the filter matches on the normal form an app may still see
/// another path: an escaped `/` or `\` (`%2F`, `%5C`, any case; Envoy keeps them by
/// default, `path_with_escaped_slashes_action`), or a dot segment with parameters
/// (`..;x`, no dot segment to Envoy, `..` to Tomcat and Spring).
pub fn kept_by_envoy(path: &str) -> bool {
    let dot_with_params = |p: &str| {
        p.split('/').any(|seg| {
            seg.split_once(';')
                .is_some_and(|(base, _)| base == "." || base == "..")
        })
    };
    // Also written escaped or with `\` (`%2e%2e;`, `..;` after a backslash): Envoy
    // decodes `%2e` and keeps the parameters, Tomcat reads `..`.
    has_escaped_slash(path) || dot_with_params(path) || dot_with_params(&decode(path))
}

/// `path` with every segment's `;` parameters removed (`/admin;jsessionid=1/users` →
/// `/admin/users`): the path Tomcat and Spring serve, and so the one rules and bypass
/// routes are matched against (Envoy forwards the parameters). A segment of parameters
/// alone leaves an empty one, which both then merge (`/;x/admin` is `/admin`); `path`
/// is in normal form, so it had no empty segment of its own.
pub fn without_params(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut merge = false;
    for (i, seg) in path.split('/').enumerate() {
        let base = seg.split_once(';').map_or(seg, |(base, _)| base);
        if i > 0 && !merge {
            out.push('/');
        }
        out.push_str(base);
        merge = i > 0 && base.is_empty() && base.len() < seg.len();
    }
    out
}

fn has_escaped_slash(path: &str) -> bool {
    path.as_bytes().windows(3).any(|w| {
        w.first() == Some(&b'%')
            && matches!(
                (w.get(1), w.get(2).map(u8::to_ascii_uppercase)),
                (Some(b'2'), Some(b'F')) | (Some(b'5'), Some(b'C'))
            )
    })
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
    use super::{normalise, without_params};

    #[test]
    fn parameters_are_removed_as_tomcat_and_spring_remove_them() {
        for (p, n) in [
            ("/admin;jsessionid=1/users", "/admin/users"),
            ("/admin;x=1/", "/admin/"),
            ("/;x/admin/users", "/admin/users"),
            ("/a/;x/;y/b", "/a/b"),
            ("/admin/;x", "/admin/"),
            ("/;x", "/"),
            ("/plain/path", "/plain/path"),
        ] {
            assert_eq!(without_params(p), n, "{p}");
        }
    }

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
            ("/public/..;/admin", "/admin"),
            ("/public/.;x=1/y", "/public/y"),
            ("/a/b/..;x", "/a/"),
        ] {
            assert_eq!(normalise(p).as_ref(), n, "{p}");
        }
    }

    #[test]
    fn dot_segments_resolve_as_rfc_3986_and_envoy_do_before_slashes_merge() {
        for (p, n) in [
            // A final `.` or `..` leaves its directory: the slash stays.
            ("/admin/x/..", "/admin/"),
            ("/admin/.", "/admin/"),
            ("/admin/%2e", "/admin/"),
            // `..` removes the empty segment before it, as in Envoy (resolved, then
            // slashes merged), not the named one.
            ("/admin//../public", "/admin/public"),
            ("/a//b", "/a/b"),
            ("/a/b//", "/a/b/"),
        ] {
            assert_eq!(normalise(p).as_ref(), n, "{p}");
        }
    }

    #[test]
    fn escaped_slashes_are_found_in_either_case() {
        for p in [
            "/a%2Fb", "/a%2fb", "/a%5Cb", "/a%5cb", "/a/..;/b", "/a/.;x/b", "/..;",
        ] {
            assert!(super::kept_by_envoy(p), "{p}");
        }
        for p in ["/a/b", "/a%20b", "/a%2", "/a%25Fb", "/a;x/b", "/a/...;/b"] {
            assert!(!super::kept_by_envoy(p), "{p}");
        }
    }
}
