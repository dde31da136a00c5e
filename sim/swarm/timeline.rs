//! The run's timeline: every fault, heal, call outcome, state change and
//! check, with its simulated time and lane (node). Printed in part as the
//! run goes; written whole as a self-contained HTML page (an SVG with one
//! lane per node, and a table) when the run fails.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use streamgate::rt;

/// Events kept at most (later ones are counted, not kept).
const MAX_EVENTS: usize = 100_000;

/// What an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A fault began.
    Fault,
    /// A fault ended.
    Heal,
    /// A user action and its outcome.
    Call,
    /// A state change: breaker transition, video state, registration.
    State,
    /// An invariant was checked and held.
    Check,
    /// An invariant was violated.
    Violation,
}

impl Kind {
    fn color(self) -> &'static str {
        match self {
            Self::Fault => "#d62728",
            Self::Heal => "#2ca02c",
            Self::Call => "#1f77b4",
            Self::State => "#9467bd",
            Self::Check => "#7f7f7f",
            Self::Violation => "#000000",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Fault => "fault",
            Self::Heal => "heal",
            Self::Call => "call",
            Self::State => "state",
            Self::Check => "check",
            Self::Violation => "VIOLATION",
        }
    }
}

#[derive(Debug, Clone)]
struct Event {
    at: Duration,
    lane: String,
    kind: Kind,
    text: String,
}

#[derive(Debug)]
struct Inner {
    start: Instant,
    events: Vec<Event>,
    dropped: u64,
    violation: Option<String>,
}

/// A shared, append-only timeline.
#[derive(Debug, Clone)]
pub struct Timeline(Arc<Mutex<Inner>>);

impl Timeline {
    /// An empty timeline starting now.
    pub fn new() -> Self {
        Self(Arc::new(Mutex::new(Inner {
            start: rt::now(),
            events: Vec::new(),
            dropped: 0,
            violation: None,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        rt::now() - self.lock().start
    }

    /// Records an event.
    pub fn record(&self, lane: &str, kind: Kind, text: impl std::fmt::Display) {
        let mut inner = self.lock();
        if inner.events.len() >= MAX_EVENTS {
            inner.dropped += 1;
            return;
        }
        let at = rt::now() - inner.start;
        inner.events.push(Event {
            at,
            lane: lane.to_owned(),
            kind,
            text: text.to_string(),
        });
    }

    /// Records `text` as a fault or heal and prints it on the trace.
    pub fn print(&self, lane: &str, kind: Kind, text: impl std::fmt::Display) {
        let text = text.to_string();
        if !crate::trace::quiet() {
            println!("[{:>10.3}s] {lane}: {text}", self.elapsed().as_secs_f64());
        }
        self.record(lane, kind, text);
    }

    /// Records a violated invariant (the first one is kept as the verdict)
    /// and panics with it.
    pub fn violated(&self, lane: &str, text: impl std::fmt::Display) -> ! {
        let text = text.to_string();
        self.record(lane, Kind::Violation, &text);
        let msg = format!(
            "invariant violated at {:.3}s on {lane}: {text}",
            self.elapsed().as_secs_f64()
        );
        self.lock().violation.get_or_insert_with(|| msg.clone());
        panic!("{msg}");
    }

    /// Writes the timeline as `dir/seed-<seed>.html`; returns the path.
    pub fn write_html(&self, dir: &Path, seed: u64, header: &str) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("seed-{seed}.html"));
        std::fs::write(&path, self.html(seed, header))?;
        Ok(path)
    }

    fn html(&self, seed: u64, header: &str) -> String {
        let inner = self.lock();
        let mut lanes: Vec<&str> = Vec::new();
        for e in &inner.events {
            if !lanes.contains(&e.lane.as_str()) {
                lanes.push(&e.lane);
            }
        }
        lanes.sort_unstable();
        let end = inner
            .events
            .iter()
            .map(|e| e.at)
            .max()
            .unwrap_or_default()
            .max(Duration::from_secs(1));
        let (left, width, lane_h) = (150.0, 1400.0, 22.0);
        let height = lane_h * (lanes.len() as f64 + 1.0) + 20.0;
        let x = |at: Duration| left + width * at.as_secs_f64() / end.as_secs_f64();
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="monospace" font-size="11">"#,
            left + width + 20.0
        );
        for (i, lane) in lanes.iter().enumerate() {
            let y = lane_h * (i as f64 + 1.0);
            let _ = write!(
                svg,
                r##"<text x="4" y="{}">{}</text><line x1="{left}" x2="{}" y1="{y}" y2="{y}" stroke="#ddd"/>"##,
                y + 4.0,
                escape(lane),
                left + width
            );
        }
        let mut t = 0;
        while Duration::from_secs(t) <= end {
            let xt = x(Duration::from_secs(t));
            let _ = write!(
                svg,
                r##"<line x1="{xt}" x2="{xt}" y1="10" y2="{}" stroke="#f0f0f0"/><text x="{xt}" y="{}" fill="#999">{t}s</text>"##,
                height - 20.0,
                height - 6.0
            );
            t += 5;
        }
        for e in &inner.events {
            let lane = lanes.iter().position(|l| *l == e.lane).unwrap_or(0);
            let y = lane_h * (lane as f64 + 1.0);
            let r = if e.kind == Kind::Violation { 7.0 } else { 3.0 };
            let _ = write!(
                svg,
                r#"<circle cx="{:.1}" cy="{y}" r="{r}" fill="{}"><title>{:.3}s {} {}: {}</title></circle>"#,
                x(e.at),
                e.kind.color(),
                e.at.as_secs_f64(),
                escape(&e.lane),
                e.kind.name(),
                escape(&e.text)
            );
        }
        svg.push_str("</svg>");
        let mut rows = String::new();
        for e in &inner.events {
            let _ = write!(
                rows,
                r#"<tr><td>{:.3}</td><td>{}</td><td style="color:{}">{}</td><td>{}</td></tr>"#,
                e.at.as_secs_f64(),
                escape(&e.lane),
                e.kind.color(),
                e.kind.name(),
                escape(&e.text)
            );
        }
        format!(
            r#"<!doctype html><html><head><meta charset="utf-8"><title>StreamGate swarm seed {seed}</title>
<style>body{{font-family:sans-serif;margin:16px}}table{{border-collapse:collapse;font-family:monospace;font-size:12px}}td{{padding:1px 8px;border-bottom:1px solid #eee}}</style></head>
<body><h1>Swarm run, seed {seed}</h1><pre>{}</pre><p><b>{}</b></p>
<p>Lanes are nodes; hover a mark for its event. Red: fault, green: heal, blue: user action, purple: state change, grey: check, black: violation. {} events not kept.</p>
{svg}<h2>Events</h2><table><tr><th>s</th><th>lane</th><th>kind</th><th>event</th></tr>{rows}</table></body></html>"#,
            escape(header),
            escape(
                inner
                    .violation
                    .as_deref()
                    .unwrap_or("no violation recorded")
            ),
            inner.dropped
        )
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
