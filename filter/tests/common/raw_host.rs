//! A host whose request headers are raw bytes, as Envoy hands them over (a value need
//! not be UTF-8, which the [`Mock`]'s `String` headers cannot hold).

use meshpass_filter::api::{Counter, Gauge, HeaderMap, Host, Level, SharedError};

use super::Mock;

/// The mock, but the request header map is handed over as raw bytes (Envoy passes
/// header values as bytes; a `:path` need not be UTF-8).
pub struct RawHost {
    pub m: Mock,
    pub raw: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Host for RawHost {
    fn now_ms(&self) -> u64 {
        self.m.now_ms()
    }
    fn log(&self, level: Level, msg: &str) {
        self.m.log(level, msg)
    }
    fn header(&self, name: &str) -> Option<String> {
        self.raw
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .and_then(|(_, v)| String::from_utf8(v.clone()).ok())
    }
    fn header_bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.raw
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v.clone())
    }
    fn headers(&self) -> HeaderMap {
        HeaderMap::encode(self.raw.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
    }
    fn set_header(&mut self, name: &str, value: &str) {
        self.raw.retain(|(k, _)| k != name.as_bytes());
        self.raw.push((name.into(), value.into()));
    }
    fn remove_header(&mut self, name: &str) {
        self.raw.retain(|(k, _)| k != name.as_bytes());
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.m.property(path)
    }
    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.m.shared_get(key)
    }
    fn shared_set(
        &mut self,
        key: &str,
        value: Option<&[u8]>,
        cas: Option<u32>,
    ) -> Result<(), SharedError> {
        self.m.shared_set(key, value, cas)
    }
    fn dispatch(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u32, String> {
        self.m.dispatch(cluster, headers, body, timeout_ms)
    }
    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        self.m.send_response(status, headers, body)
    }
    fn set_effective_context(&mut self, context_id: u32) -> bool {
        self.m.set_effective_context(context_id)
    }
    fn resume(&mut self) {
        self.m.resume()
    }
    fn register_queue(&mut self, name: &str) -> bool {
        self.m.register_queue(name)
    }
    fn enqueue(&mut self, name: &str, msg: &[u8]) -> bool {
        self.m.enqueue(name, msg)
    }
    fn count(&mut self, c: Counter, n: u64) {
        self.m.count(c, n)
    }
    fn record_latency_ms(&mut self, ms: u64) {
        self.m.record_latency_ms(ms)
    }
    fn gauge(&mut self, g: Gauge, value: u64) {
        self.m.gauge(g, value)
    }
}
