//! Container log files and their rotation.
//!
//! The runc shim appends a container's stdout and stderr to `<state_dir>/<id>/container.log`
//! (containerd's `file://` stdio). containerd 1.6's shim opens that file
//! `O_WRONLY | O_APPEND` (`pkg/process/io.go`, `copyPipes`) and keeps it open for the life of
//! the task, so the file cannot be renamed away (the shim would keep writing to the renamed
//! file); it is rotated by **copy then truncate**: the current file is copied to
//! `container.log.1` (older copies shift to `.2`, `.3`, ...; the oldest beyond the kept count
//! is deleted), then truncated to zero. Because every write of the shim is an append, writes
//! after the truncation land at the new end (offset 0 onwards), never past a hole. Bytes the
//! shim appends between the end of the copy and the truncation would be lost; the copy
//! catches up with the file until it stops growing before truncating, so the window is the
//! time between two syscalls. logrotate's `copytruncate` has the same trade-off; a shim log
//! driver (`binary://`) would avoid it but would make the container's output depend on a
//! process of ours staying alive.
//!
//! Readers ([`log_files`]) read the rotated files oldest first, then the current one; a
//! follower that finds the current file shorter than what it read continues in
//! `container.log.1` from the same offset (that is what was copied) and then in the new
//! current file from 0.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Default size at which a container log is rotated.
pub const DEFAULT_MAX_SIZE: u64 = 10 << 20;
/// Default number of log files kept per container, the current one included.
pub const DEFAULT_MAX_FILES: u32 = 3;
/// Most rotated files a reader looks for.
const MAX_ROTATED: u32 = 1000;

/// How container logs are rotated (per node: the agent's `--log-max-size`,
/// `--log-max-files`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRotation {
    /// Rotate when the current file reaches this many bytes.
    pub max_size: u64,
    /// Files kept per container, the current one included (at least 1: then rotation just
    /// empties the file).
    pub max_files: u32,
}

impl Default for LogRotation {
    fn default() -> Self {
        LogRotation {
            max_size: DEFAULT_MAX_SIZE,
            max_files: DEFAULT_MAX_FILES,
        }
    }
}

/// The `n`th rotated file of `path` (`container.log.1` is the newest).
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// The files holding a container's log, oldest first, the current one last (listed even if
/// it does not exist yet).
pub fn log_files(path: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for n in 1..=MAX_ROTATED {
        let p = rotated(path, n);
        if !p.exists() {
            break;
        }
        files.push(p);
    }
    files.reverse();
    files.push(path.to_path_buf());
    files
}

/// Rotates `path` if it has reached `policy.max_size`. Returns whether it did.
pub fn rotate_if_needed(path: &Path, policy: LogRotation) -> std::io::Result<bool> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len < policy.max_size.max(1) {
        return Ok(false);
    }
    let keep = policy.max_files.max(1) - 1;
    // Shift the rotated files: .k-1 -> .k, dropping what falls beyond `keep`.
    for n in (keep.max(1)..=MAX_ROTATED).rev() {
        let p = rotated(path, n);
        if p.exists() && n >= keep {
            std::fs::remove_file(&p)?;
        }
    }
    for n in (1..keep).rev() {
        let from = rotated(path, n);
        if from.exists() {
            std::fs::rename(&from, rotated(path, n + 1))?;
        }
    }
    let mut current = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    if keep > 0 {
        let tmp = rotated(path, 0);
        let mut copy = std::fs::File::create(&tmp)?;
        // Copy until the file stops growing, then truncate at once.
        for _ in 0..4 {
            if std::io::copy(&mut current, &mut copy)? == 0 {
                break;
            }
        }
        current.set_len(0)?;
        std::fs::rename(&tmp, rotated(path, 1))?;
    } else {
        current.set_len(0)?;
    }
    Ok(true)
}

/// Rotates every `<dir>/<id>/container.log` under `state_dir` that needs it.
pub fn rotate_all(state_dir: &Path, file_name: &str, policy: LogRotation) {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path().join(file_name);
        match rotate_if_needed(&path, policy) {
            Ok(true) => tracing::debug!(log = %path.display(), "rotated"),
            Ok(false) => {}
            Err(e) => tracing::warn!(log = %path.display(), error = %e, "could not rotate"),
        }
    }
}

/// Where the last `n` lines of the concatenation of `files` start: an index into `files`
/// and an offset in that file ((0, 0) when there are fewer lines). A final line without a
/// newline counts as a line; `n == 0` is the end.
pub fn tail_position(files: &[PathBuf], n: u64) -> std::io::Result<(usize, u64)> {
    let lens: Vec<u64> = files
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .collect();
    if files.is_empty() {
        return Ok((0, 0));
    }
    if n == 0 {
        let last = files.len() - 1;
        return Ok((last, lens[last]));
    }
    const BLOCK: u64 = 64 * 1024;
    let mut buf = vec![0u8; BLOCK as usize];
    let mut newlines = 0u64;
    let mut first_byte = true;
    for i in (0..files.len()).rev() {
        if lens[i] == 0 {
            continue;
        }
        let mut file = match std::fs::File::open(&files[i]) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut end = lens[i];
        while end > 0 {
            let start = end.saturating_sub(BLOCK);
            let size = (end - start) as usize;
            file.seek(SeekFrom::Start(start))?;
            if file.read_exact(&mut buf[..size]).is_err() {
                // Shrank meanwhile (rotated): start from the top of this file.
                return Ok((i, 0));
            }
            for j in (0..size).rev() {
                if buf[j] == b'\n' {
                    // The newline ending the stream does not start a line.
                    if first_byte {
                        first_byte = false;
                        continue;
                    }
                    newlines += 1;
                    if newlines == n {
                        let at = start + j as u64 + 1;
                        // The end of a file is the start of the next.
                        return Ok(if at == lens[i] && i + 1 < files.len() {
                            (i + 1, 0)
                        } else {
                            (i, at)
                        });
                    }
                }
                first_byte = false;
            }
            end = start;
        }
    }
    Ok((0, 0))
}

