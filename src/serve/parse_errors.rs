//! JSON bodies for the answers hyper writes itself. A request hyper cannot
//! parse never reaches the service: hyper answers it (431 for a request line
//! and headers over the buffer or over 100 headers, 400 for malformed HTTP)
//! with a bare status line and no body, then closes the connection.
//!
//! Why this wraps the connection's bytes rather than using a hook: hyper 1 has
//! none. Its HTTP/1 dispatcher writes that answer itself before the connection
//! future returns its `Error` (hyperium/hyper#3844; the pull request adding
//! customizable error responses, hyperium/hyper#3911, is not merged), a tower
//! layer sees only requests that parsed, and the connection's error arrives after
//! the bytes are out. Reading request heads ourselves ahead of hyper would mean
//! parsing HTTP/1 framing (bodies, pipelining) a second time. So
//! [`JsonParseErrors`] wraps the connection and replaces those answers, on their
//! way out, with the contract's JSON errors; tests/serve/http_limits.rs sends
//! both kinds of unparsable request, so a hyper that answers differently fails
//! the suite.
//!
//! How one of hyper's own answers is told apart from the service's, exactly:
//! it is the last thing hyper writes on the connection; it is a head alone
//! whose status line is `HTTP/1.1` with the status and its canonical reason
//! (the `http` crate's, which hyper writes: `400 Bad Request`, `431 Request
//! Header Fields Too Large`); and it has no `Content-Type`, while every answer of
//! the service but a 200 (which has no such status) carries
//! `Content-Type: application/json`. No body of the service contains a raw CR LF
//! (JSON escapes control characters; a 200's body is empty), so a status line can
//! only start where a head starts.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::contract::{ApiError, ErrorCode};

/// The statuses hyper answers a request it cannot parse with, and what each becomes.
const HYPER_STATUSES: [(StatusCode, Bare); 2] =
    [(StatusCode::BAD_REQUEST, Bare::Malformed), (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, Bare::TooLarge)];

/// Whether `line` is the status line hyper writes for `status`: `HTTP/1.1`, the code, its canonical reason.
fn is_status_line(line: &[u8], status: StatusCode) -> bool {
    let reason = status.canonical_reason().unwrap_or("");
    line.strip_prefix(b"HTTP/1.1 ")
        .and_then(|rest| rest.strip_prefix(status.as_str().as_bytes()))
        .and_then(|rest| rest.strip_prefix(b" "))
        .is_some_and(|rest| rest == reason.as_bytes())
}

/// Which of hyper's answers was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bare {
    Malformed,
    TooLarge,
}

/// Where the replacement of hyper's answer stands.
enum Replacement {
    /// Nothing replaced yet: bytes pass through.
    None,
    /// Writing `bytes[written..]` in place of a head of `consumed` bytes hyper asked to write.
    Writing { bytes: Vec<u8>, written: usize, consumed: usize },
    /// Done: hyper closes the connection after its answer; anything more it writes is dropped.
    Done,
}

/// A connection whose bare parse-error answers from hyper go out as JSON errors.
pub struct JsonParseErrors<IO> {
    io: IO,
    /// The 431 body's limit, in bytes.
    max_header_bytes: usize,
    replacement: Replacement,
}

impl<IO> JsonParseErrors<IO> {
    /// Wraps `io`, served with hyper's header buffer of `max_header_bytes`.
    pub fn new(io: IO, max_header_bytes: usize) -> JsonParseErrors<IO> {
        JsonParseErrors { io, max_header_bytes, replacement: Replacement::None }
    }

    /// The contract's answer for `bare`, as HTTP/1.1 bytes that close the connection.
    fn json_answer(&self, bare: Bare) -> Vec<u8> {
        let error = match bare {
            Bare::Malformed => {
                ApiError::bad_request(ErrorCode::MalformedRequest, "the request is not valid HTTP/1.0 or HTTP/1.1")
            }
            Bare::TooLarge => ApiError::HeadersTooLarge { max: self.max_header_bytes },
        };
        crate::metrics::refused_by_connection(error.status().as_u16(), error.code().as_str());
        let response = error.into_response();
        let status = response.status();
        let mut bytes = format!("HTTP/1.1 {} {}\r\n", status.as_str(), status.canonical_reason().unwrap_or(""));
        for (name, value) in response.headers() {
            bytes.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap_or("")));
        }
        bytes.push_str(&format!("content-length: {}\r\nconnection: close\r\n\r\n", response.body().len()));
        let mut bytes = bytes.into_bytes();
        bytes.extend_from_slice(response.body());
        bytes
    }
}

