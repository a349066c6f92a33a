//! The HTTP endpoint Prometheus scrapes: `GET /metrics`, nothing else. A handful of lines of
//! HTTP/1.1 are all a scrape takes; each connection is answered and closed.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::timeout,
};

use super::{Board, exposition};
use crate::target::memory::MemorySample;

/// A request's head larger than this is refused: a scrape's is a few hundred bytes.
const MAX_HEAD: usize = 8192;

/// A client that sends no whole request head within this is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The bound listening socket.
pub struct Endpoint {
    listener: TcpListener,
    pub address: SocketAddr,
}

impl Endpoint {
    /// Binds at once, before anything is traced: an address in use is an error at start.
    pub async fn bind(address: &str) -> Result<Endpoint> {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("listen for Prometheus on {address} (--metrics)"))?;
        let address = listener.local_addr()?;
        Ok(Endpoint { listener, address })
    }

    /// Answers scrapes until the runtime ends.
    pub async fn serve(self, board: Arc<Board>) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream, Arc::clone(&board)));
                }
                Err(error) => log::warn!("metrics endpoint: accept failed: {error}"),
            }
        }
    }
}

async fn answer(mut stream: TcpStream, board: Arc<Board>) {
    let response = match timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(head)) => respond(&head, &board),
        Ok(Err(error)) => {
            log::debug!("metrics endpoint: {error}");
            return;
        }
        Err(_) => return,
    };
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let read = stream.read(&mut buffer).await?;
        if read == 0 || head.len() + read > MAX_HEAD {
            break;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    Ok(head)
}

/// The whole response to a request whose head is `head`.
fn respond(head: &[u8], board: &Board) -> Vec<u8> {
    let line = String::from_utf8_lossy(head);
    let mut words = line.lines().next().unwrap_or_default().split_whitespace();
    let (method, path) = (words.next(), words.next());
    let path = path.map(|p| p.split('?').next().unwrap_or(p));
    let (status, content_type, body) = match (method, path) {
        (Some("GET"), Some("/metrics")) => {
            // VmRSS is in status: smaps, which the full sample reads, is not needed.
            let own_rss = std::fs::read_to_string("/proc/self/status")
                .ok()
                .map(|status| MemorySample::parse(&status, "", "", 0.0).vm_rss);
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                exposition::render(board, own_rss),
            )
        }
        (Some("GET"), Some("/")) => (
            "200 OK",
            "text/plain; charset=utf-8",
            "leaktrace serve: metrics at /metrics\n".to_owned(),
        ),
        (Some("GET"), _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_owned(),
        ),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(body.as_bytes());
    response
}
