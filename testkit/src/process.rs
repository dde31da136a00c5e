//! A child process of a test (a StreamGate binary, nginx, a probe): its
//! stdout and stderr kept in files and printed if the test fails, and
//! killed, with its process group if it leads one, when dropped.
//!
//! StreamGate binaries started with `--port 0` print `listening <service>
//! <address>` on stdout once serving; [`Process::listening`] reads those.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::Pid;
pub use rustix::process::Signal;
use streamgate::rt;

/// Lines of each stream printed when a test fails.
const TAIL_LINES: usize = 40;

/// How long [`Process::listening`] waits for a service's line.
pub const LISTENING_TIMEOUT: Duration = Duration::from_secs(30);

/// A running child process; killed on drop.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    stdout: PathBuf,
    /// Where this run's output starts in `stdout` (earlier runs under the
    /// same name wrote before it).
    stdout_start: usize,
    stderr: PathBuf,
    exit: Option<ExitStatus>,
}

impl Process {
    /// Spawns `cmd` as `name`: stdin empty, stdout to `<dir>/<name>.stdout`,
    /// stderr to `<dir>/<name>.log` (both appended to, so a restart under
    /// the same name keeps the earlier output). For a process whose
    /// children must die with it, give `cmd` its own process group
    /// (`CommandExt::process_group(0)`): the drop kills the whole group.
    ///
    /// # Panics
    /// When the files cannot be made or the program cannot be started.
    #[must_use]
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("the process's log dir");
        let open = |path: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.log"));
        let stdout_file = open(&stdout);
        let stdout_start = stdout_file
            .metadata()
            .ok()
            .and_then(|m| usize::try_from(m.len()).ok())
            .unwrap_or(0);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout_file)
            .stderr(open(&stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {:?}: {e}", cmd.get_program()));
        Self {
            name: name.to_owned(),
            child,
            stdout,
            stdout_start,
            stderr,
            exit: None,
        }
    }

    /// The name it was spawned as.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id.
    #[must_use]
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The file its stdout goes to (appended to by every run under its name).
    #[must_use]
    pub fn stdout_path(&self) -> &Path {
        &self.stdout
    }

    /// The file its stderr (a StreamGate binary's log) goes to.
    #[must_use]
    pub fn log_path(&self) -> &Path {
        &self.stderr
    }

    /// Everything it wrote to stderr so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The last `lines` of its stdout and of its stderr, headed by its name.
    #[must_use]
    pub fn tail(&self, lines: usize) -> String {
        let tail = |path: &Path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        };
        format!(
            "---- {} stdout ({})\n{}\n---- {} stderr ({})\n{}",
            self.name,
            self.stdout.display(),
            tail(&self.stdout),
            self.name,
            self.stderr.display(),
            tail(&self.stderr)
        )
    }

    /// Sends `signal` to the process (not its group).
    ///
    /// # Panics
    /// When it has exited and been waited for, or the signal fails.
    pub fn signal(&self, signal: Signal) {
        assert!(self.exit.is_none(), "{} has exited", self.name);
        rustix::process::kill_process(Pid::from_child(&self.child), signal)
            .unwrap_or_else(|e| panic!("signal {signal:?} to {}: {e}", self.name));
    }

    /// Its exit status, if it has exited.
    ///
    /// # Panics
    /// When waiting fails.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("wait for the child");
        }
        self.exit
    }

    /// Waits for it to exit, at most `limit`.
    ///
    /// # Panics
    /// When it is still running after `limit` (with its output).
    pub async fn exited(&mut self, limit: Duration) -> ExitStatus {
        let deadline = rt::now() + limit;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            assert!(
                rt::now() < deadline,
                "{} still running after {limit:?}\n{}",
                self.name,
                self.tail(TAIL_LINES)
            );
            rt::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs it (and its group, if it leads one) and waits for it.
    pub fn kill(&mut self) {
        if self.exit.is_some() {
            return;
        }
        let pid = Pid::from_child(&self.child);
        if rustix::process::getpgid(Some(pid)).is_ok_and(|group| group == pid) {
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        }
        let _ = self.child.kill();
        self.exit = self.child.wait().ok();
    }

    /// The address `service` listens on, from the `listening <service>
    /// <address>` line the process prints on stdout once serving (a
    /// StreamGate binary started with `--port 0`); waits for it at most
    /// [`LISTENING_TIMEOUT`].
    ///
    /// # Panics
    /// When the process exits first, or no such line comes in time (with
    /// its output).
    pub async fn listening(&mut self, service: &str) -> SocketAddr {
        self.address_line(&[streamgate::node::LISTENING, service])
            .await
    }

    /// The address of the process's admin listener, from its `admin
    /// <address>` line on stdout (waiting for it as [`Process::listening`]
    /// does).
    pub async fn admin(&mut self) -> SocketAddr {
        self.address_line(&[streamgate::node::ADMIN]).await
    }

    /// The address of the last stdout line `<words...> <address>`.
    async fn address_line(&mut self, words: &[&str]) -> SocketAddr {
        let deadline = rt::now() + LISTENING_TIMEOUT;
        let service = words.join(" ");
        loop {
            // Whether it exited is asked before its output is read: a
            // process that prints the line and exits between the two
            // would otherwise be taken for one that never printed it.
            let exited = self.try_exit();
            let stdout = std::fs::read(&self.stdout).unwrap_or_default();
            let ours = String::from_utf8_lossy(stdout.get(self.stdout_start..).unwrap_or_default());
            if let Some(addr) = address_in(&ours, words) {
                return addr;
            }
            if let Some(exit) = exited {
                panic!(
                    "{} exited ({exit}) before serving {service}\n{}",
                    self.name,
                    self.tail(TAIL_LINES)
                );
            }
            assert!(
                rt::now() < deadline,
                "{} printed no `{service} <address>` line within {LISTENING_TIMEOUT:?}\n{}",
                self.name,
                self.tail(TAIL_LINES)
            );
            rt::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The address of the last line `<expected...> <address>` of `stdout`.
fn address_in(stdout: &str, expected: &[&str]) -> Option<SocketAddr> {
    stdout.lines().rev().find_map(|line| {
        let mut words = line.split_whitespace();
        for want in expected {
            if words.next()? != *want {
                return None;
            }
        }
        let addr = words.next()?.parse().ok()?;
        words.next().is_none().then_some(addr)
    })
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("{}", self.tail(TAIL_LINES));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_lines_are_found_by_service() {
        let out = "listening cache 127.0.0.1:1000\nnoise\nlistening cache-2 127.0.0.1:3\n\
                   listening cache 127.0.0.1:2000\nlistening worker nonsense\n\
                   admin 127.0.0.1:4000\n";
        let listening_in = |out, service| address_in(out, &["listening", service]);
        assert_eq!(
            listening_in(out, "cache"),
            Some(([127, 0, 0, 1], 2000).into())
        );
        assert_eq!(
            listening_in(out, "cache-2"),
            Some(([127, 0, 0, 1], 3).into())
        );
        assert_eq!(listening_in(out, "worker"), None);
        assert_eq!(listening_in(out, "auth"), None);
        assert_eq!(
            address_in(out, &["admin"]),
            Some(([127, 0, 0, 1], 4000).into())
        );
        assert_eq!(address_in("admin 127.0.0.1:1 trailing\n", &["admin"]), None);
    }

    #[tokio::test]
    async fn output_is_kept_and_the_group_dies_on_drop() {
        use std::os::unix::process::CommandExt as _;
        let dir = crate::scratch::Scratch::new("process");
        let mut cmd = Command::new("sh");
        // A child of the child, in the group the spawn makes: the drop
        // must take it too.
        cmd.args([
            "-c",
            "sleep 600 & echo $! > grandchild; echo out; echo err >&2; \
             echo 'listening cache 127.0.0.1:4321'; wait",
        ])
        .current_dir(dir.path())
        .process_group(0);
        let mut p = Process::spawn("sh", cmd, dir.path());
        assert_eq!(p.listening("cache").await, ([127, 0, 0, 1], 4321).into());
        assert!(p.log().contains("err"), "{}", p.tail(5));
        assert!(p.tail(5).contains("out"), "{}", p.tail(5));
        assert!(p.try_exit().is_none(), "still running");
        let grandchild: i32 = std::fs::read_to_string(dir.path().join("grandchild"))
            .expect("the grandchild's pid")
            .trim()
            .parse()
            .expect("a pid");
        assert!(alive(grandchild), "the grandchild runs");
        drop(p);
        let deadline = rt::now() + Duration::from_secs(5);
        while alive(grandchild) {
            assert!(rt::now() < deadline, "the grandchild outlived the drop");
            rt::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_restart_under_the_same_name_reads_only_its_own_lines() {
        let dir = crate::scratch::Scratch::new("process-restart");
        let run = |script: &str| {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", script]);
            Process::spawn("svc", cmd, dir.path())
        };
        let mut first = run("echo 'listening cache 127.0.0.1:1'");
        assert_eq!(first.listening("cache").await.port(), 1);
        first.exited(Duration::from_secs(5)).await;
        let mut second = run("sleep 0.3; echo 'listening cache 127.0.0.1:2'; sleep 600");
        assert_eq!(
            second.listening("cache").await.port(),
            2,
            "not the first run's line"
        );
        assert!(second.tail(5).contains(":1"), "the file keeps both runs");
    }

    /// Whether `pid` runs: it exists and is no zombie (a killed orphan
    /// stays one until init reaps it, which a container's init may never do).
    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
            !state.is_some_and(|s| s.starts_with('Z'))
        })
    }
}
