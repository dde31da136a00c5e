//! A private `nats-server -js` child process for restart tests: its own port
//! and store directory (both removed on drop), killed on drop.

use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use streamgate::rt;
use streamgate_testkit::process::Process;
use streamgate_testkit::scratch::Scratch;

/// The nats-server binary: `NATS_SERVER_BIN`, else `/usr/sbin/nats-server`, else `PATH`.
fn binary() -> String {
    std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| {
        if std::path::Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server".to_owned()
        } else {
            "nats-server".to_owned()
        }
    })
}

/// A running (or killed, awaiting restart) JetStream server of our own.
pub struct NatsServer {
    port: u16,
    process: Option<Process>,
    /// The store (`store/`) and the server's output; dropped last.
    dir: Scratch,
}

impl NatsServer {
    /// Starts a server on a free loopback port with a fresh store directory.
    pub async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut server = Self {
            port,
            process: None,
            dir: Scratch::new("nats"),
        };
        server.restart().await;
        server
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the server (no graceful shutdown, as in a crash).
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts the server again on the same port and store, waiting until it accepts.
    pub async fn restart(&mut self) {
        self.kill();
        let mut cmd = Command::new(binary());
        cmd.args([
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-js",
            "-sd",
        ])
        .arg(self.dir.path().join("store"));
        let mut process = Process::spawn("nats-server", cmd, self.dir.path());
        let started = rt::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(exit) = process.try_exit() {
                panic!(
                    "nats-server exited ({exit}; set NATS_SERVER_BIN?)\n{}",
                    process.tail(20)
                );
            }
            assert!(
                rt::now() - started < Duration::from_secs(10),
                "nats-server on port {} did not come up\n{}",
                self.port,
                process.tail(20)
            );
            rt::sleep(Duration::from_millis(20)).await;
        }
        self.process = Some(process);
    }
}
