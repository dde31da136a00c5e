//! schemathesis (PyPI) against the monolith binary with the description it
//! serves at `/openapi.json`: generated requests, valid and invalid, to
//! every operation, as a signed-up user. It must find no 5xx, no answer
//! outside the description (status, content type, headers, body schema),
//! no invalid request accepted, and nothing that crashes the server. The
//! number of examples is bounded and the seed fixed (set
//! `STREAMGATE_SCHEMATHESIS_SEED` to try another), so it takes a couple of
//! minutes. It fails, never skips, when schemathesis is missing: run
//! ci/deps.
#![cfg(not(madsim))]

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use streamgate_testkit::scratch::Scratch;

#[path = "shared/monolith.rs"]
mod monolith;

const DEPS: &str = "run ci/deps (it installs schemathesis in the Python venv)";

/// The schemathesis of the venv `ci/deps` makes (or `STREAMGATE_PYENV`'s).
fn schemathesis() -> PathBuf {
    std::env::var_os("STREAMGATE_PYENV")
        .map_or_else(
            || PathBuf::from("/var/cache/streamgate/pyenv"),
            PathBuf::from,
        )
        .join("bin/schemathesis")
}

/// The checks run: every one but those that need data the API cannot take
/// from a generator (`positive_data_acceptance`: a random id is rightly
/// 404) or a second user (`object_level_authorization`; the router tests
/// cover who sees what).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_headers_conformance,response_schema_conformance,negative_data_rejection,\
missing_required_header,unsupported_method,ignored_auth";

/// Runs schemathesis on `gateway` with `token` and `extra` options; its
/// output if it failed.
fn run(gateway: std::net::SocketAddr, token: &str, dir: &std::path::Path, extra: &[&str]) {
    let seed = std::env::var("STREAMGATE_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20".to_owned());
    let settings = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/schemathesis");
    let mut cmd = Command::new(schemathesis());
    cmd.current_dir(dir)
        .arg("--config-file")
        .arg(settings.join("schemathesis.toml"))
        .arg("run")
        .arg(format!("http://{gateway}/openapi.json"))
        .args(["--url", &format!("http://{gateway}")])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["--checks", CHECKS])
        .args(["--max-examples", "100", "--seed", &seed])
        .args(["--phases", "examples,coverage,fuzzing"])
        // One worker: with two, schemathesis' threads run hypothesis'
        // `ast.parse` of a lambda's source at once, and CPython 3.11's AST
        // validator keeps its recursion depth in shared state ("SystemError:
        // AST constructor recursion depth mismatch", a runtime error of the
        // tool that failed a CI run here, not a finding).
        .args(["--workers", "1", "--request-timeout", "30"])
        .args(["--generation-database", "none", "--no-color"])
        .args(["--suppress-health-check", "all"])
        .args(extra)
        .env("SCHEMATHESIS_HOOKS", "streamgate_hooks")
        .env("PYTHONPATH", &settings)
        .env("NO_COLOR", "1");
    let started = streamgate::rt::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}: {DEPS}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "schemathesis {extra:?}: {} in {:.0?}\n{}",
        out.status,
        started.elapsed(),
        stdout
            .lines()
            .rev()
            .take(12)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        out.status.success(),
        "schemathesis found problems ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_against_the_monolith() {
    let ok = Command::new(schemathesis())
        .arg("--version")
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{} does not run: {DEPS}", schemathesis().display());

    let scratch = Scratch::new("openapi");
    let data = scratch.path().join("data");
    let secret = monolith::secret(scratch.path());
    // Rates far above what schemathesis sends (its sign-ups and upload
    // starts would meet the defaults, and the users signed up here after).
    let rates = [
        "--http-signup-rate",
        "1000000/s",
        "--http-login-rate",
        "1000000/s",
        "--http-upload-rate",
        "1000000/s",
        "--http-playback-rate",
        "1000000/s",
    ];
    let node = monolith::start(scratch.path(), &data, &secret, &rates).await;
    let token = node.user("schemathesis@example.com").await;

    // What the host serves beside the API's router is in the description
    // too (the router test leaves these two to this one).
    for path in ["/health", "/ready", "/openapi.json"] {
        let reply = node.send("GET", path, "", "", "").await;
        assert_eq!(reply.status, 200, "{path}");
    }
    let served = node.send("GET", "/openapi.json", "", "", "").await;
    let spec: Value = serde_json::from_slice(&served.body).expect("JSON");
    for path in ["/health", "/ready"] {
        assert!(spec["paths"].get(path).is_some(), "{path} described");
    }

    // Everything but logging out, which would end the token the rest use.
    run(
        node.gateway,
        &token,
        scratch.path(),
        // And the event stream, which lasts until its videos settle (15
        // min at most): router tests and the browser test cover it.
        &[
            "--exclude-path",
            "/v1/auth/logout",
            "--exclude-path",
            "/v1/events",
        ],
    );
    run(
        node.gateway,
        &token,
        scratch.path(),
        &["--include-path", "/v1/auth/logout"],
    );
    // The server is still up and answering (nothing crashed it).
    let health = node.send("GET", "/health", "", "", "").await;
    assert_eq!(health.status, 200);
    let mine = node.user("schemathesis-after@example.com").await;
    let list = node.send("GET", "/v1/videos", &mine, "", "").await;
    assert_eq!(list.status, 200, "{:?}", list.json());
}
