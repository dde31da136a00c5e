//! Traces exported over OTLP, for real: an OTLP/gRPC receiver built from
//! the OpenTelemetry protocol's own definitions (`opentelemetry-proto`)
//! stands in for a collector; the monolith binary exports to it
//! (`--otlp-endpoint`) while a clip is uploaded and transcoded. The
//! upload's trace must hold the gateway's HTTP span (named by its route
//! template), the upload and metadata services' gRPC spans, the worker's
//! handling of `FileUploaded`, the job attempt and the transcoder's calls,
//! every span's parent in the same trace.
#![cfg(not(madsim))]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::Span;
use streamgate::rt;
use streamgate_testkit::otlp::{self, attribute};
use streamgate_testkit::scratch::Scratch;

#[path = "shared/clip.rs"]
mod clip;
#[path = "shared/monolith.rs"]
mod monolith;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upload_is_one_trace_across_the_services() {
    let scratch = Scratch::new("otlp");
    let dir = scratch.path();
    let (collector, received) = otlp::serve();
    let endpoint = format!("http://{collector}");
    let m = monolith::start(
        dir,
        &dir.join("data"),
        &monolith::secret(dir),
        &["--otlp-endpoint", &endpoint],
    )
    .await;
    let token = m.user("otlp@example.com").await;
    let clip = clip::make(dir, 2, 320, 240);
    let reply = m.upload(&token, clip).await.expect("an answer");
    assert_eq!(reply.status, 201, "{:?}", reply.json());
    let id = reply.json()["video_id"].as_str().expect("an id").to_owned();

    // Wait for the video to be ready, then for its trace to be complete:
    // the transcoder's report comes last.
    let started = rt::now();
    loop {
        let v = m
            .send("GET", &format!("/v1/videos/{id}"), &token, "", "")
            .await
            .json();
        match v["state"].as_str() {
            Some("ready") => break,
            Some("failed") => panic!("transcoding failed: {v}"),
            _ => {}
        }
        assert!(
            rt::now() - started < Duration::from_secs(120),
            "not ready in 120 s: {v}"
        );
        rt::sleep(Duration::from_millis(200)).await;
    }

    let upload_span = |spans: &[(String, Span)]| {
        spans
            .iter()
            .find(|(_, s)| s.name == "POST /v1/videos")
            .map(|(_, s)| s.trace_id.clone())
    };
    let services_in = |spans: &[(String, Span)], trace: &[u8]| -> HashSet<String> {
        spans
            .iter()
            .filter(|(_, s)| s.trace_id == trace)
            .filter_map(|(_, s)| {
                attribute(s, "rpc.service")
                    .or_else(|| attribute(s, "messaging.consumer.group.name"))
                    .or_else(|| attribute(s, "http.route").map(|_| "http".to_owned()))
            })
            .collect()
    };
    let expected = [
        "http",
        "streamgate.v1.UploadService",
        "streamgate.v1.MetadataService",
        "worker",
        "streamgate.v1.TranscoderService",
    ];
    let started = rt::now();
    let (trace, spans) = loop {
        let spans = received.spans();
        if let Some(trace) = upload_span(&spans) {
            let found = services_in(&spans, &trace);
            if expected.iter().all(|e| found.contains(*e)) {
                break (trace, spans);
            }
            assert!(
                rt::now() - started < Duration::from_secs(30),
                "the upload's trace has only {found:?} after 30 s, expected {expected:?}; its spans: {:?}",
                spans
                    .iter()
                    .filter(|(_, s)| s.trace_id == trace)
                    .map(|(_, s)| (&s.name, &s.attributes))
                    .collect::<Vec<_>>()
            );
        } else {
            assert!(
                rt::now() - started < Duration::from_secs(30),
                "no span named \"POST /v1/videos\" exported in 30 s; names: {:?}",
                spans.iter().map(|(_, s)| &s.name).collect::<HashSet<_>>()
            );
        }
        rt::sleep(Duration::from_millis(200)).await;
    };

    let ours: Vec<&Span> = spans
        .iter()
        .filter(|(_, s)| s.trace_id == trace)
        .map(|(_, s)| s)
        .collect();
    let ids: HashMap<&[u8], &Span> = ours.iter().map(|s| (s.span_id.as_slice(), *s)).collect();
    assert_eq!(ids.len(), ours.len(), "span ids are unique");
    let roots: Vec<&&Span> = ours
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "one root: {roots:?}");
    assert_eq!(roots[0].name, "POST /v1/videos", "the upload is the root");
    for span in &ours {
        if !span.parent_span_id.is_empty() {
            assert!(
                ids.contains_key(span.parent_span_id.as_slice()),
                "{:?}'s parent is in the trace",
                span.name
            );
        }
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    }
    // The gRPC server spans are children of client spans (the caller's),
    // which are children of the caller's own server or consumer span.
    let server = ours
        .iter()
        .find(|s| s.name == "streamgate.v1.UploadService/Upload")
        .expect("upload's server span");
    let client = ids[server.parent_span_id.as_slice()];
    assert_eq!(client.name, server.name, "called by a client span");
    assert_eq!(
        client.parent_span_id, roots[0].span_id,
        "made by the gateway's request"
    );
    // The job's attempt continues the trace, and the transcoder's calls
    // come from it.
    let attempt = ours
        .iter()
        .find(|s| s.name == "job transcode")
        .expect("the job attempt's span");
    assert_eq!(
        attribute(attempt, "streamgate.job.attempt").as_deref(),
        Some("1")
    );
    assert!(
        ours.iter().any(|s| {
            attribute(s, "rpc.service").as_deref() == Some("streamgate.v1.TranscoderService")
                && s.parent_span_id == attempt.span_id
        }),
        "a transcoder call made by the attempt"
    );
    // No span is named by a raw path.
    let names: HashSet<&str> = spans.iter().map(|(_, s)| s.name.as_str()).collect();
    assert!(
        names.iter().all(|n| !n.contains(&id)),
        "span names carry no ids: {names:?}"
    );
    assert!(
        spans.iter().all(|(service, _)| service == "streamgate"),
        "the monolith's resource is service.name=streamgate"
    );
    // What was sent is counted on /metrics, and nothing was lost. The
    // exporter counts a batch once the collector's answer is back, which
    // can be a moment after the collector has the spans.
    let counted = rt::now();
    let mut exported = m.metric("streamgate_spans_exported_total").await;
    while exported < ours.len() as f64 && rt::now() - counted < Duration::from_secs(10) {
        rt::sleep(Duration::from_millis(100)).await;
        exported = m.metric("streamgate_spans_exported_total").await;
    }
    assert!(
        exported >= ours.len() as f64,
        "{exported} spans exported in 10 s, {} received",
        ours.len()
    );
    assert_eq!(m.metric("streamgate_spans_dropped_total").await, 0.0);
    // The consumers' lag is recorded per event type.
    assert!(
        m.metric("streamgate_bus_lag_seconds_count{event_type=\"file.uploaded\"}")
            .await
            >= 1.0
    );
}
