//! HTTP routes, thin: extract, call the pure protocol code, map errors to status codes.
//! `webhook` (GET handshake, POST pushes), `ops` (/healthz, /readyz, /metrics), `admin` (/admin/*), `windows`
//! (`GET /admin/windows/{openid}`), `pay` (/pay/notify/*), `accounts` (which account an
//! admin or console request is about: `?account=NAME`).

use actix_web::{HttpRequest, web};
use futures::StreamExt;

pub mod accounts;
pub mod admin;
pub mod conversations;
pub mod ops;
pub mod pay;
pub mod webhook;
pub mod windows;

/// Why [`read_capped`] gave up on a body.
#[derive(Debug)]
pub enum BodyError {
    /// Longer than the cap: declared by `Content-Length`, or counted while reading. `len` is
    /// what was declared or read so far, in bytes.
    TooLarge { len: usize },
    /// The connection failed while the body was read.
    Read(String),
}

/// Reads a request body of at most `max` bytes. A declared `Content-Length` over `max` is
/// refused before anything is read; a chunked body, which declares none, is counted while it
/// is read, so no body over `max` is ever buffered.
pub async fn read_capped(
    req: &HttpRequest,
    mut payload: web::Payload,
    max: usize,
) -> Result<web::Bytes, BodyError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(len) = declared.filter(|n| *n > max) {
        return Err(BodyError::TooLarge { len });
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(1024).min(max));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge { len: body.len() + chunk.len() });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
