//! Child processes that die with this one (ffmpeg, ffprobe). Each starts
//! through util-linux's `setpriv --pdeathsig KILL`, so the kernel kills it
//! when the thread that forked it ends; that thread is one kept for this
//! alone, which ends only with the process (tokio's workers and blocking
//! threads may end earlier: blocking ones when idle). Each child leads a
//! process group of its own, killed whole when its [`Child`] is dropped
//! before it was waited for (a timeout, a cancel, a stop), so nothing it
//! started lives on either.
//!
//! `PR_SET_PDEATHSIG` needs code between fork and exec, which Rust offers
//! only as `unsafe` (`CommandExt::pre_exec`) and this crate forbids; setpriv
//! does it in the child instead. Where setpriv is missing (it is part of
//! util-linux, essential on Debian) children start without it, with a
//! warning: a kill -9 of this process then leaves them running.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;

use rustix::process::{Pid, Signal};

/// What starts a child with its parent-death signal set.
const SETPRIV: &str = "setpriv";
/// The exit status setpriv gives when it cannot run the program.
const SETPRIV_CANNOT_EXECUTE: i32 = 127;
/// The start of setpriv's message when it cannot run the program.
pub const SETPRIV_NOT_FOUND: &str = "setpriv: failed to execute";

/// A program and its arguments, to run with [`spawn`].
#[derive(Debug, Clone)]
pub struct Command {
    program: PathBuf,
    args: Vec<OsString>,
}

impl Command {
    /// Runs `program`.
    #[must_use]
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
        }
    }

    /// Adds an argument.
    pub fn arg(&mut self, arg: impl Into<OsString>) -> &mut Self {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args<I>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator,
        I::Item: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The program.
    #[must_use]
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The command that runs it: through setpriv where it works, in a
    /// process group of its own, stdin empty, stdout and stderr piped.
    fn build(&self, setpriv: bool) -> tokio::process::Command {
        let mut cmd = if setpriv {
            let mut cmd = tokio::process::Command::new(SETPRIV);
            cmd.args(["--pdeathsig", "KILL", "--"]).arg(&self.program);
            cmd
        } else {
            tokio::process::Command::new(&self.program)
        };
        cmd.args(&self.args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }
}

/// A running child; its process group is killed if it is dropped before
/// [`Child::wait`] returned.
#[derive(Debug)]
pub struct Child {
    inner: tokio::process::Child,
    /// The group it leads (its pid), until it is reaped.
    group: Option<Pid>,
}

impl Child {
    /// The child's stdout and stderr pipes (once).
    pub fn pipes(&mut self) -> Option<(tokio::process::ChildStdout, tokio::process::ChildStderr)> {
        Some((self.inner.stdout.take()?, self.inner.stderr.take()?))
    }

    /// Waits for it to exit (and reaps it).
    ///
    /// # Errors
    /// Waiting failed.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let status = self.inner.wait().await?;
        // Reaped: its pid, the group's id, may be another's now.
        self.group = None;
        Ok(status)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(group) = self.group {
            // Not reaped, so the id is still its group's.
            let _ = rustix::process::kill_process_group(group, Signal::KILL);
        }
    }
}

/// Whether `status` is setpriv saying it could not run the program, given
/// the last line of stderr.
#[must_use]
pub fn not_found(status: ExitStatus, last_stderr_line: &str) -> bool {
    status.code() == Some(SETPRIV_CANNOT_EXECUTE) && last_stderr_line.starts_with(SETPRIV_NOT_FOUND)
}

type Job = Box<dyn FnOnce(bool) + Send>;

/// The thread that forks every child, started on first use; it runs as long
/// as the process.
fn spawner() -> std::io::Result<&'static mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    if let Some(tx) = SPAWNER.get() {
        return Ok(tx);
    }
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("streamgate-spawner".to_owned())
        .spawn(move || {
            let setpriv = setpriv_works();
            for job in rx {
                job(setpriv);
            }
        })?;
    // Another caller may have won the race; its thread serves both.
    Ok(SPAWNER.get_or_init(|| tx))
}

/// Whether setpriv can set the parent-death signal here (asked once).
fn setpriv_works() -> bool {
    let works = std::process::Command::new(SETPRIV)
        .args(["--pdeathsig", "KILL", "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !works {
        tracing::warn!(
            "`setpriv --pdeathsig` does not work here (install util-linux): child \
             processes start without it and outlive a kill -9 of this process"
        );
    }
    works
}

/// Starts `cmd` on the spawner thread (see the module docs), registered
/// with the calling task's tokio runtime.
///
/// # Errors
/// The program (or setpriv) could not be started.
pub async fn spawn(cmd: &Command) -> std::io::Result<Child> {
    let handle = tokio::runtime::Handle::current();
    let (reply, answer) = tokio::sync::oneshot::channel();
    let cmd = cmd.clone();
    let job: Job = Box::new(move |setpriv| {
        let _runtime = handle.enter();
        let _ = reply.send(cmd.build(setpriv).spawn());
    });
    let gone = || std::io::Error::other("the process spawner thread is gone");
    spawner()?.send(job).map_err(|_| gone())?;
    let inner = answer.await.map_err(|_| gone())??;
    let group = inner
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(Pid::from_raw);
    Ok(Child { inner, group })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt as _;

    use super::*;

    /// A live (not zombie) process's parent and process group, from `/proc`.
    fn stat(pid: i32) -> Option<(i32, i32)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
        let state = fields.next()?;
        let parent = fields.next()?.parse().ok()?;
        let group = fields.next()?.parse().ok()?;
        (state != "Z").then_some((parent, group))
    }

    /// The live processes of group `group`.
    fn members(group: i32) -> usize {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
            .filter(|&pid| stat(pid).is_some_and(|(_, g)| g == group))
            .count()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_child_runs_through_setpriv_in_its_own_group_killed_with_its_handle() {
        assert!(setpriv_works(), "setpriv --pdeathsig works on this machine");
        let mut cmd = Command::new("sh");
        // A grandchild in the child's group, and a line once it runs.
        cmd.args(["-c", "sleep 300 & echo started; wait"]);
        let mut child = spawn(&cmd).await.expect("sh starts");
        let (mut out, _err) = child.pipes().expect("pipes");
        let mut line = [0u8; 8];
        out.read_exact(&mut line).await.expect("the child speaks");
        let pid = i32::try_from(child.inner.id().expect("running")).expect("a pid");
        let me = i32::try_from(std::process::id()).expect("a pid");
        // setpriv became sh (exec), so sh is this process's own child.
        assert_eq!(stat(pid), Some((me, pid)), "our child, leading its group");
        assert_eq!(members(pid), 2, "sh and its sleep");
        drop(child);
        let deadline = crate::rt::now() + Duration::from_secs(5);
        while members(pid) > 0 {
            assert!(crate::rt::now() < deadline, "the group outlived the handle");
            crate::rt::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_missing_program_is_told_apart() {
        let mut child = spawn(&Command::new("/nonexistent/bin/ffmpeg"))
            .await
            .expect("setpriv starts");
        let (_out, mut err) = child.pipes().expect("pipes");
        let mut text = String::new();
        err.read_to_string(&mut text).await.expect("stderr");
        let status = child.wait().await.expect("it ends");
        assert!(not_found(status, text.trim()), "{status}: {text}");
        assert!(
            child.group.is_none(),
            "reaped: its group is no longer ours to kill"
        );
    }
}
