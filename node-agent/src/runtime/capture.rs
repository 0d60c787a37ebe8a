//! Bounded capture of a command's output (exec, health checks): the first `limit` bytes are
//! kept, the rest is read and counted but not held, so a command that prints gigabytes
//! costs the agent one read buffer, not its output. A truncated capture ends with a marker
//! line saying how much there was and how much was kept (`[output truncated: 200000000
//! bytes, 1048576 kept]`; "more than N bytes" when reading stopped before the end).
//!
//! Invariant: [`Capture`] never holds more than `limit` bytes of output plus the marker.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};

/// What `exec` keeps of each of stdout and stderr by default
/// ([`shoal_api_types::exec::MAX_EXEC_OUTPUT_BYTES`]).
pub const EXEC_OUTPUT_LIMIT: usize = shoal_api_types::exec::MAX_EXEC_OUTPUT_BYTES;

/// What a health check keeps of each stream (for the status message).
pub const HEALTH_OUTPUT_LIMIT: usize = 4 * 1024;

/// The size of the one read buffer.
const CHUNK: usize = 64 * 1024;

/// What was kept of one stream, and how much there was.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capture {
    /// The first bytes, at most the limit.
    pub kept: Vec<u8>,
    /// Bytes read in all.
    pub total: u64,
    /// Whether the stream was read to its end (else `total` is a lower bound).
    pub complete: bool,
}

impl Capture {
    /// Whether bytes were dropped.
    pub fn truncated(&self) -> bool {
        self.total > self.kept.len() as u64
    }

    /// The kept bytes, followed by the marker line if any were dropped; and whether they
    /// were.
    pub fn into_output(self) -> (Vec<u8>, bool) {
        let truncated = self.truncated();
        let kept = self.kept.len() as u64;
        let mut out = self.kept;
        if truncated {
            if out.last().is_some_and(|b| *b != b'\n') {
                out.push(b'\n');
            }
            out.extend_from_slice(marker(self.total, kept, self.complete).as_bytes());
        }
        (out, truncated)
    }
}

/// The marker line of a stream of `total` bytes of which `kept` were kept.
pub fn marker(total: u64, kept: u64, complete: bool) -> String {
    if complete {
        format!("[output truncated: {total} bytes, {kept} kept]\n")
    } else {
        format!("[output truncated: more than {total} bytes, {kept} kept]\n")
    }
}

/// A capture in progress, readable while it runs (so a caller that stops waiting can still
/// say what was read).
#[derive(Debug, Clone, Default)]
pub struct Shared(Arc<Mutex<(Capture, u64)>>);

impl Shared {
    /// What has been captured so far (`complete` only if the stream ended).
    pub fn snapshot(&self) -> Capture {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut c = g.0.clone();
        c.total = g.1;
        c
    }
}

/// Reads `reader` to its end, keeping the first `limit` bytes; `shared` shows progress.
pub async fn capture_into<R: AsyncRead + Unpin>(mut reader: R, limit: usize, shared: Shared) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut g = shared.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = limit.saturating_sub(g.0.kept.len());
        let take = room.min(n);
        g.0.kept.extend_from_slice(&buf[..take]);
        g.1 += n as u64;
    }
    shared
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .0
        .complete = true;
}

/// Reads `reader` to its end, keeping the first `limit` bytes.
pub async fn capture<R: AsyncRead + Unpin>(reader: R, limit: usize) -> Capture {
    let shared = Shared::default();
    capture_into(reader, limit, shared.clone()).await;
    shared.snapshot()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn small_output_is_kept_whole() {
        let c = capture(&b"hello\n"[..], 1024).await;
        assert_eq!(
            (c.kept.as_slice(), c.total, c.complete),
            (&b"hello\n"[..], 6, true)
        );
        assert!(!c.truncated());
        assert_eq!(c.into_output(), (b"hello\n".to_vec(), false));
    }

    #[tokio::test]
    async fn big_output_is_cut_at_the_limit_and_counted_to_the_end() {
        // 20 MB through a pipe, as a command would write it.
        let (mut w, r) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let line = vec![b'y'; 1000];
            for _ in 0..20_000 {
                w.write_all(&line).await.unwrap();
            }
        });
        let c = capture(r, 1 << 20).await;
        writer.await.unwrap();
        assert_eq!(c.kept.len(), 1 << 20);
        assert!(c.kept.capacity() < 2 << 20, "held {}", c.kept.capacity());
        assert_eq!(c.total, 20_000_000);
        let (out, truncated) = c.into_output();
        assert!(truncated);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with("y\n[output truncated: 20000000 bytes, 1048576 kept]\n"),
            "{}",
            &text[text.len() - 80..]
        );
    }

    #[test]
    fn an_unfinished_stream_says_more_than() {
        let c = Capture {
            kept: b"ab".to_vec(),
            total: 10,
            complete: false,
        };
        assert_eq!(
            c.into_output().0,
            b"ab\n[output truncated: more than 10 bytes, 2 kept]\n".to_vec()
        );
    }
}
