//! The operations kit in `deploy/` (issue #21, item 5) holds together:
//! `promtool check config` accepts the scrape configuration,
//! `promtool check rules` the alert rules, `promtool test rules` runs their
//! unit tests (every alert has a case where it fires and one where it does
//! not), and every metric name the rules and the Grafana dashboard use is
//! one StreamGate exports: on a running monolith's admin `/metrics`, or,
//! for the families that appear with their first event (breakers, bus
//! traffic, HTTP requests), after that event in the metrics code itself;
//! and each is in docs/reference.md's metrics table. Last, a real
//! Prometheus runs the kit's configuration (its targets swapped for a
//! running monolith's admin listener, its intervals for a second) and must
//! scrape it and evaluate every alert rule without error.
//!
//! Needs `promtool` and `prometheus` (`ci/deps` installs Debian's
//! prometheus package; `PROMTOOL_BIN`, `PROMETHEUS_BIN` pick others);
//! fails, never skips, without them.
#![cfg(not(madsim))]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use streamgate::middleware::metrics::Metrics;
use streamgate::resilience::breaker::Transition;
use streamgate::rt;
use streamgate_testkit::process::Process;

#[path = "shared/monolith.rs"]
mod monolith;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn prometheus_dir() -> PathBuf {
    root().join("deploy/prometheus")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `promtool args` in `deploy/prometheus/`; panics with its output
/// unless it succeeds.
fn promtool(args: &[&str]) -> String {
    let promtool = std::env::var("PROMTOOL_BIN").unwrap_or_else(|_| "promtool".to_owned());
    let out = Command::new(&promtool)
        .args(args)
        .current_dir(prometheus_dir())
        .output()
        .unwrap_or_else(|e| {
            panic!("{promtool}: {e} (run ci/deps, which installs Debian's prometheus package)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_configuration_and_the_rules() {
    let out = promtool(&["check", "config", "prometheus.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    assert!(
        out.contains("1 rule files found"),
        "the rules are loaded: {out}"
    );
    let out = promtool(&["check", "rules", "alerts.yml"]);
    assert!(out.contains("SUCCESS: 6 rules found"), "{out}");
}

/// The alerts of alerts.yml, by name.
fn alert_names() -> Vec<String> {
    read(&prometheus_dir().join("alerts.yml"))
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(|n| n.trim().to_owned())
        .collect()
}

#[test]
fn the_alert_rules_pass_their_unit_tests_and_each_is_tested() {
    let out = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let tests = read(&prometheus_dir().join("alerts_test.yml"));
    let alerts = alert_names();
    assert_eq!(
        alerts,
        [
            "StreamGateServiceDown",
            "StreamGateBreakerOpen",
            "StreamGateRetryBudgetExhausted",
            "StreamGateJobQueueAgeGrowing",
            "StreamGateJobsDeadLettered",
            "StreamGateTranscodeFailures",
        ]
    );
    for alert in &alerts {
        // Each evaluation names its alert; a test that expects it to fire
        // lists labels after it, one that expects silence `exp_alerts: []`.
        let evals: Vec<&str> = tests
            .split("- eval_time:")
            .skip(1)
            .filter(|e| e.contains(&format!("alertname: {alert}\n")))
            .collect();
        assert!(
            evals.iter().any(|e| e.contains("exp_labels:")),
            "{alert}: no test where it fires"
        );
        assert!(
            evals.iter().any(|e| e.contains("exp_alerts: []")),
            "{alert}: no test where it does not fire"
        );
    }
}

/// Prometheus metric names in `text`: identifiers with one of StreamGate's
/// prefixes, and `up`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut word = String::new();
    for c in text.chars().chain([' ']) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
            continue;
        }
        let starts = ["streamgate_", "http_server_", "process_"];
        if starts.iter().any(|p| word.starts_with(p)) || (word == "up" && c == '{') {
            names.insert(std::mem::take(&mut word));
        }
        word.clear();
    }
    names
}

/// Sample names an exposition holds, and those its `TYPE` lines declare
/// (a counter's `_total`, a histogram's `_bucket`, `_count` and `_sum`).
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            match kind {
                "counter" => {
                    names.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_count", "_sum"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    names.insert(name.to_owned());
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// The expressions of the dashboard's panels (every panel but a row has
/// at least one).
fn dashboard_exprs() -> Vec<String> {
    let path = root().join("deploy/grafana/streamgate.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(&path)).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "streamgate");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut exprs = Vec::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            exprs.push(expr.to_owned());
        }
    }
    exprs
}

/// Every dashboard query parses as PromQL: promtool checks them as the
/// expressions of recording rules, Grafana's variables replaced by values.
#[test]
fn the_dashboard_queries_are_valid_promql() {
    let exprs = dashboard_exprs();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$job", ".*")
            .replace("$component", ".*");
        assert!(!expr.contains('$'), "an unknown variable in {expr}");
        let quoted = serde_json::to_string(&expr).expect("a JSON string");
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {quoted}\n"
        ));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("dashboard_rules.yml");
    std::fs::write(&path, rules).expect("the rules file");
    let out = promtool(&["check", "rules", path.to_str().expect("a UTF-8 path")]);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{out}"
    );
}

