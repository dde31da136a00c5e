//! Runs ffmpeg and ffprobe as child processes with bounded output: stdout
//! kept up to a limit (and fed line by line), only the tail of stderr kept.
//! The children die with this process and their groups with their run
//! (`rt::process`).

use std::process::ExitStatus;

use tokio::io::{AsyncRead, AsyncReadExt as _};

use super::engine::{Failure, Reason, truncate};
use crate::rt::process::{self as child, Command};

/// Bytes of stderr kept (its end).
const STDERR_TAIL: usize = 8 << 10;
/// Longest stdout line passed on; longer ones are cut.
const MAX_LINE: usize = 4 << 10;
/// Longest stderr line quoted in a failure.
pub const MAX_QUOTED: usize = 512;

/// A process that ran to its end.
#[derive(Debug)]
pub struct Finished {
    /// How it exited.
    pub status: ExitStatus,
    /// Its stdout, up to the limit asked for.
    pub stdout: Vec<u8>,
    /// The last non-empty line of its stderr, at most [`MAX_QUOTED`] bytes.
    pub last_error: String,
}

impl Finished {
    /// `" (<last stderr line>)"`, or nothing when stderr was empty.
    #[must_use]
    pub fn quoted_error(&self) -> String {
        if self.last_error.is_empty() {
            String::new()
        } else {
            format!(": {}", self.last_error)
        }
    }
}

/// Runs `cmd` (called `what` in failures) to its end: stdin closed, each
/// stdout line to `on_line`, at most `keep_stdout` bytes of stdout kept (0:
/// none, and no limit). The child and its process group are killed if the
/// future is dropped, and the child dies with this process.
///
/// # Errors
/// "`what` not found: ..." when the program is missing; stdout over
/// `keep_stdout`; I/O failures.
pub async fn run(
    cmd: &Command,
    what: &str,
    keep_stdout: usize,
    mut on_line: impl FnMut(&str) + Send,
) -> Result<Finished, Failure> {
    let program = cmd.program();
    let mut child = child::spawn(cmd).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Failure::new(
                Reason::Failed,
                format!("{what} not found: {}: {e}", program.display()),
            )
        } else {
            Failure::new(
                Reason::Failed,
                format!("cannot start {what} ({}): {e}", program.display()),
            )
        }
    })?;
    let Some((stdout, stderr)) = child.pipes() else {
        return Err(Failure::new(
            Reason::Failed,
            format!("{what}: no pipes to the child"),
        ));
    };
    let read_out = async {
        let mut kept = Vec::new();
        let mut overflow = false;
        let mut line = Vec::new();
        let mut reader = stdout;
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            let chunk = &buf[..n];
            if kept.len() + n <= keep_stdout {
                kept.extend_from_slice(chunk);
            } else if keep_stdout > 0 {
                // Keep draining so the child is not blocked on a full pipe.
                overflow = true;
            }
            for &b in chunk {
                if b == b'\n' {
                    on_line(String::from_utf8_lossy(&line).trim_end());
                    line.clear();
                } else if line.len() < MAX_LINE {
                    line.push(b);
                }
            }
        }
        Ok::<_, std::io::Error>((kept, overflow))
    };
    let (out, err) = tokio::join!(read_out, tail(stderr, STDERR_TAIL));
    let io = |e: std::io::Error| {
        Failure::new(Reason::Failed, format!("{what}: reading its output: {e}"))
    };
    let (stdout, overflow) = out.map_err(io)?;
    let err = err.map_err(io)?;
    let status = child.wait().await.map_err(io)?;
    let last_error = last_line(&err);
    if child::not_found(status, &last_error) {
        return Err(Failure::new(
            Reason::Failed,
            format!("{what} not found: {}: {last_error}", program.display()),
        ));
    }
    if overflow {
        return Err(Failure::new(
            Reason::Failed,
            format!("{what}: output exceeds {keep_stdout} bytes"),
        ));
    }
    Ok(Finished {
        status,
        stdout,
        last_error,
    })
}

/// The last `keep` bytes `reader` yields before its end.
async fn tail(mut reader: impl AsyncRead + Unpin, keep: usize) -> std::io::Result<Vec<u8>> {
    let mut kept = Vec::with_capacity(keep);
    let mut buf = vec![0u8; 8 << 10];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(kept);
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > keep {
            kept.drain(..kept.len() - keep);
        }
    }
}

/// The last non-empty line of `bytes`, cut to [`MAX_QUOTED`] bytes.
#[must_use]
pub fn last_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line = text
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_default();
    truncate(line.to_owned(), MAX_QUOTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_stderr_line_is_quoted_short() {
        assert_eq!(last_line(b"a\nb: Invalid data\n\n  \n"), "b: Invalid data");
        assert_eq!(last_line(b""), "");
        assert_eq!(last_line("x".repeat(2000).as_bytes()).len(), MAX_QUOTED);
    }

    #[tokio::test]
    async fn the_tail_keeps_only_the_end() {
        let data = vec![b'a'; 100_000];
        let kept = tail(&data[..], 10).await.unwrap();
        assert_eq!(kept.len(), 10);
    }
}
