//! What tests/cluster.rs checks after the fact: the NATS tap's events and
//! the processes' logs.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use streamgate::bus::EventType;
use streamgate::services::ServiceKind;

/// The tap's lines: (subject, envelope).
pub fn read_tap(path: &Path) -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(path).expect("tap output");
    text.lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (subject, json) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("tap line {l:?}"));
            let envelope = serde_json::from_str(json)
                .unwrap_or_else(|e| panic!("not a JSON envelope ({e}): {l}"));
            (subject.to_owned(), envelope)
        })
        .collect()
}

/// Every event the pipeline publishes for `id` was seen on its subject,
/// from the right service, in a full envelope.
pub fn check_events(seen: &[(String, Value)], prefix: &str, id: &str, job: &Value) {
    let expected = [
        (EventType::FileUploaded, "upload"),
        (EventType::MetadataCreated, "metadata"),
        (EventType::JobSubmitted, "worker"),
        (EventType::TranscodingStarted, "transcoder"),
        (EventType::TranscodingCompleted, "transcoder"),
        (EventType::MetadataUpdated, "metadata"),
        (EventType::JobCompleted, "worker"),
    ];
    let job_id = job["job_id"]
        .as_str()
        .or_else(|| job["id"].as_str())
        .unwrap_or_else(|| panic!("a job id in {job}"));
    let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
    for (kind, source) in expected {
        let subject = format!("{prefix}.{}", kind.subject());
        let name = serde_json::to_value(kind).expect("type name");
        let ours: Vec<&Value> = seen
            .iter()
            .filter(|(s, _)| *s == subject)
            .map(|(_, e)| e)
            .filter(|e| e["data"]["video_id"] == id || e["data"]["job_id"] == job_id)
            .collect();
        assert!(
            !ours.is_empty(),
            "no {name} for video {id} on {subject}; the tap saw: {:#?}",
            seen.iter().map(|(s, _)| s).collect::<Vec<_>>()
        );
        for e in &ours {
            assert!(e["id"].as_str().is_some_and(|i| !i.is_empty()), "id: {e}");
            assert_eq!(e["type"], name, "{e}");
            assert_eq!(e["source"], source, "{e}");
            assert!(
                e["time"].as_u64().is_some_and(|t| t > 1_600_000_000_000),
                "time: {e}"
            );
            assert!(e["data"].is_object(), "data: {e}");
        }
        by_type.insert(name.as_str().expect("string").to_owned(), ours.len());
    }
    eprintln!("events seen by the tap for the video: {by_type:?}");
}

/// Every line of a JSON log names `kind`; none holds a secret.
pub fn check_log(path: &Path, kind: ServiceKind, secrets: &[&str]) {
    let text = std::fs::read_to_string(path).expect("log");
    let mut lines = 0;
    for line in text.lines().filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{}: not a JSON line ({e}): {line}", path.display()));
        assert_eq!(v["service"], kind.name(), "{line}");
        assert!(
            v["fields"]["message"].is_string() && v["level"].is_string(),
            "{line}"
        );
        lines += 1;
    }
    assert!(
        text.contains("\"registered\""),
        "{}: the log is on ({lines} lines)",
        path.display()
    );
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "{}: a secret in the log",
            path.display()
        );
    }
}
