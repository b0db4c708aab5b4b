//! The only module that calls the proxy-wasm host API. It uses the `hostcalls`
//! functions that return `Result` (never the trait helpers that `unwrap`), reads
//! header values as bytes (`get_map_value` panics on non-UTF-8), and maps every host
//! error to "absent" / "failed".

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};

use crate::api::{
    CallResponse, Counter, Gauge, HeaderMap, Host, Level, SharedError, Verdict, EXCHANGE_LATENCY_MS,
};
use crate::config::Config;
use crate::exchange::MAX_EXCHANGE_BODY;
use crate::feed::MAX_FEED_BYTES;
use crate::worker::Worker;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> {
        Box::new(Root { id, worker: None, metrics: None })
    });
}}

/// Metric ids, defined once per root context.
#[derive(Clone)]
struct Metrics {
    counters: Vec<u32>,
    gauges: Vec<u32>,
    latency: Option<u32>,
}

impl Metrics {
    fn define() -> Metrics {
        Metrics {
            counters: Counter::ALL
                .iter()
                .map(|c| {
                    hostcalls::define_metric(MetricType::Counter, c.name()).unwrap_or(u32::MAX)
                })
                .collect(),
            gauges: Gauge::ALL
                .iter()
                .map(|g| hostcalls::define_metric(MetricType::Gauge, g.name()).unwrap_or(u32::MAX))
                .collect(),
            latency: hostcalls::define_metric(MetricType::Histogram, EXCHANGE_LATENCY_MS).ok(),
        }
    }
}

/// The real host: stateless wrapper over `hostcalls` (+ metric ids).
struct Envoy<'a> {
    metrics: &'a Metrics,
}

impl Host for Envoy<'_> {
    fn now_ms(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn log(&self, level: Level, msg: &str) {
        let l = match level {
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        let _ = hostcalls::log(l, msg);
    }

    fn header(&self, name: &str) -> Option<String> {
        self.header_bytes(name)
            .and_then(|b| String::from_utf8(b).ok())
    }

    fn header_bytes(&self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
            .ok()
            .flatten()
    }

    fn headers(&self) -> HeaderMap {
        raw::request_header_map()
            .and_then(HeaderMap::parse)
            .unwrap_or_default()
    }

    fn set_header(&mut self, name: &str, value: &str) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
    }

    fn remove_header(&mut self, name: &str) {
        let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }

    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(v), cas)) if !v.is_empty() => Some((v, cas.unwrap_or(0))),
            _ => None,
        }
    }

    fn shared_set(
        &mut self,
        key: &str,
        value: Option<&[u8]>,
        cas: Option<u32>,
    ) -> Result<(), SharedError> {
        match hostcalls::set_shared_data(key, value, cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SharedError::CasMismatch),
            Err(_) => Err(SharedError::Failed),
        }
    }

    fn dispatch(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u32, String> {
        let body = if body.is_empty() { None } else { Some(body) };
        hostcalls::dispatch_http_call(
            cluster,
            headers.to_vec(),
            body,
            Vec::new(),
            Duration::from_millis(timeout_ms),
        )
        .map_err(|s| format!("{s:?} (is cluster {cluster:?} defined?)"))
    }

    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        if hostcalls::send_http_response(status, headers.to_vec(), Some(body)).is_err() {
            let _ = hostcalls::reset_http_request();
        }
    }

    fn set_effective_context(&mut self, context_id: u32) -> bool {
        hostcalls::set_effective_context(context_id).is_ok()
    }

    fn resume(&mut self) {
        let _ = hostcalls::resume_http_request();
    }

    fn register_queue(&mut self, name: &str) -> bool {
        hostcalls::register_shared_queue(name).is_ok()
    }

    fn enqueue(&mut self, name: &str, msg: &[u8]) -> bool {
        // An empty vm_id resolves in this plugin's own VM.
        match hostcalls::resolve_shared_queue("", name) {
            Ok(Some(id)) => hostcalls::enqueue_shared_queue(id, Some(msg)).is_ok(),
            _ => false,
        }
    }

    fn count(&mut self, c: Counter, n: u64) {
        if let Some(&id) = self.metrics.counters.get(c as usize) {
            if id != u32::MAX {
                let _ = hostcalls::increment_metric(id, n as i64);
            }
        }
    }

    fn record_latency_ms(&mut self, ms: u64) {
        if let Some(id) = self.metrics.latency {
            let _ = hostcalls::record_metric(id, ms);
        }
    }

    fn gauge(&mut self, g: Gauge, value: u64) {
        if let Some(&id) = self.metrics.gauges.get(g as usize) {
            if id != u32::MAX {
                let _ = hostcalls::record_metric(id, value);
            }
        }
    }
}

/// The one place the filter calls the host ABI itself rather than through the SDK: the
/// SDK's `get_map_bytes` copies every header into a `String` and a `Vec` (about half of
/// a cache hit's wasm instructions), and it panics on an unexpected status. This takes
/// the host's buffer as it is, for [`HeaderMap::parse`] to read in place.
#[allow(unsafe_code)]
mod raw {
    use proxy_wasm::types::MapType;

