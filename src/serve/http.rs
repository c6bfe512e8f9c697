//! The HTTP/1.0 and HTTP/1.1 server: hyper turns connections into requests,
//! this module turns those into the contract's [`HttpRequest`] and runs the
//! same [`Service`] the Lambda function runs.
//!
//! Limits on what a client controls: headers (16 KiB, read within 10 s by
//! default), the TLS handshake (10 s), and the body, read only once the
//! request is authorized, refused by its `Content-Length` before any of it is
//! read, and cut off at the limit when it comes chunked. Requests hyper cannot
//! parse are answered with the contract's JSON errors too ([`super::parse_errors`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::parse_errors::JsonParseErrors;
use crate::contract::body::BodyFuture;
use crate::contract::query::decode_query;
use crate::contract::{ApiError, Body, ClientCertificate, ErrorCode, HttpRequest, Refusal, RequestPath};
use crate::publish::Publisher;
use crate::service::Service;

/// Most bytes of request line and headers (hyper's read buffer).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Time a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time requests in flight get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts connections until `shutdown` completes, then stops accepting and
/// waits (up to 30 s) for requests in flight to finish. A connection that has
/// not sent a request's line and headers within `header_read_timeout` is closed.
pub async fn serve<P: Publisher>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    service: Arc<Service<P>>,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (service, tls, watcher) = (Arc::clone(&service), tls.clone(), graceful.watcher());
                tokio::spawn(async move {
                    match tls {
                        None => connection(stream, peer, None, service, header_read_timeout, watcher).await,
                        Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => {
                                let certificate = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|der| {
                                    ClientCertificate { common_name: super::tls::common_name(der) }
                                });
                                connection(stream, peer, certificate, service, header_read_timeout, watcher).await;
                            }
                            Ok(Err(error)) => debug!(%peer, %error, "TLS handshake failed"),
                            Err(_) => debug!(%peer, "TLS handshake timed out"),
                        },
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    info!(connections = graceful.count(), "shutting down: no new connections; finishing requests in flight");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        warn!("requests still in flight after {DRAIN_TIMEOUT:?}; stopping anyway");
    }
}

async fn connection<P, IO>(
    io: IO,
    peer: SocketAddr,
    certificate: Option<ClientCertificate>,
    service: Arc<Service<P>>,
    header_read_timeout: Duration,
    watcher: Watcher,
) where
    P: Publisher,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handler = service_fn(move |request: Request<Incoming>| {
        let (service, certificate) = (Arc::clone(&service), certificate.clone());
        async move { Ok::<_, Infallible>(answer(request, peer, certificate, &service).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(JsonParseErrors::new(io, MAX_HEADER_BYTES)), handler);
    if let Err(error) = watcher.watch(connection).await {
        debug!(%peer, %error, "connection ended with an error");
    }
}

async fn answer<P: Publisher>(
    request: Request<Incoming>,
    peer: SocketAddr,
    certificate: Option<ClientCertificate>,
    service: &Service<P>,
) -> Response<Full<Bytes>> {
    service.answer(received(request, peer, certificate), None).await.map(Full::new)
}

/// The contract's request, its body still unread; a query that does not
/// decode is refused, with the request's headers for the answer.
#[allow(
    clippy::result_large_err,
    reason = "the request is larger than its refusal: boxing the refusal would not shrink the result"
)]
fn received(
    request: Request<Incoming>,
    peer: SocketAddr,
    certificate: Option<ClientCertificate>,
) -> Result<HttpRequest<Unread>, Refusal> {
    let (parts, body) = request.into_parts();
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let query = match decode_query(parts.uri.query().unwrap_or("")) {
        Ok(query) => query,
        Err(error) => return Err(Refusal { error, headers: parts.headers }),
    };
    Ok(HttpRequest {
        method: parts.method,
        path: RequestPath::Encoded(parts.uri.path().to_owned()),
        query,
        headers: parts.headers,
        body: Unread { body, declared },
        source_ip: Some(peer.ip()),
        client_certificate: certificate,
    })
}

/// A body still on its connection, with the length its `Content-Length` declares.
pub struct Unread {
    body: Incoming,
    declared: Option<u64>,
}

impl Body for Unread {
    fn declared_len(&self) -> Option<u64> {
        self.declared
    }

    fn read(self: Box<Self>, limit: usize) -> BodyFuture {
        Box::pin(async move {
            match Limited::new(self.body, limit).collect().await {
                Ok(body) => Ok(body.to_bytes()),
                Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                    Err(ApiError::PayloadTooLarge { max: limit })
                }
                Err(_) => Err(ApiError::bad_request(ErrorCode::InvalidBody, "the request body could not be read")),
            }
        })
    }
}
