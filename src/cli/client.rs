//! `streamgate-cli`: the command-line client of a StreamGate API (over
//! HTTP, as any other client): `signup`, `login`, `logout`, `upload FILE`
//! (tus, resumable, with a progress bar), `videos`, `watch ID`, `play ID`
//! and `status`. `--json` prints one JSON document on stdout for scripts;
//! the progress bars are drawn only on a terminal (stderr), never with
//! `--json` or `--quiet`. The token lives in the config file
//! ([`store`]) or comes from `STREAMGATE_TOKEN`; the server from
//! `--server`, `STREAMGATE_URL`, the config file, or the local default.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{Value, json};

pub mod http;
pub mod store;
pub mod upload;

use http::{Api, Credential, base_url, str_field};
use store::{Session, Store};

/// The server when none is named.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:9090";
/// The most videos `videos` lists.
const MAX_LISTED: usize = 10_000;

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "streamgate-cli",
    version,
    about = "The command-line client of a StreamGate server: sign in, upload (resumable), list, watch, play",
    after_help = "The token is kept in the config file (0600) after `login`, or taken from \
STREAMGATE_TOKEN. Exit status: 0 done, 1 failed (the message says why), 2 bad usage."
)]
pub struct ClientCli {
    /// The server's base URL [default: the config file's, else http://127.0.0.1:9090].
    #[arg(long, env = "STREAMGATE_URL", global = true, value_name = "URL")]
    pub server: Option<String>,
    /// Print one JSON document on stdout (and no progress bar).
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bar and no chatter on stderr.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// The config file [default: <config dir>/streamgate/cli.json].
    #[arg(
        long,
        env = "STREAMGATE_CLI_CONFIG",
        global = true,
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an account and log in to it.
    Signup {
        /// The account's email.
        #[arg(long)]
        email: String,
        /// A display name.
        #[arg(long)]
        display_name: Option<String>,
        #[command(flatten)]
        password: PasswordOpts,
    },
    /// Log in: the token pair goes into the config file.
    Login {
        /// The account's email.
        #[arg(long)]
        email: String,
        #[command(flatten)]
        password: PasswordOpts,
    },
    /// Log out: revoke the tokens and forget them.
    Logout,
    /// Upload a video (tus, resumable; a progress bar with rate and ETA).
    Upload {
        /// The file.
        file: PathBuf,
        /// Go on with this file's upload that was cut short (its URL is in
        /// the config file), from the offset the server has.
        #[arg(long)]
        resume: bool,
        /// The video's title [default: the file's name without extension].
        #[arg(long)]
        title: Option<String>,
        /// Its description.
        #[arg(long)]
        description: Option<String>,
        /// Who may see it.
        #[arg(long, value_parser = ["private", "unlisted", "public"])]
        visibility: Option<String>,
        /// Its media type [default: by the extension, e.g. video/mp4].
        #[arg(long, value_name = "TYPE")]
        content_type: Option<String>,
        /// Bytes per request (64K..=256M; K, M, G suffixes).
        #[arg(long, value_parser = parse_size, default_value = "8M", value_name = "BYTES")]
        chunk_size: u64,
        /// Send at most this many bytes a second (K, M, G suffixes).
        #[arg(long, value_parser = parse_size, value_name = "BYTES")]
        limit_rate: Option<u64>,
        /// After the upload, follow the video to ready (as `watch`).
        #[arg(long)]
        wait: bool,
    },
    /// List videos: yours (or, with --all, every one you may see).
    Videos {
        /// Everyone's public videos too.
        #[arg(long)]
        all: bool,
        /// List at most this many.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=MAX_LISTED as u64))]
        limit: u64,
    },
    /// Follow a video's transcode job until it is ready (or failed).
    Watch {
        /// The video's id.
        id: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        timeout: u64,
    },
    /// Print a video's signed playback URLs (no header needed to play them).
    Play {
        /// The video's id.
        id: String,
        /// How long the URLs last, in seconds (1..=86400; the server's
        /// default: 4 h).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        ttl: Option<u64>,
    },
    /// The cluster's health: each service, and the alerts firing.
    Status,
}

/// Where a password comes from.
#[derive(Debug, Clone, clap::Args)]
pub struct PasswordOpts {
    /// Read the password from stdin's first line (else STREAMGATE_PASSWORD,
    /// else a prompt on the terminal).
    #[arg(long)]
    pub password_stdin: bool,
}

/// A size with an optional K, M or G (powers of 1024) suffix.
///
/// # Errors
/// Not a size.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let t = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (digits, mult) = match t.char_indices().last() {
        Some((i, 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'm')) => (&t[..i], 1 << 20),
        Some((i, 'g')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?}: expected a number of bytes, e.g. 8M"))?;
    n.checked_mul(mult)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{s:?}: expected 1 byte or more, and less than 16 EiB"))
}

