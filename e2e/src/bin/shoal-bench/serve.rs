//! `__serve ADDR`: a small HTTP/1.1 server with keep-alive, run by figure 4 inside a task's
//! network namespace (`ip netns exec`), so the figure measures the data path (overlay, VIP,
//! routing mesh) rather than the fork per request of busybox httpd. One thread per
//! connection (wrk opens 8); every request gets the same small `200 OK`.
//!
//! Invariants: a connection stays open until the client closes it, asks to
//! (`Connection: close`, or HTTP/1.0 without `Connection: keep-alive`), or sends something
//! that is not an HTTP request (answered `400` and closed); pipelined requests are answered
//! in order; a request body given with `Content-Length` is read and ignored; a head larger
//! than [`MAX_HEAD`] is refused.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use anyhow::{Context, Result};

/// The body every request gets.
pub const BODY: &[u8] = b"shoal-bench\n";

/// The largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 16 * 1024;

/// What the start of a connection's buffer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole request yet: read more.
    Incomplete,
    /// A whole request of `len` bytes (head and body); answer it, then close unless
    /// `keep_alive`.
    Request {
        /// Bytes the request takes in the buffer.
        len: usize,
        /// Whether the connection stays open after the answer.
        keep_alive: bool,
    },
    /// Not an HTTP request, or a head over [`MAX_HEAD`].
    Bad,
}

/// Parses the request at the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Parsed {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Parsed::Bad
        } else {
            Parsed::Incomplete
        };
    };
    if end > MAX_HEAD {
        return Parsed::Bad;
    }
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return Parsed::Bad;
    };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(_target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parsed::Bad;
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Parsed::Bad;
    }
    let mut keep_alive = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Parsed::Bad,
    };
    let mut body = 0usize;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Parsed::Bad;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            match value.parse() {
                Ok(n) => body = n,
                Err(_) => return Parsed::Bad,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked bodies are not needed by any load generator here.
            return Parsed::Bad;
        }
    }
    let len = end + 4 + body;
    if buf.len() < len {
        return Parsed::Incomplete;
    }
    Parsed::Request { len, keep_alive }
}

/// The answer to a request.
pub fn response(keep_alive: bool) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n",
        BODY.len(),
        if keep_alive {
            ""
        } else {
            "Connection: close\r\n"
        }
    )
    .into_bytes();
    r.extend_from_slice(BODY);
    r
}

const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Serves one connection until it closes (see the module docs).
pub fn serve_connection(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let (ok_keep, ok_close) = (response(true), response(false));
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        // Answer every whole request in the buffer with one write (pipelining).
        let mut used = 0;
        let mut close = false;
        loop {
            match parse_request(&buf[used..]) {
                Parsed::Incomplete => break,
                Parsed::Request { len, keep_alive } => {
                    used += len;
                    out.extend_from_slice(if keep_alive { &ok_keep } else { &ok_close });
                    if !keep_alive {
                        close = true;
                        break;
                    }
                }
                Parsed::Bad => {
                    out.extend_from_slice(BAD_REQUEST);
                    close = true;
                    break;
                }
            }
        }
        buf.drain(..used);
        if !out.is_empty() {
            s.write_all(&out)?;
            out.clear();
        }
        if close {
            let _ = s.shutdown(std::net::Shutdown::Write);
            return Ok(());
        }
    }
}

/// Serves `addr` until killed.
pub fn serve(addr: &str) -> Result<()> {
    let l = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    println!("listening={}", l.local_addr()?);
    for s in l.incoming() {
        let Ok(s) = s else { continue };
        std::thread::spawn(move || {
            let _ = serve_connection(s);
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http11_should_keep_the_connection_open_unless_asked_to_close() {
        let r = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            parse_request(r),
            Parsed::Request {
                len: r.len(),
                keep_alive: true
            }
        );
        let r = b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n";
        assert_eq!(
            parse_request(r),
            Parsed::Request {
                len: r.len(),
                keep_alive: false
            }
        );
    }

    #[test]
    fn http10_should_close_unless_it_asks_for_keep_alive() {
        let r = b"GET / HTTP/1.0\r\n\r\n";
        assert_eq!(
            parse_request(r),
            Parsed::Request {
                len: r.len(),
                keep_alive: false
            }
        );
        let r = b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n";
        assert_eq!(
            parse_request(r),
            Parsed::Request {
                len: r.len(),
                keep_alive: true
            }
        );
    }

    #[test]
    fn a_partial_request_or_body_should_wait_for_more() {
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHo"), Parsed::Incomplete);
        let r = b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab";
        assert_eq!(parse_request(r), Parsed::Incomplete);
        let r = b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcdGET";
        assert_eq!(
            parse_request(r),
            Parsed::Request {
                len: r.len() - 3,
                keep_alive: true
            }
        );
    }

    #[test]
    fn garbage_and_huge_heads_should_be_refused() {
        assert_eq!(parse_request(b"hello\r\n\r\n"), Parsed::Bad);
        assert_eq!(parse_request(b"GET / SPDY/3\r\n\r\n"), Parsed::Bad);
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Parsed::Bad
        );
        assert_eq!(parse_request(&vec![b'a'; MAX_HEAD + 1]), Parsed::Bad);
    }

    #[test]
    fn the_server_should_answer_pipelined_requests_on_one_connection_then_close_on_request() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            serve_connection(s).unwrap();
        });
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        // Two at once, a third after the answers: all on one connection.
        c.write_all(b"GET / HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
            .unwrap();
        let one = response(true);
        let mut got = vec![0u8; one.len() * 2];
        c.read_exact(&mut got).unwrap();
        assert_eq!(got, [one.clone(), one.clone()].concat());
        c.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, response(false));
        server.join().unwrap();
    }
}
