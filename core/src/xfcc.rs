//! Envoy's `x-forwarded-client-cert` (XFCC) value: the SPIFFE ID a proxy forwards for
//! the client certificate it verified. Only the parse lives here (pure, so it is fuzzed
//! with the rest of core); whether the header is believed at all is the exchange
//! service's decision (its trusted proxies).

use crate::spiffe::SpiffeId;

/// Why an XFCC value names no caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("x-forwarded-client-cert does not name exactly one SPIFFE ID")]
pub struct XfccError;

/// The parts of `s` between the `sep`s outside double quotes (`\` escapes the next
/// character inside quotes). `sep` must be ASCII. No allocation: the service runs this
/// on every `/token` request.
pub fn split_unquoted(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let t = rest?;
        let (mut quoted, mut escaped) = (false, false);
        // Every byte looked at is ASCII, so each cut is on a character boundary.
        for (i, b) in t.bytes().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b if b == sep && !quoted => {
                    rest = t.get(i + 1..);
                    return t.get(..i);
                }
                _ => {}
            }
        }
        rest = None;
        Some(t)
    })
}

/// The last `,`-separated element of `value`, found from the end: where it starts is
/// decided by its own bytes only, so an earlier element (a client's, under Envoy's
/// `APPEND_FORWARD`) cannot move that start, e.g. with a quote it never closes. A `"`
/// after an odd number of `\` is escaped.
pub fn last_element(value: &str) -> &str {
    let b = value.as_bytes();
    let mut quoted = false;
    for (i, &c) in b.iter().enumerate().rev() {
        match c {
            b'"' => {
                let slashes = b
                    .get(..i)
                    .map_or(0, |h| h.iter().rev().take_while(|&&x| x == b'\\').count());
                if slashes % 2 == 0 {
                    quoted = !quoted;
                }
            }
            b',' if !quoted => return value.get(i + 1..).unwrap_or(""),
            _ => {}
        }
    }
    value
}

/// Whether every quote of `element` is closed (and no escape is left dangling).
fn balanced(element: &str) -> bool {
    let (mut quoted, mut escaped) = (false, false);
    for c in element.bytes() {
        match c {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            _ => {}
        }
    }
    !quoted && !escaped
}

/// The SPIFFE ID in the `URI=` of the last element of an XFCC value: the element the
/// nearest (trusted) proxy added for the client it verified. Earlier elements (added
/// before that proxy) are never read; a last element whose quotes do not close names
/// no caller.
pub fn uri(value: &str) -> Result<SpiffeId, XfccError> {
    let last = last_element(value);
    if !balanced(last) {
        return Err(XfccError);
    }
    let mut uris = split_unquoted(last, b';').filter_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        k.eq_ignore_ascii_case("uri")
            .then(|| v.trim().trim_matches('"'))
    });
    match (uris.next(), uris.next()) {
        (Some(uri), None) => SpiffeId::parse(uri).map_err(|_| XfccError),
        _ => Err(XfccError),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

    #[test]
    fn the_last_element_names_the_caller() {
        let v = format!(
            "By=spiffe://cluster.local/ns/x/sa/y;URI=spiffe://cluster.local/ns/a/sa/first,\
             Hash=\"a,b;c\";Subject=\"CN=x,O=y\";uri=\"{WEB}\""
        );
        assert_eq!(uri(&v).map(|id| id.to_string()), Ok(WEB.to_string()));
    }

    #[test]
    fn no_uri_two_uris_or_a_non_spiffe_uri_name_no_caller() {
        for bad in [
            String::new(),
            "Hash=ab".into(),
            format!("URI={WEB};URI=spiffe://cluster.local/ns/a/sa/b"),
            "URI=https://example.com/x".into(),
            format!("URI={WEB},"),
        ] {
            assert_eq!(uri(&bad), Err(XfccError), "{bad}");
        }
    }

    #[test]
    fn an_earlier_element_cannot_swallow_the_last_one_with_a_quote_it_never_closes() {
        let proxy = format!("By=spiffe://cluster.local/ns/svc/sa/x;Hash=ab;Subject=\"\";URI={WEB}");
        for earlier in [
            "URI=spiffe://cluster.local/ns/admin/sa/evil;X=\"",
            "URI=spiffe://cluster.local/ns/admin/sa/evil;X=\"\\",
            "X=\"a\\\",URI=spiffe://cluster.local/ns/admin/sa/evil",
            "URI=spiffe://cluster.local/ns/admin/sa/evil",
        ] {
            let v = format!("{earlier},{proxy}");
            assert_eq!(uri(&v).map(|id| id.to_string()), Ok(WEB.to_string()), "{v}");
        }
        // Quoted commas and escaped quotes in the last element itself still hold.
        let v = format!("URI=spiffe://cluster.local/ns/a/sa/b,Subject=\"CN=a\\\",b,c\";URI={WEB}");
        assert_eq!(uri(&v).map(|id| id.to_string()), Ok(WEB.to_string()), "{v}");
        // A last element whose own quote never closes names no caller.
        assert_eq!(uri(&format!("Subject=\"x;URI={WEB}")), Err(XfccError));
    }

    #[test]
    fn separators_inside_quotes_and_escaped_quotes_do_not_split() {
        let parts: Vec<&str> = split_unquoted(r#"a="x,\",y",b,,c"#, b',').collect();
        assert_eq!(parts, [r#"a="x,\",y""#, "b", "", "c"]);
        assert_eq!(split_unquoted("a,", b',').collect::<Vec<_>>(), ["a", ""]);
    }
}