/// The offset of the start of the last `n` lines of the file at `path` (0 if it has fewer,
/// or does not exist). A final line without a newline counts as a line.
pub async fn tail_offset(path: &Path, n: u64) -> std::io::Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let len = file.metadata().await?.len();
    if n == 0 {
        return Ok(len);
    }
    const BLOCK: u64 = 64 * 1024;
    let mut end = len;
    let mut newlines = 0u64;
    let mut buf = vec![0u8; BLOCK as usize];
    let mut first_byte = true;
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let size = (end - start) as usize;
        file.seek(SeekFrom::Start(start)).await?;
        file.read_exact(&mut buf[..size]).await?;
        for i in (0..size).rev() {
            if buf[i] == b'\n' {
                // The newline ending the file does not start a line.
                if first_byte {
                    first_byte = false;
                    continue;
                }
                newlines += 1;
                if newlines == n {
                    return Ok(start + i as u64 + 1);
                }
            }
            first_byte = false;
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tail_offsets_count_lines_from_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        assert_eq!(tail_offset(&p, 3).await.unwrap(), 0);
        tokio::fs::write(&p, "a\nbb\nccc\n").await.unwrap();
        assert_eq!(tail_offset(&p, 1).await.unwrap(), 5);
        assert_eq!(tail_offset(&p, 2).await.unwrap(), 2);
        assert_eq!(tail_offset(&p, 3).await.unwrap(), 0);
        assert_eq!(tail_offset(&p, 10).await.unwrap(), 0);
        assert_eq!(tail_offset(&p, 0).await.unwrap(), 9);
        tokio::fs::write(&p, "a\nbb\npartial").await.unwrap();
        assert_eq!(tail_offset(&p, 1).await.unwrap(), 5);
        let big: String = (0..100_000).map(|i| format!("line {i}\n")).collect();
        tokio::fs::write(&p, &big).await.unwrap();
        let off = tail_offset(&p, 2).await.unwrap() as usize;
        assert_eq!(&big[off..], "line 99998\nline 99999\n");
    }

    use std::io::Write;

    fn read_all(path: &Path) -> String {
        log_files(path)
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }

    #[test]
    fn rotation_keeps_the_newest_files_and_readers_read_across_them() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("container.log");
        let policy = LogRotation {
            max_size: 10,
            max_files: 3,
        };
        assert!(!rotate_if_needed(&log, policy).unwrap());
        let mut all = String::new();
        for i in 0..6 {
            let chunk = format!("line {i:04}\n");
            all.push_str(&chunk);
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap();
            f.write_all(chunk.as_bytes()).unwrap();
            assert!(rotate_if_needed(&log, policy).unwrap());
        }
        std::fs::write(&log, "line 0006\n").unwrap();
        // Current + 2 rotated: the last three chunks.
        assert_eq!(
            log_files(&log),
            vec![rotated(&log, 2), rotated(&log, 1), log.clone()]
        );
        assert!(!rotated(&log, 3).exists());
        assert_eq!(read_all(&log), "line 0004\nline 0005\nline 0006\n");
        let files = log_files(&log);
        assert_eq!(tail_position(&files, 1).unwrap(), (2, 0));
        assert_eq!(tail_position(&files, 2).unwrap(), (1, 0));
        assert_eq!(tail_position(&files, 3).unwrap(), (0, 0));
        assert_eq!(tail_position(&files, 30).unwrap(), (0, 0));
        assert_eq!(tail_position(&files, 0).unwrap(), (2, 10));
    }

    #[test]
    fn one_file_means_rotation_empties_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("container.log");
        std::fs::write(&log, "0123456789abc").unwrap();
        let policy = LogRotation {
            max_size: 10,
            max_files: 1,
        };
        assert!(rotate_if_needed(&log, policy).unwrap());
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        assert_eq!(log_files(&log), vec![log.clone()]);
    }

    #[test]
    fn tails_span_files_and_partial_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("container.log");
        // A copy-truncate rotation may cut a line in two.
        std::fs::write(rotated(&log, 1), "a\nbb\ncc").unwrap();
        std::fs::write(&log, "c\nd\n").unwrap();
        let files = log_files(&log);
        assert_eq!(tail_position(&files, 1).unwrap(), (1, 2));
        // "ccc" starts in the rotated file.
        assert_eq!(tail_position(&files, 2).unwrap(), (0, 5));
        assert_eq!(tail_position(&files, 3).unwrap(), (0, 2));
        assert_eq!(tail_position(&files, 4).unwrap(), (0, 0));
    }
}