/// Output settings.
#[derive(Debug, Clone, Copy)]
struct Out {
    json: bool,
    quiet: bool,
}

impl Out {
    /// Bars only for a person at a terminal.
    fn bars(self) -> bool {
        !self.json && !self.quiet && std::io::stderr().is_terminal()
    }

    fn bar(self, len: u64, template: &str) -> ProgressBar {
        if !self.bars() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    }

    fn note(self, line: &str) {
        if !self.quiet && !self.json {
            eprintln!("{line}");
        }
    }
}

fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    print(&serde_json::to_string_pretty(v)?)
}

/// The main of `streamgate-cli`.
#[must_use]
pub fn main() -> ExitCode {
    let cli = ClientCli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: no tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `cli`.
///
/// # Errors
/// What failed, for the user.
pub async fn run(cli: ClientCli) -> anyhow::Result<()> {
    let out = Out {
        json: cli.json,
        quiet: cli.quiet,
    };
    let path = match &cli.config {
        Some(p) => p.clone(),
        None => store::default_path()?,
    };
    let store = Store::open(&path)?;
    let server = match cli.server.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => s.to_owned(),
        None => store
            .data
            .server
            .clone()
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned()),
    };
    let base = base_url(&server)?;
    let credential = match &cli.command {
        Command::Signup { .. } | Command::Login { .. } => Credential::None,
        _ => match std::env::var("STREAMGATE_TOKEN") {
            Ok(t) if !t.is_empty() => Credential::Fixed(t),
            _ => Credential::Stored,
        },
    };
    let mut api = Api::new(base, credential, store)?;
    match cli.command {
        Command::Signup {
            email,
            display_name,
            password,
        } => {
            let password = read_password(&password)?;
            let mut body = json!({ "email": email, "password": password });
            if let Some(d) = display_name {
                body["display_name"] = json!(d);
            }
            let answer = api
                .call(Method::POST, "/v1/auth/signup", Some(&body))
                .await?;
            signed_in(&mut api, out, &email, &answer)
        }
        Command::Login { email, password } => {
            let password = read_password(&password)?;
            let body = json!({ "email": email, "password": password });
            let answer = api
                .call(Method::POST, "/v1/auth/login", Some(&body))
                .await?;
            signed_in(&mut api, out, &email, &answer)
        }
        Command::Logout => logout(&mut api, out).await,
        Command::Upload {
            file,
            resume,
            title,
            description,
            visibility,
            content_type,
            chunk_size,
            limit_rate,
            wait,
        } => {
            let req = upload::Request {
                file,
                title,
                description,
                visibility,
                content_type,
                resume,
                chunk: chunk_size,
                limit_rate,
            };
            let bar = out.bar(
                0,
                "{spinner} {bytes}/{total_bytes} [{wide_bar}] {binary_bytes_per_sec}, ETA {eta}",
            );
            let result = upload::upload(&mut api, &req, &bar).await;
            bar.finish_and_clear();
            let done = result?;
            let mut report = json!({
                "video_id": done.video_id,
                "upload_url": done.url,
                "bytes": done.bytes,
                "resumed_from": done.resumed_from,
            });
            if wait {
                let video = watch(&mut api, out, &done.video_id, 3600).await?;
                report["video"] = video;
            }
            if out.json {
                print_json(&report)
            } else {
                out.note(&format!(
                    "uploaded {} bytes{}",
                    done.bytes,
                    if done.resumed_from > 0 {
                        format!(" (resumed from {})", done.resumed_from)
                    } else {
                        String::new()
                    }
                ));
                print(&done.video_id)
            }
        }
        Command::Videos { all, limit } => videos(&mut api, out, all, limit).await,
        Command::Watch { id, timeout } => {
            let video = watch(&mut api, out, &id, timeout).await?;
            if out.json {
                print_json(&video)
            } else {
                print(&format!("{id} ready"))
            }
        }
        Command::Play { id, ttl } => play(&mut api, out, &id, ttl).await,
        Command::Status => status(&mut api, out).await,
    }
}

