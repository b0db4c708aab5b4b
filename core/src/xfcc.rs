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

/// The SPIFFE ID in the `URI=` of the last element of an XFCC value: the element the
/// nearest (trusted) proxy added for the client it verified. Earlier elements (added
/// before that proxy) are never read.
pub fn uri(value: &str) -> Result<SpiffeId, XfccError> {
    let last = split_unquoted(value, b',').last().ok_or(XfccError)?;
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
    fn separators_inside_quotes_and_escaped_quotes_do_not_split() {
        let parts: Vec<&str> = split_unquoted(r#"a="x,\",y",b,,c"#, b',').collect();
        assert_eq!(parts, [r#"a="x,\",y""#, "b", "", "c"]);
        assert_eq!(split_unquoted("a,", b',').collect::<Vec<_>>(), ["a", ""]);
    }
}
