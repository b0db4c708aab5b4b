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

/// The SPIFFE ID in the `URI=` of an XFCC value of exactly one element: the one the
/// trusted proxy added for the client it verified. Envoy writes `URI=` and `DNS=` values
/// unquoted, so a certificate SAN holding a `,` splits that element in two, the second
/// spelt by the certificate's holder: a value of two or more elements (a client's own
/// forwarded under `APPEND_FORWARD` too) names no caller, nor does one whose quotes do
/// not close.
pub fn uri(value: &str) -> Result<SpiffeId, XfccError> {
    if !balanced(value) || split_unquoted(value, b',').nth(1).is_some() {
        return Err(XfccError);
    }
    let mut uris = split_unquoted(value, b';').filter_map(|kv| {
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
    fn the_one_element_names_the_caller_with_quoted_separators_inside_it() {
        let v = format!(
            "By=spiffe://cluster.local/ns/x/sa/y;Hash=\"a,b;c\";Subject=\"CN=x\\\",O=y\";uri=\"{WEB}\""
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
    fn a_value_of_two_elements_names_no_caller_whatever_either_holds() {
        // What Envoy writes for a certificate whose DNS (or URI) SAN holds
        // `x,URI=<web>`: the holder spells the second element.
        let split = format!("By=spiffe://cluster.local/ns/svc/sa/x;Hash=ab;URI=spiffe://cluster.local/ns/evil/sa/y;DNS=x,URI={WEB}");
        let proxy = format!("By=spiffe://cluster.local/ns/svc/sa/x;Hash=ab;Subject=\"\";URI={WEB}");
        for v in [
            split,
            format!("URI=spiffe://cluster.local/ns/admin/sa/evil,{proxy}"),
            format!("{proxy},URI=spiffe://cluster.local/ns/admin/sa/evil"),
            format!("URI=spiffe://cluster.local/ns/admin/sa/evil;X=\",{proxy}"),
        ] {
            assert_eq!(uri(&v), Err(XfccError), "{v}");
        }
        // Quotes that never close name no caller either.
        assert_eq!(uri(&format!("Subject=\"x;URI={WEB}")), Err(XfccError));
        assert_eq!(uri(&proxy).map(|id| id.to_string()), Ok(WEB.to_string()));
    }

    #[test]
    fn separators_inside_quotes_and_escaped_quotes_do_not_split() {
        let parts: Vec<&str> = split_unquoted(r#"a="x,\",y",b,,c"#, b',').collect();
        assert_eq!(parts, [r#"a="x,\",y""#, "b", "", "c"]);
        assert_eq!(split_unquoted("a,", b',').collect::<Vec<_>>(), ["a", ""]);
    }
}