    #[link(wasm_import_module = "env")]
    extern "C" {
        // The proxy-wasm ABI's signature, as the SDK declares it (`MapType` and the
        // status are `u32` in wasm).
        fn proxy_get_header_map_pairs(
            map_type: MapType,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
    }

    /// The request header map in the proxy-wasm layout; `None` when the host fails.
    pub(super) fn request_header_map() -> Option<Vec<u8>> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: the host writes a pointer and a length into the two locals, nothing
        // else; 0 is `Status::Ok` in the ABI.
        let status = unsafe {
            proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size)
        };
        if status != 0 || data.is_null() {
            return None;
        }
        // SAFETY: the host allocated the buffer through this module's exported
        // `proxy_on_memory_allocate` (the SDK's: a boxed slice of exactly `size` bytes,
        // all initialised by the host) and hands ownership over, exactly as the SDK's
        // own `get_map_bytes` takes it.
        Some(unsafe { Vec::from_raw_parts(data, size, size) })
    }
}

fn call_response(body_size: usize) -> CallResponse {
    let header = |n: &str| {
        hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, n)
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
    };
    CallResponse {
        status: header(":status").and_then(|s| s.parse().ok()),
        retry_after: header("retry-after"),
        body: hostcalls::get_buffer(
            BufferType::HttpCallResponseBody,
            0,
            // One byte past the largest answer read, so an oversize one is refused as
            // such (never parsed truncated).
            body_size.min(MAX_EXCHANGE_BODY.max(MAX_FEED_BYTES) + 1),
        )
        .ok()
        .flatten()
        .unwrap_or_default(),
    }
}

struct Root {
    id: u32,
    worker: Option<Rc<RefCell<Worker>>>,
    metrics: Option<Rc<Metrics>>,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _n: usize, body_size: usize, _t: usize) {
        let (Some(w), Some(m)) = (&self.worker, &self.metrics) else {
            return;
        };
        let resp = call_response(body_size);
        if let Ok(mut w) = w.try_borrow_mut() {
            w.on_call_response(&mut Envoy { metrics: m }, token, resp);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(b)) => b,
            _ => Vec::new(),
        };
        let config = match Config::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                let _ = hostcalls::log(LogLevel::Error, &format!("meshpass: {e}"));
                return false;
            }
        };
        if self.metrics.is_none() {
            self.metrics = Some(Rc::new(Metrics::define()));
        }
        let tick = config.tick_ms;
        let noop = config.noop;
        for w in config.warnings() {
            let _ = hostcalls::log(LogLevel::Warn, &w);
        }
        let mut worker = Worker::new(config);
        if let Some(m) = &self.metrics {
            worker.start(&mut Envoy { metrics: m });
        }
        self.worker = Some(Rc::new(RefCell::new(worker)));
        if !noop {
            let _ = hostcalls::set_tick_period(Duration::from_millis(tick));
        }
        let _ = self.id;
        true
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        let (Some(w), Some(m)) = (&self.worker, &self.metrics) else {
            return;
        };
        let Ok(mut w) = w.try_borrow_mut() else {
            return;
        };
        // Bounded: a flood cannot hold the worker; the rest waits for the next call.
        for _ in 0..1024 {
            match hostcalls::dequeue_shared_queue(queue_id) {
                Ok(Some(msg)) => w.on_notify(&mut Envoy { metrics: m }, &msg),
                _ => break,
            }
        }
    }

    fn on_tick(&mut self) {
        let (Some(w), Some(m)) = (&self.worker, &self.metrics) else {
            return;
        };
        if let Ok(mut w) = w.try_borrow_mut() {
            w.on_tick(&mut Envoy { metrics: m });
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            id: context_id,
            worker: self.worker.clone(),
            metrics: self.metrics.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    id: u32,
    worker: Option<Rc<RefCell<Worker>>>,
    metrics: Option<Rc<Metrics>>,
}

impl Context for Stream {
    fn on_http_call_response(&mut self, token: u32, _n: usize, body_size: usize, _t: usize) {
        let (Some(w), Some(m)) = (&self.worker, &self.metrics) else {
            return;
        };
        let resp = call_response(body_size);
        if let Ok(mut w) = w.try_borrow_mut() {
            w.on_call_response(&mut Envoy { metrics: m }, token, resp);
        }
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let (Some(w), Some(m)) = (&self.worker, &self.metrics) else {
            // Not configured: fail closed.
            let _ =
                hostcalls::send_http_response(503, vec![], Some(b"meshpass filter not configured"));
            return Action::Pause;
        };
        let Ok(mut w) = w.try_borrow_mut() else {
            return Action::Pause;
        };
        match w.on_request(&mut Envoy { metrics: m }, self.id) {
            Verdict::Continue => Action::Continue,
            Verdict::Pause => Action::Pause,
        }
    }
}
