//! The `ext_authz` gRPC authorizer: `envoy.service.auth.v3.Authorization/Check` over
//! HTTP/2 (prior knowledge, as Envoy's gRPC client speaks it), answering every request
//! with an OK `CheckResponse` that sets `authorization: Bearer participant`.
//!
//! The answer never changes, so it is encoded once, by hand (no protobuf toolchain
//! here): the few fields below follow `envoy/service/auth/v3/external_auth.proto`,
//! `envoy/config/core/v3/base.proto` and `google/rpc/status.proto`. The request is
//! read to its end and not decoded (the authorizer does nothing with it).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The path of the one method.
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// Protobuf: a length-delimited field (wire type 2) `tag` holding `bytes`.
fn field(tag: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![(tag << 3) | 2];
    let mut len = bytes.len();
    // Varint length.
    loop {
        let b = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    out.extend_from_slice(bytes);
    out
}

/// `CheckResponse { status: {code: OK}, ok_response: { headers: [ {header: {key, value},
/// append_action: OVERWRITE_IF_EXISTS_OR_ADD} ] } }`, as a gRPC message (5-byte prefix).
pub fn check_response(key: &str, value: &str) -> Vec<u8> {
    // HeaderValue { key = 1; value = 2 }
    let header_value = [field(1, key.as_bytes()), field(2, value.as_bytes())].concat();
    // HeaderValueOption { header = 1; append_action = 3 (varint) }: 2 = overwrite or add
    // (an incoming `authorization` is replaced, as with the HTTP authorizer).
    let option = [field(1, &header_value), vec![3 << 3, 2]].concat();
    // OkHttpResponse { headers = 2 }
    let ok = field(2, &option);
    // CheckResponse { status = 1 (google.rpc.Status, code 0 = OK: empty); ok_response = 3 }
    let msg = [field(1, &[]), field(3, &ok)].concat();
    let mut framed = vec![0u8]; // not compressed
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    framed
}

/// A gRPC answer body: the message, then the `grpc-status` trailers.
struct Unary {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for Unary {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

fn status_trailers(code: &'static str) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static(code));
    t
}

async fn handle(req: Request<hyper::body::Incoming>, ok: Bytes) -> Result<Response<Unary>> {
    let known = req.uri().path() == CHECK_PATH;
    // Read the request to its end (the stream is then closed cleanly on both sides).
    req.into_body().collect().await?;
    let (data, code) = if known {
        (Some(ok), "0")
    } else {
        (None, "12") // UNIMPLEMENTED
    };
    let mut resp = Response::new(Unary {
        data,
        trailers: Some(status_trailers(code)),
    });
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    Ok(resp)
}

/// Serves the authorizer on `addr` (HTTP/2 only) in the background.
pub async fn serve(addr: SocketAddr) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind {addr}"))?;
    let ok = Bytes::from(check_response("authorization", "Bearer participant"));
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("gRPC authorizer on {addr}: accept: {e}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let ok = ok.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| handle(req, ok.clone()));
                if let Err(e) = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    eprintln!("gRPC authorizer connection: {e}");
                }
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_response_is_a_framed_ok_with_one_overwriting_header() {
        let f = check_response("authorization", "Bearer participant");
        assert_eq!(f[0], 0, "not compressed");
        let len = u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize;
        assert_eq!(len, f.len() - 5);
        let msg = &f[5..];
        // status (field 1, empty = code OK), then ok_response (field 3).
        assert_eq!(&msg[..2], &[0x0a, 0x00]);
        assert_eq!(msg[2], 0x1a);
        let text = String::from_utf8_lossy(msg);
        assert!(text.contains("authorization") && text.contains("Bearer participant"));
        // append_action = OVERWRITE_IF_EXISTS_OR_ADD closes the HeaderValueOption.
        assert_eq!(&msg[msg.len() - 2..], &[0x18, 0x02]);
    }
}