/// The families that appear with their first event, made to appear.
fn event_series() -> String {
    let metrics = Metrics::default();
    metrics.breaker(
        "metadata",
        "metadata-127.0.0.1-9005",
        Transition::Tripped {
            window_calls: 20,
            interval: std::time::Duration::from_secs(5),
        },
    );
    metrics.bus_published("file.uploaded", true);
    metrics.bus_delivered("file.uploaded", false);
    metrics.cache_read("hit");
    metrics.orphan_removed("original");
    metrics.upload_finished(true, std::time::Duration::from_millis(5));
    metrics.transcode_finished(false, std::time::Duration::from_millis(5));
    metrics.render()
}

#[tokio::test]
async fn every_metric_the_rules_and_the_dashboard_use_is_exported_and_documented() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = monolith::secret(dir.path());
    let node = monolith::start(dir.path(), &dir.path().join("data"), &secret, &[]).await;
    // One API request and one gRPC call, so the HTTP histogram and the
    // gRPC series have samples.
    let health = node
        .send("GET", "/health", "", "text/plain", Bytes::new())
        .await;
    assert_eq!(health.status, 200);
    let _ = node.user("ops@example.com").await;
    let scrape = node
        .admin
        .send("GET", "/metrics", "", "text/plain", Bytes::new())
        .await;
    assert_eq!(scrape.status, 200);
    let scraped = exported_names(&String::from_utf8_lossy(&scrape.body));
    assert!(
        scraped.contains("streamgate_job_queue_oldest_age_seconds")
            && scraped.contains("process_resident_memory_bytes"),
        "the monolith's scrape: {scraped:?}"
    );
    let exported: BTreeSet<String> = scraped
        .iter()
        .cloned()
        .chain(exported_names(&event_series()))
        .chain(["up".to_owned()])
        .collect();

    let alerts = read(&prometheus_dir().join("alerts.yml"));
    let tests = read(&prometheus_dir().join("alerts_test.yml"));
    let used_by_alerts = metric_names(&alerts);
    let used_by_dashboard = metric_names(&dashboard_exprs().join("\n"));
    assert!(used_by_alerts.len() >= 6, "{used_by_alerts:?}");
    assert!(used_by_dashboard.len() >= 20, "{used_by_dashboard:?}");
    let docs = read(&root().join("docs/reference.md"));
    for (what, used) in [
        ("alerts.yml", &used_by_alerts),
        ("alerts_test.yml", &metric_names(&tests)),
        ("the dashboard", &used_by_dashboard),
    ] {
        for name in used {
            assert!(
                exported.contains(name),
                "{what} uses {name}, which StreamGate does not export"
            );
            if name == "up" {
                continue;
            }
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(
                docs.contains(&format!("`{family}`")),
                "{what} uses {name}: docs/reference.md's metrics table does not list `{family}`"
            );
        }
    }
    drop(node);
}

