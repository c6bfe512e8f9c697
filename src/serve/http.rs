//! The HTTP/1.0 and HTTP/1.1 server: hyper turns connections into requests,
//! this module turns those into the contract's [`HttpRequest`] and runs the
//! same [`Service`] the Lambda function runs.
//!
//! Limits on what a client controls: headers (16 KiB, read within 10 s by
//! default), the TLS handshake (10 s), and the body, refused by its
//! `Content-Length` before any of it is read, and cut off at the limit when it
//! comes chunked. Requests hyper cannot parse are answered with the contract's
//! JSON errors too ([`super::parse_errors`]).

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
use crate::contract::query::decode_query;
use crate::contract::{ApiError, ClientCertificate, ErrorCode, HttpRequest, Refused, RequestPath};
use crate::publish::Publisher;
use crate::service::Service;

/// Most bytes of request line and headers (hyper's read buffer).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Time a client has to send its request line and headers, unless `serve --header-read-timeout` says otherwise.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
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
    let response = match read_request(request, peer, certificate, service.max_payload_bytes().await).await {
        Ok(request) => service.handle(request).await,
        // Refused before the service (a body over the limit, a query that does not
        // decode): the same log line, metrics and CORS headers as every other answer.
        Err(refused) => service.refuse(refused.0, &refused.1).await,
    };
    response.map(Full::new)
}

/// Reads the body within `max_body` bytes and builds the contract's request;
/// refused, the request's headers come back with the error, for its answer.
async fn read_request(
    request: Request<Incoming>,
    peer: SocketAddr,
    certificate: Option<ClientCertificate>,
    max_body: usize,
) -> Result<HttpRequest, Refused> {
    let (parts, body) = request.into_parts();
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_body as u64) {
        return Err(Box::new((ApiError::PayloadTooLarge { max: max_body }, parts.headers)));
    }
    let body = match Limited::new(body, max_body).collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            return Err(Box::new((ApiError::PayloadTooLarge { max: max_body }, parts.headers)))
        }
        Err(_) => {
            let error = ApiError::bad_request(ErrorCode::InvalidBody, "the request body could not be read");
            return Err(Box::new((error, parts.headers)));
        }
    };
    let query = match decode_query(parts.uri.query().unwrap_or("")) {
        Ok(query) => query,
        Err(error) => return Err(Box::new((error, parts.headers))),
    };
    Ok(HttpRequest {
        method: parts.method,
        path: RequestPath::Encoded(parts.uri.path().to_owned()),
        query,
        headers: parts.headers,
        body,
        source_ip: Some(peer.ip()),
        client_certificate: certificate,
    })
}