/// Where hyper's own answer starts in `buf`, and which it is, if `buf` ends with one.
fn find_bare_answer(buf: &[u8]) -> Option<(usize, Bare)> {
    let start = buf.windows(10).rposition(|w| w == b"HTTP/1.1 4")?;
    let head = &buf[start..];
    let end_of_head = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    if end_of_head + 4 != head.len() {
        return None;
    }
    let mut lines = head[..end_of_head].split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next()?;
    let (_, bare) = HYPER_STATUSES.iter().find(|(status, _)| is_status_line(status_line, *status))?;
    let has_content_type = lines.any(|l| l.len() > 13 && l[..13].eq_ignore_ascii_case(b"content-type:"));
    (!has_content_type).then_some((start, *bare))
}

impl<IO: AsyncRead + Unpin> AsyncRead for JsonParseErrors<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> JsonParseErrors<IO> {
    /// Writes what is left of a replacement; `Ready` once all of it is out (or there is none).
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<usize>>> {
        while let Replacement::Writing { bytes, written, consumed } = &mut self.replacement {
            if *written == bytes.len() {
                let consumed = *consumed;
                self.replacement = Replacement::Done;
                return Poll::Ready(Ok(Some(consumed)));
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(None))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for JsonParseErrors<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match this.replacement {
            Replacement::Done => return Poll::Ready(Ok(buf.len())),
            Replacement::Writing { .. } => {
                return this.poll_replacement(cx).map_ok(|consumed| consumed.unwrap_or(buf.len()));
            }
            Replacement::None => {}
        }
        match find_bare_answer(buf) {
            None => Pin::new(&mut this.io).poll_write(cx, buf),
            // The answers before hyper's own go out first, unchanged.
            Some((start, _)) if start > 0 => Pin::new(&mut this.io).poll_write(cx, &buf[..start]),
            Some((_, bare)) => {
                let bytes = this.json_answer(bare);
                this.replacement = Replacement::Writing { bytes, written: 0, consumed: buf.len() };
                this.poll_replacement(cx).map_ok(|consumed| consumed.unwrap_or(buf.len()))
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    /// No: hyper then writes each answer as one buffer, which is what the search above reads.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "date: Mon, 01 Jan 2026 00:00:00 GMT\r\n";

    #[test]
    fn hyper_bare_answers_are_found_at_the_end_of_the_buffer() {
        let bare = format!("HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n{DATE}\r\n");
        assert_eq!(find_bare_answer(bare.as_bytes()), Some((0, Bare::TooLarge)));
        let bare = format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n{DATE}\r\n");
        assert_eq!(find_bare_answer(bare.as_bytes()), Some((0, Bare::Malformed)));
        let ours = "HTTP/1.1 200 OK\r\nx-message-id: A9FE1FEF7EE614DAD5DC8EA6C1A60000\r\ncontent-length: 0\r\n\r\n";
        let both = format!("{ours}{bare}");
        assert_eq!(find_bare_answer(both.as_bytes()), Some((ours.len(), Bare::Malformed)));
    }

    #[test]
    fn the_service_answers_are_left_alone() {
        let json = r#"{"error":"invalid_qos","message":"qos must be 0 or 1, not \"HTTP/1.1 400 Bad Request\""}"#;
        let ours = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{DATE}\r\n",
            json.len()
        );
        assert_eq!(find_bare_answer(format!("{ours}{json}").as_bytes()), None, "a head with a body after it");
        assert_eq!(find_bare_answer(ours.as_bytes()), None, "a HEAD's answer: a head alone, but JSON");
        let ok = format!("HTTP/1.1 200 OK\r\nx-message-id: A9FE1FEF7EE614DAD5DC8EA6C1A60000\r\n{DATE}\r\n");
        assert_eq!(find_bare_answer(format!("{ours}{json}{ok}").as_bytes()), None, "a status line quoted in JSON");
        let continue_100 = "HTTP/1.1 100 Continue\r\n\r\n";
        assert_eq!(find_bare_answer(continue_100.as_bytes()), None);
    }

    #[tokio::test]
    async fn a_bare_answer_is_written_as_the_json_error() {
        let (client, server) = tokio::io::duplex(4096);
        let mut wrapped = JsonParseErrors::new(server, 16384);
        let bare = format!("HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n{DATE}\r\n");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        wrapped.write_all(bare.as_bytes()).await.unwrap();
        wrapped.write_all(b"more").await.unwrap();
        wrapped.shutdown().await.unwrap();
        drop(wrapped);
        let mut out = String::new();
        let mut client = client;
        client.read_to_string(&mut out).await.unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{head}");
        assert!(head.contains("content-type: application/json\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}\r\n", body.len())), "{head}");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "headers_too_large");
    }
}
