//! The "ABI floor" `make bench` puts beside the empty filter and the meshpass cache hit:
//! the host calls a correct cache hit cannot avoid, with no logic around them. Per
//! request it reads the request headers and replaces `authorization` with a fixed
//! 600-byte value (about a participant token's length). It does not look at what it
//! read. Its cost over the empty filter is what reading and writing headers through the
//! proxy-wasm ABI costs in this Envoy and V8, so the meshpass hit's cost over *it* is the
//! meshpass module's own work.
//!
//! Plugin configuration (a string): `map` (the default) reads the whole request header
//! map, as the meshpass filter must to strip every client-sent `x-meshpass-*` header;
//! `one` reads only `authorization`.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(FloorRoot { whole_map: true, value: bearer() })
    });
}}

/// "Bearer " and 593 filler bytes: 600 bytes, a minted participant token's order of size.
fn bearer() -> Rc<str> {
    let mut v = String::from("Bearer ");
    v.extend(std::iter::repeat_n('x', 593));
    v.into()
}

struct FloorRoot {
    whole_map: bool,
    /// Shared with every HTTP context: a per-request copy would be work the floor must not have.
    value: Rc<str>,
}

impl Context for FloorRoot {}

impl RootContext for FloorRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let cfg = self.get_plugin_configuration().unwrap_or_default();
        self.whole_map = match &cfg[..] {
            b"" | b"map" => true,
            b"one" => false,
            _ => {
                proxy_wasm::hostcalls::log(
                    LogLevel::Error,
                    "floor filter: configuration must be \"map\" or \"one\"",
                )
                .ok();
                return false;
            }
        };
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(FloorHttp {
            whole_map: self.whole_map,
            value: Rc::clone(&self.value),
        }))
    }
}

struct FloorHttp {
    whole_map: bool,
    value: Rc<str>,
}

impl Context for FloorHttp {}

impl HttpContext for FloorHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.whole_map {
            drop(raw::request_header_map());
        } else {
            drop(self.get_http_request_header_bytes("authorization"));
        }
        // Replace, not add: exactly one `authorization` reaches the upstream.
        proxy_wasm::hostcalls::set_map_value(
            MapType::HttpRequestHeaders,
            "authorization",
            Some(&self.value),
        )
        .ok();
        Action::Continue
    }
}

/// The header map as the host serialises it, taken as is (as the meshpass filter takes
/// it: the SDK's own copy would add per-header allocations the floor must not have).
/// Written again rather than shared with `filter/src/host.rs` on purpose: a baseline is
/// an independent program and must not depend on the code it is measured against.
#[allow(unsafe_code)]
mod raw {
    use proxy_wasm::types::MapType;

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_header_map_pairs(
            map_type: MapType,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
    }

    pub(super) fn request_header_map() -> Option<Vec<u8>> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: the host writes a pointer and a length into the two locals; 0 is
        // `Status::Ok` in the ABI.
        let status = unsafe {
            proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size)
        };
        if status != 0 || data.is_null() {
            return None;
        }
        // SAFETY: the host allocated `size` initialised bytes through this module's
        // exported `proxy_on_memory_allocate` (the SDK's) and hands ownership over.
        Some(unsafe { Vec::from_raw_parts(data, size, size) })
    }
}