#[test]
fn the_name_scanner_finds_names_and_only_names() {
    let names = metric_names(
        "sum by (x) (rate(streamgate_retries_total{target=\"a\"}[5m])) / up{job=\"s\"} \
         + process_threads and histogram_quantile(0.9, http_server_request_duration_seconds_bucket) \
         # up means a target; streamgate is a name",
    );
    let want: BTreeSet<String> = [
        "streamgate_retries_total",
        "up",
        "process_threads",
        "http_server_request_duration_seconds_bucket",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(names, want);
}

/// A port no one listens on now (Prometheus prints no address it bound, so
/// it cannot be given port 0).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The kit's prometheus.yml with its cluster targets replaced by `admin`
/// (component `monolith`) and its intervals by a second.
fn config_for(admin: SocketAddr) -> String {
    let kit = read(&prometheus_dir().join("prometheus.yml"));
    let (head, _) = kit
        .split_once("scrape_configs:")
        .expect("the kit has scrape_configs");
    let head = head
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
        .replace("scrape_timeout: 5s", "scrape_timeout: 1s");
    assert!(
        head.contains("scrape_interval: 1s") && head.contains("evaluation_interval: 1s"),
        "the kit's intervals moved: {head}"
    );
    format!(
        "{head}scrape_configs:\n  - job_name: streamgate\n    static_configs:\n      \
         - targets: ['{admin}']\n        labels: {{component: monolith}}\n"
    )
}

#[tokio::test]
async fn a_real_prometheus_runs_the_kit_against_the_monolith() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = monolith::secret(dir.path());
    let node = monolith::start(dir.path(), &dir.path().join("data"), &secret, &[]).await;
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, config_for(node.admin.gateway)).expect("the configuration");
    std::fs::copy(
        prometheus_dir().join("alerts.yml"),
        dir.path().join("alerts.yml"),
    )
    .expect("the rules");

    let web = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd =
        Command::new(std::env::var("PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".to_owned()));
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={web}"));
    // Spawning fails (and the test with it) when the binary is missing.
    let server = Process::spawn("prometheus", cmd, dir.path());
    let api = monolith::Api::new(web);

    // Every rule of the kit loaded, evaluated, and healthy; the target up.
    let deadline = rt::now() + Duration::from_secs(60);
    loop {
        let rules = api
            .try_send("GET", "/api/v1/rules?type=alert", "", "", Bytes::new())
            .await
            .map(|r| r.json())
            .unwrap_or(Value::Null);
        let alerting: Vec<&Value> = rules["data"]["groups"]
            .as_array()
            .map(|groups| {
                groups
                    .iter()
                    .filter_map(|g| g["rules"].as_array())
                    .flatten()
                    .collect()
            })
            .unwrap_or_default();
        let healthy = alerting.iter().filter(|r| r["health"] == "ok").count();
        let broken: Vec<&&Value> = alerting.iter().filter(|r| r["health"] == "err").collect();
        assert!(broken.is_empty(), "rules failing to evaluate: {broken:?}");
        let up = api
            .try_send(
                "GET",
                "/api/v1/query?query=up%7Bjob%3D%22streamgate%22%2Ccomponent%3D%22monolith%22%7D",
                "",
                "",
                Bytes::new(),
            )
            .await
            .map(|r| r.json())
            .unwrap_or(Value::Null);
        let is_up = up["data"]["result"][0]["value"][1] == "1";
        if alerting.len() == alert_names().len() && healthy == alerting.len() && is_up {
            let firing: Vec<&&Value> = alerting.iter().filter(|r| r["state"] == "firing").collect();
            assert!(firing.is_empty(), "an idle monolith fires: {firing:?}");
            break;
        }
        assert!(
            rt::now() < deadline,
            "the rules were not all evaluated, or the target is not up, within a minute: \
             rules {rules}, up {up}\nprometheus:\n{}",
            server.tail(30)
        );
        rt::sleep(Duration::from_millis(500)).await;
    }
    drop(server);
    drop(node);
}
