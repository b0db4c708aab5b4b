//! Request-header access and hygiene. By default the header map is read once per
//! request: that one host call serves every lookup of the request path and shows every
//! client-sent `x-meshpass-*` name, so all of them can be removed (single-header reads
//! cannot see unknown names). `insecure_keep_x_meshpass_headers` goes back to one read
//! per name and removes only `x-meshpass-subject`.

use std::borrow::Cow;

use crate::api::Host;
use crate::config::Config;
use crate::header_map::HeaderMap;

/// The only header name the filter writes besides `authorization`.
pub const SUBJECT_HEADER: &str = "x-meshpass-subject";
pub use crate::header_map::RESERVED_PREFIX;

/// The current stream's request headers.
pub(crate) struct Headers(Option<HeaderMap>);

impl Headers {
    /// Reads the whole map (`whole`), else defers to one host read per lookup.
    pub(crate) fn read(host: &dyn Host, whole: bool) -> Headers {
        Headers(whole.then(|| host.headers()))
    }

    /// One header value (names are lower case, as Envoy hands them over).
    pub(crate) fn get<'a>(&'a self, host: &dyn Host, name: &str) -> Option<Cow<'a, str>> {
        match &self.0 {
            Some(map) => map
                .get(name)
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(Cow::Borrowed),
            None => host.header(name).map(Cow::Owned),
        }
    }

    /// One header value as bytes (no UTF-8 check: the hit path compares bytes).
    pub(crate) fn get_bytes<'a>(&'a self, host: &dyn Host, name: &str) -> Option<Cow<'a, [u8]>> {
        match &self.0 {
            Some(map) => map.get(name).map(Cow::Borrowed),
            None => host.header_bytes(name).map(Cow::Owned),
        }
    }

    /// Whether `name` is (or may be, for per-name reads) present.
    fn may_have(&self, name: &str) -> bool {
        match &self.0 {
            Some(map) => map.get(name).is_some(),
            None => true,
        }
    }

    /// Header hygiene: removes every client-sent `x-meshpass-*` (whole map), or just
    /// `x-meshpass-subject` with one removal (per-name mode, where the filter overwrites it
    /// anyway when it sets it).
    pub(crate) fn strip_reserved(&self, host: &mut dyn Host, cfg: &Config) {
        match &self.0 {
            Some(map) => {
                for k in map.reserved_names() {
                    host.remove_header(k);
                }
            }
            // Removed unread: a read cannot see a value that is not UTF-8, and a
            // removal costs one host call as the read did.
            None if !cfg.set_subject_header => host.remove_header(SUBJECT_HEADER),
            None => {}
        }
    }

    /// Bypass routes: nothing meshpass forwards carries a credential it did not mint.
    pub(crate) fn strip_credentials(&self, host: &mut dyn Host, cfg: &Config) {
        for name in credential_headers(cfg) {
            if self.may_have(name) {
                host.remove_header(name);
            }
        }
    }
}

/// The subject-token header, the actor-token header and `authorization`.
pub(crate) fn credential_headers(cfg: &Config) -> impl Iterator<Item = &str> {
    let custom = (!cfg.bearer).then_some(cfg.token_header.as_str());
    std::iter::once("authorization")
        .chain(custom)
        .chain(cfg.exchange.actor_token_header.as_deref())
}