/// The password: stdin's first line, `STREAMGATE_PASSWORD`, or a prompt.
fn read_password(opts: &PasswordOpts) -> anyhow::Result<String> {
    let password = if opts.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else if let Ok(p) = std::env::var("STREAMGATE_PASSWORD") {
        p
    } else if std::io::stdin().is_terminal() {
        rpassword::prompt_password("password: ").context("reading the password")?
    } else {
        bail!("no password: pass --password-stdin, set STREAMGATE_PASSWORD, or run at a terminal");
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    Ok(password)
}

/// Keeps the session of a sign-up or log-in `answer`.
fn signed_in(api: &mut Api, out: Out, email: &str, answer: &Value) -> anyhow::Result<()> {
    let session = Session {
        email: email.to_owned(),
        user_id: str_field(answer, "user_id")?,
        access_token: str_field(answer, "access_token")?,
        access_expires_at_ms: answer["access_expires_at_ms"].as_u64().unwrap_or(0),
        refresh_token: str_field(answer, "refresh_token")?,
    };
    let user_id = session.user_id.clone();
    api.store.data.session = Some(session);
    api.store.data.server = Some(api.base.clone());
    api.store.save()?;
    if out.json {
        print_json(&json!({
            "user_id": user_id,
            "email": email,
            "server": api.base,
            "config": api.store.path(),
        }))
    } else {
        print(&format!("logged in to {} as {email} ({user_id})", api.base))
    }
}

async fn logout(api: &mut Api, out: Out) -> anyhow::Result<()> {
    let refresh = api
        .store
        .data
        .session
        .as_ref()
        .map(|s| s.refresh_token.clone())
        .filter(|t| !t.is_empty());
    let body = refresh.map(|t| json!({ "refresh_token": t }));
    let revoked = api
        .call(Method::POST, "/v1/auth/logout", body.as_ref())
        .await;
    api.store.data.session = None;
    api.store.save()?;
    if let Err(e) = revoked {
        out.note(&format!(
            "forgot the tokens; the server did not revoke them: {e:#}"
        ));
    }
    if out.json {
        print_json(&json!({ "logged_out": true }))
    } else {
        print("logged out")
    }
}

async fn videos(api: &mut Api, out: Out, all: bool, limit: u64) -> anyhow::Result<()> {
    let limit = usize::try_from(limit).unwrap_or(MAX_LISTED).min(MAX_LISTED);
    let mut listed: Vec<Value> = Vec::new();
    let mut token = String::new();
    loop {
        let mut path = "/v1/videos?page_size=100".to_owned();
        if !all {
            path.push_str("&owner=me");
        }
        if !token.is_empty() {
            path.push_str("&page_token=");
            path.push_str(&percent(&token));
        }
        let page = api.call(Method::GET, &path, None).await?;
        let items = page["videos"].as_array().cloned().unwrap_or_default();
        listed.extend(items);
        token = page["next_page_token"].as_str().unwrap_or("").to_owned();
        if token.is_empty() || listed.len() >= limit {
            break;
        }
    }
    listed.truncate(limit);
    if out.json {
        return print_json(&json!({ "videos": listed }));
    }
    let rows: Vec<Vec<String>> = listed
        .iter()
        .map(|v| {
            vec![
                v["id"].as_str().unwrap_or("").to_owned(),
                v["state"].as_str().unwrap_or("").to_owned(),
                v["visibility"].as_str().unwrap_or("").to_owned(),
                human_bytes(v["size_bytes"].as_u64().unwrap_or(0)),
                duration(v["duration_ms"].as_u64().unwrap_or(0)),
                v["title"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    print(&table(
        &["ID", "STATE", "VISIBILITY", "SIZE", "LENGTH", "TITLE"],
        &rows,
    ))
}

/// Follows video `id` until it is ready; its record then. Polls once a
/// second (the job's progress moves the bar).
async fn watch(api: &mut Api, out: Out, id: &str, timeout: u64) -> anyhow::Result<Value> {
    crate::services::media::check_id("video id", id).map_err(|e| anyhow!(e))?;
    let until = crate::rt::now() + Duration::from_secs(timeout);
    let bar = out.bar(100, "{spinner} {msg} [{wide_bar}] {pos}%");
    let mut last = String::new();
    let result = loop {
        let video = match api
            .call(Method::GET, &format!("/v1/videos/{id}"), None)
            .await
        {
            Ok(v) => v,
            Err(e) => break Err(e),
        };
        let state = video["state"].as_str().unwrap_or("unknown").to_owned();
        if state == "ready" {
            bar.set_position(100);
            break Ok(video);
        }
        if state == "failed" {
            let why = video["failure_reason"]
                .as_str()
                .unwrap_or("no reason given");
            break Err(anyhow!("video {id} failed: {why}"));
        }
        // The job appears once the upload is handed over; until then 404.
        let percent = match api
            .call(Method::GET, &format!("/v1/videos/{id}/job"), None)
            .await
        {
            Ok(job) => job["progress_percent"].as_f64().unwrap_or(0.0),
            Err(_) => 0.0,
        };
        let pct = percent.clamp(0.0, 100.0) as u64;
        bar.set_message(state.clone());
        bar.set_position(pct);
        let line = format!("{id}: {state} {pct}%");
        if line != last && !out.bars() {
            out.note(&line);
            last = line;
        }
        if crate::rt::now() >= until {
            break Err(anyhow!("video {id} is still {state} after {timeout} s"));
        }
        crate::rt::sleep(Duration::from_secs(1)).await;
    };
    bar.finish_and_clear();
    result
}

async fn play(api: &mut Api, out: Out, id: &str, ttl: Option<u64>) -> anyhow::Result<()> {
    crate::services::media::check_id("video id", id).map_err(|e| anyhow!(e))?;
    let body = ttl.map(|t| json!({ "ttl_secs": t }));
    let mut grant = api
        .call(
            Method::POST,
            &format!("/v1/videos/{id}/playback"),
            body.as_ref(),
        )
        .await?;
    for key in ["master", "original", "thumbnail"] {
        let path = str_field(&grant, key)?;
        grant[key] = json!(api.url(&path));
    }
    if out.json {
        return print_json(&grant);
    }
    print(&format!(
        "master     {}\noriginal   {}\nthumbnail  {}\n(expires at {} ms since the epoch)",
        grant["master"].as_str().unwrap_or(""),
        grant["original"].as_str().unwrap_or(""),
        grant["thumbnail"].as_str().unwrap_or(""),
        grant["expires_at_ms"],
    ))
}

async fn status(api: &mut Api, out: Out) -> anyhow::Result<()> {
    let s = api.call(Method::GET, "/v1/status", None).await?;
    if out.json {
        return print_json(&s);
    }
    let now = crate::rt::unix_ms();
    let rows: Vec<Vec<String>> = s["services"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|svc| {
            let seen = svc["last_seen_at_ms"].as_u64().unwrap_or(0);
            let open = svc["breakers"]
                .as_array()
                .map_or(0, |b| b.iter().filter(|b| b["state"] != "closed").count());
            vec![
                svc["name"].as_str().unwrap_or("").to_owned(),
                svc["health"].as_str().unwrap_or("").to_owned(),
                if seen == 0 {
                    "never".to_owned()
                } else {
                    format!("{} s ago", now.saturating_sub(seen) / 1000)
                },
                open.to_string(),
            ]
        })
        .collect();
    print(&format!(
        "overall: {}, firing alerts: {}\n{}",
        s["overall"].as_str().unwrap_or("unknown"),
        s["firing_alerts"],
        table(
            &["SERVICE", "HEALTH", "LAST SEEN", "BREAKERS NOT CLOSED"],
            &rows
        )
    ))
}

/// Columns padded to their widest cell (by characters).
#[must_use]
pub fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.push_str(&" ".repeat(w - cell.chars().count() + 2));
            }
        }
        s.trim_end().to_owned()
    };
    let mut out = line(head.to_vec());
    for row in rows {
        out.push('\n');
        // Control characters in a title would move the cursor.
        let clean: Vec<String> = row
            .iter()
            .map(|c| {
                c.chars()
                    .map(|ch| if ch.is_control() { '?' } else { ch })
                    .collect()
            })
            .collect();
        out.push_str(&line(clean.iter().map(String::as_str).collect()));
    }
    out
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn duration(ms: u64) -> String {
    if ms == 0 {
        return "-".to_owned();
    }
    let s = ms / 1000;
    format!("{}:{:02}", s / 60, s % 60)
}

/// `s` percent-encoded for a query value.
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_suffixes() {
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512KB"), Ok(512 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        for bad in ["", "0", "M", "-1", "1.5M", "99999999999999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tables_line_up_and_carry_no_control_characters() {
        let t = table(
            &["ID", "TITLE"],
            &[
                vec!["abc".into(), "one".into()],
                vec!["a".into(), "t\u{1b}[2Jx".into()],
            ],
        );
        assert_eq!(t, "ID   TITLE\nabc  one\na    t?[2Jx");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(duration(61_500), "1:01");
        assert_eq!(percent("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn the_command_line_parses() {
        let cli = ClientCli::try_parse_from([
            "streamgate-cli",
            "--json",
            "upload",
            "clip.mp4",
            "--resume",
            "--chunk-size",
            "1M",
        ])
        .expect("parses");
        assert!(cli.json);
        assert!(matches!(
            cli.command,
            Command::Upload { resume: true, chunk_size, .. } if chunk_size == 1 << 20
        ));
        assert!(ClientCli::try_parse_from(["streamgate-cli", "videos", "--limit", "0"]).is_err());
        assert!(
            ClientCli::try_parse_from(["streamgate-cli", "upload", "f", "--visibility", "x"])
                .is_err()
        );
    }
}
