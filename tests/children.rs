//! Child processes die with their parent (issue #23, item 4): after kill -9
//! of the monolith binary in the middle of a transcode, no ffmpeg or
//! ffprobe it started is still running 1 s later, round after round (each
//! restart takes the transcode up again, and is killed again).
#![cfg(not(madsim))]
// Reports how long the children took to die (run with --nocapture).
#![allow(clippy::print_stdout)]

use std::path::Path;
use std::time::Duration;

use streamgate::rt;
use streamgate_testkit::process::Signal;
use streamgate_testkit::scratch::Scratch;

#[path = "shared/clip.rs"]
mod clip;
#[path = "shared/monolith.rs"]
mod monolith;

/// Kill rounds.
const ROUNDS: usize = 3;
/// How long the children may outlive their parent.
const DIE_WITHIN: Duration = Duration::from_secs(1);

/// A live (not zombie) process's command name and parent, from `/proc`.
fn stat(pid: u32) -> Option<(String, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let parent = fields.next()?.parse().ok()?;
    (state != "Z").then_some((name, parent))
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect()
}

fn is_transcoder_tool(name: &str) -> bool {
    matches!(name, "ffmpeg" | "ffprobe")
}

/// ffmpeg and ffprobe processes that are children of `parent`.
fn tools_of(parent: u32) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|&pid| stat(pid).is_some_and(|(name, p)| p == parent && is_transcoder_tool(&name)))
        .collect()
}

/// Live ffmpeg and ffprobe processes working on files under `data`
/// (whoever their parent is now: an orphan is adopted by init).
fn tools_on(data: &Path) -> Vec<u32> {
    let data = data.to_string_lossy().into_owned();
    pids()
        .into_iter()
        .filter(|&pid| {
            stat(pid).is_some_and(|(name, _)| is_transcoder_tool(&name))
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&data))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ffmpeg_outlives_a_kill_9_of_the_monolith() {
    let scratch = Scratch::new("children");
    let data = scratch.path().join("data");
    let secret = monolith::secret(scratch.path());
    // Long enough at 720p that its renditions take seconds to encode.
    let clip = clip::make(scratch.path(), 20, 1280, 720);
    for round in 1..=ROUNDS {
        let mut node = monolith::start(scratch.path(), &data, &secret, &[]).await;
        if round == 1 {
            let token = node.user("ada@example.com").await;
            let reply = node.upload(&token, clip.clone()).await.expect("an answer");
            assert_eq!(reply.status, 201, "upload: {:?}", reply.json());
        }
        // Round 1 transcodes the upload; later ones take it up again (the
        // job's lease of the killed run comes back at start).
        let pid = node.process.id();
        let deadline = rt::now() + Duration::from_secs(60);
        let running = loop {
            let found = tools_of(pid);
            if found.len() == 1 && stat(found[0]).is_some_and(|(name, _)| name == "ffmpeg") {
                break found;
            }
            assert!(
                rt::now() < deadline,
                "round {round}: no ffmpeg within 60 s\n{}",
                node.process.tail(30)
            );
            rt::sleep(Duration::from_millis(20)).await;
        };
        // Encoding for a while: well into its work when the kill comes.
        rt::sleep(Duration::from_millis(300)).await;
        assert!(
            !tools_of(pid).is_empty(),
            "round {round}: the transcode still runs when the kill comes"
        );
        node.process.signal(Signal::KILL);
        let killed = rt::now();
        node.process.exited(Duration::from_secs(5)).await;
        let left = loop {
            let left: Vec<u32> = running
                .iter()
                .copied()
                .filter(|&p| stat(p).is_some())
                .chain(tools_on(&data))
                .collect();
            if left.is_empty() || rt::now() - killed > DIE_WITHIN {
                break left;
            }
            rt::sleep(Duration::from_millis(10)).await;
        };
        assert!(
            left.is_empty(),
            "round {round}: {left:?} still running {DIE_WITHIN:?} after the kill"
        );
        println!(
            "round {round}: {} ffmpeg gone {:?} after the kill",
            running.len(),
            rt::now() - killed
        );
    }
}
