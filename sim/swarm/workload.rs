//! The workload: one user acting through the gateways' HTTP API (sign up,
//! upload, read, rename, delete, watch with a viewing session, follow the
//! job), and the auditor: a model of what each answer may be. During the
//! safety phase a fault may turn any call into a 5xx or a timeout (its
//! effect is then unknown, and the model keeps both outcomes possible); it
//! may never turn it into a wrong answer: a 4xx for a valid request, a lost
//! video, a title nobody wrote. After healing, the liveness phase requires
//! every video to settle (ready ones with their master playlist and
//! thumbnail served). Whatever the faults, the user is never refused for
//! load it did not cause: it has one request in flight, far within any
//! client's share, so a gateway's "too many requests in flight" to it means
//! another client (`stalled.rs`) starved it.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use rand::Rng as _;
use rand::seq::SliceRandom as _;
use serde_json::Value;
use streamgate::registry::consul::{HttpTransport as _, SimTransport};
use streamgate::rt;

use super::timeline::{Kind, Timeline};

/// Deadline of one user request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Uploads at most, per run.
const MAX_UPLOADS: usize = 10;
/// Largest response body read.
const BODY_LIMIT: usize = 4 << 20;

/// An answer: a status and body, or no answer at all (timeout, reset).
type Answer = Result<(StatusCode, Bytes), String>;

/// What the user knows of one video.
#[derive(Debug, Clone, Default)]
pub struct Video {
    /// The title last acknowledged.
    pub title: String,
    /// Titles sent without a clear answer (each may have landed).
    pub maybe_titles: Vec<String>,
    /// Deletion acknowledged.
    pub deleted: bool,
    /// A delete sent without a clear answer.
    pub maybe_deleted: bool,
    /// Every title it was ever given or sent (a read during faults may be
    /// stale, never made up).
    pub history: Vec<String>,
}

impl Video {
    /// A settled read shows the last acknowledged title, or one sent
    /// without a clear answer.
    fn title_possible(&self, title: &str) -> bool {
        self.title == title || self.maybe_titles.iter().any(|t| t == title)
    }
}

/// The user and its model of the catalog.
pub struct User {
    tl: Timeline,
    gateways: Vec<SocketAddr>,
    token: String,
    /// Acknowledged uploads.
    pub videos: BTreeMap<String, Video>,
    /// Uploads sent without a clear answer.
    pub maybe_uploads: u32,
    /// Requests answered 5xx, 429 or not at all.
    pub unclear: u32,
    /// Requests answered as the model predicts.
    pub ok: u32,
    n: u32,
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or(Value::Null)
}

/// Whether `answer` refuses a request for the gateway's load (its budget of
/// requests in flight, or a client's share of it), not for a fault.
pub fn refused_for_load(answer: &Answer) -> bool {
    match answer {
        Ok((s, body))
            if *s == StatusCode::SERVICE_UNAVAILABLE || *s == StatusCode::TOO_MANY_REQUESTS =>
        {
            json(body)["error"]
                .as_str()
                .is_some_and(|e| e.contains("in flight"))
        }
        _ => false,
    }
}

/// Whether an answer leaves the outcome unknown (the request may or may not
/// have taken effect): no answer, a 5xx, or shed load.
fn unclear(answer: &Answer) -> bool {
    match answer {
        Err(_) => true,
        Ok((s, _)) => s.is_server_error() || *s == StatusCode::TOO_MANY_REQUESTS,
    }
}

impl User {
    async fn send(&self, method: Method, path: &str, body: Bytes, content_type: &str) -> Answer {
        let gateway = *self.gateways.choose(&mut rt::rng()).expect("a gateway");
        let mut req = http::Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = format!("http://{gateway}{path}")
            .parse()
            .map_err(|e| format!("{e}"))?;
        let h = req.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            content_type.parse().expect("type"),
        );
        if !self.token.is_empty() {
            h.insert(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token).parse().expect("token"),
            );
        }
        let answer = match rt::timeout(REQUEST_TIMEOUT, SimTransport.send(req, BODY_LIMIT)).await {
            Ok(Ok(res)) => Ok((res.status(), res.into_body())),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("timed out".to_owned()),
        };
        rt::coverage::hit(super::coverage::NOT_REFUSED);
        if refused_for_load(&answer) {
            self.wrong(
                &format!("{path}: refused for load the user did not cause"),
                &answer,
            );
        }
        answer
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, Bytes::new(), "text/plain")
            .await
    }

    /// Signs up (retrying while the cluster starts or a fault hides it).
    pub async fn sign_up(tl: Timeline, gateways: Vec<SocketAddr>, deadline: Duration) -> Self {
        let mut user = Self {
            tl,
            gateways,
            token: String::new(),
            videos: BTreeMap::new(),
            maybe_uploads: 0,
            unclear: 0,
            ok: 0,
            n: 0,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            // A fresh email each try: an unclear sign-up may have landed.
            let body = format!(
                r#"{{"email":"user{attempt}@example.com","password":"correct horse battery"}}"#
            );
            let answer = user
                .send(
                    Method::POST,
                    "/v1/auth/signup",
                    body.into(),
                    "application/json",
                )
                .await;
            match &answer {
                Ok((StatusCode::CREATED, body)) => {
                    user.token = json(body)["access_token"]
                        .as_str()
                        .expect("an access token")
                        .to_owned();
                    user.tl.record("client", Kind::Call, "signed up");
                    return user;
                }
                a if unclear(a) => {
                    assert!(
                        user.tl.elapsed() < deadline,
                        "could not sign up by {deadline:?}: {a:?}"
                    );
                    rt::sleep(Duration::from_millis(500)).await;
                }
                Ok((s, b)) => user.tl.violated(
                    "client",
                    format_args!("sign-up answered {s}: {}", String::from_utf8_lossy(b)),
                ),
                Err(_) => unreachable!("an error is unclear"),
            }
        }
    }

    fn record(&self, what: &str, answer: &Answer) {
        let outcome = match answer {
            Ok((s, _)) if s.is_success() => s.to_string(),
            Ok((s, b)) => format!("{s} {}", String::from_utf8_lossy(&b[..b.len().min(160)])),
            Err(e) => format!("no answer: {e}"),
        };
        self.tl
            .record("client", Kind::Call, format_args!("{what}: {outcome}"));
    }

    fn wrong(&self, what: &str, answer: &Answer) -> ! {
        let text = match answer {
            Ok((s, b)) => format!("{s} {}", String::from_utf8_lossy(b)),
            Err(e) => e.clone(),
        };
        self.tl
            .violated("client", format_args!("{what}: unexpected answer {text}"))
    }

    fn pick(&self) -> Option<String> {
        let ids: Vec<&String> = self.videos.keys().collect();
        ids.choose(&mut rt::rng()).map(|s| (*s).clone())
    }

    /// One random action, its answer checked against the model.
    pub async fn act(&mut self) {
        self.n += 1;
        let roll = rt::rng().gen_range(0..100);
        let Some(id) = self
            .pick()
            .filter(|_| roll >= 20 || self.videos.len() >= MAX_UPLOADS)
        else {
            if self.videos.len() + (self.maybe_uploads as usize) < MAX_UPLOADS {
                self.upload().await;
            }
            return;
        };
        match roll {
            20..=54 => self.read(&id).await,
            55..=69 => self.rename(&id).await,
            70..=74 => self.delete(&id).await,
            75..=89 => self.watch(&id).await,
            _ => self.job(&id).await,
        }
    }

    async fn upload(&mut self) {
        let size = rt::rng().gen_range(1_000..60_000);
        let data = vec![u8::try_from(self.n % 251).expect("small"); size];
        let title = format!("t{}", self.n);
        let path = format!("/v1/videos?name=clip{}.mp4&title={title}", self.n);
        let answer = self
            .send(Method::POST, &path, data.into(), "video/mp4")
            .await;
        self.record("upload", &answer);
        match &answer {
            Ok((StatusCode::CREATED, body)) => {
                let id = json(body)["video_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if id.len() < 8 {
                    self.wrong("upload", &answer);
                }
                self.tl
                    .record("client", Kind::Call, format_args!("uploaded {}", &id[..8]));
                self.videos.insert(
                    id,
                    Video {
                        history: vec![title.clone()],
                        title,
                        ..Video::default()
                    },
                );
                self.ok += 1;
            }
            a if unclear(a) => {
                self.maybe_uploads += 1;
                self.unclear += 1;
            }
            _ => self.wrong("upload", &answer),
        }
    }

    async fn read(&mut self, id: &str) {
        let answer = self.get(&format!("/v1/videos/{id}")).await;
        self.record(&format!("get {}", &id[..8]), &answer);
        let v = &self.videos[id];
        match &answer {
            Ok((StatusCode::OK, body)) => {
                let j = json(body);
                let title = j["title"].as_str().unwrap_or_default();
                let state = j["state"].as_str().unwrap_or_default();
                if !v.history.iter().any(|t| t == title)
                    || !["uploaded", "transcoding", "ready", "failed"].contains(&state)
                {
                    self.wrong(&format!("get {id}"), &answer);
                }
                self.ok += 1;
            }
            Ok((StatusCode::NOT_FOUND, _)) if v.deleted || v.maybe_deleted => self.ok += 1,
            a if unclear(a) => self.unclear += 1,
            _ => self.wrong(&format!("get {id}"), &answer),
        }
    }

    async fn rename(&mut self, id: &str) {
        let title = format!("r{}", self.n);
        let body = format!(r#"{{"title":"{title}"}}"#);
        let answer = self
            .send(
                Method::PATCH,
                &format!("/v1/videos/{id}"),
                body.into(),
                "application/json",
            )
            .await;
        self.record(&format!("rename {} to {title}", &id[..8]), &answer);
        let v = self.videos.get_mut(id).expect("known");
        v.history.push(title.clone());
        match &answer {
            Ok((StatusCode::OK, _)) if !v.deleted => {
                v.title = title;
                self.ok += 1;
            }
            Ok((StatusCode::NOT_FOUND, _)) if v.deleted || v.maybe_deleted => self.ok += 1,
            a if unclear(a) => {
                v.maybe_titles.push(title);
                self.unclear += 1;
            }
            _ => self.wrong(&format!("rename {id}"), &answer),
        }
    }

    async fn delete(&mut self, id: &str) {
        let answer = self
            .send(
                Method::DELETE,
                &format!("/v1/videos/{id}"),
                Bytes::new(),
                "text/plain",
            )
            .await;
        self.record(&format!("delete {}", &id[..8]), &answer);
        let v = self.videos.get_mut(id).expect("known");
        match &answer {
            Ok((s, _)) if s.is_success() => {
                v.deleted = true;
                self.ok += 1;
            }
            Ok((StatusCode::NOT_FOUND, _)) if v.deleted || v.maybe_deleted => {
                v.deleted = true;
                self.ok += 1;
            }
            a if unclear(a) => {
                v.maybe_deleted = true;
                self.unclear += 1;
            }
            _ => self.wrong(&format!("delete {id}"), &answer),
        }
    }

    async fn watch(&mut self, id: &str) {
        let path = format!("/v1/videos/{id}/hls/master.m3u8");
        let answer = self.get(&path).await;
        self.record(&format!("watch {}", &id[..8]), &answer);
        let v = &self.videos[id];
        match &answer {
            Ok((StatusCode::OK, body)) if body.starts_with(b"#EXTM3U") => self.ok += 1,
            // Not ready yet (or transcoding failed).
            Ok((StatusCode::CONFLICT, _)) => self.ok += 1,
            Ok((StatusCode::NOT_FOUND, _)) if v.deleted || v.maybe_deleted => self.ok += 1,
            a if unclear(a) => self.unclear += 1,
            _ => self.wrong(&format!("watch {id}"), &answer),
        }
        self.session(id).await;
    }

    /// A viewing session: started (the original exists, so 201 unless the
    /// video is gone), then stopped. A stop may find no session (404) when
    /// the streaming instance that owns the video changed in between (a
    /// crash, or an instance leaving or joining the registry); any other
    /// refusal is wrong.
    async fn session(&mut self, id: &str) {
        let sessions = format!("/v1/videos/{id}/sessions");
        let answer = self
            .send(Method::POST, &sessions, Bytes::new(), "application/json")
            .await;
        self.record(&format!("session on {}", &id[..8]), &answer);
        let v = &self.videos[id];
        let session = match &answer {
            Ok((StatusCode::CREATED, body)) => {
                let j = json(body);
                match j["session_id"].as_str() {
                    Some(s) if j["started_at_ms"].is_i64() => s.to_owned(),
                    _ => self.wrong(&format!("session on {id}"), &answer),
                }
            }
            Ok((StatusCode::NOT_FOUND, _)) if v.deleted || v.maybe_deleted => {
                self.ok += 1;
                return;
            }
            a if unclear(a) => {
                self.unclear += 1;
                return;
            }
            _ => self.wrong(&format!("session on {id}"), &answer),
        };
        self.ok += 1;
        let stop = format!("{sessions}/{session}/stop");
        let body = r#"{"bytes_served":1000,"watched_ms":2000}"#;
        let answer = self
            .send(Method::POST, &stop, body.into(), "application/json")
            .await;
        self.record(&format!("session stop on {}", &id[..8]), &answer);
        match &answer {
            Ok((StatusCode::OK, body)) if json(body)["duration_ms"].is_u64() => self.ok += 1,
            Ok((StatusCode::NOT_FOUND, _)) => self.ok += 1,
            a if unclear(a) => self.unclear += 1,
            _ => self.wrong(&format!("session stop on {id}"), &answer),
        }
    }

    async fn job(&mut self, id: &str) {
        let path = format!("/v1/videos/{id}/job");
        let answer = self.get(&path).await;
        self.record(&format!("job of {}", &id[..8]), &answer);
        match &answer {
            Ok((StatusCode::OK, body)) if json(body)["state"].is_string() => self.ok += 1,
            // No job yet: the FileUploaded event may be lost until the
            // worker's sweep resubmits it.
            Ok((StatusCode::NOT_FOUND, _)) => self.ok += 1,
            a if unclear(a) => self.unclear += 1,
            _ => self.wrong(&format!("job of {id}"), &answer),
        }
    }

    /// Whether video `id` has settled as the model requires; `Err` says
    /// what is still missing (a wrong settled answer is a violation).
    pub async fn settled(&self, id: &str) -> Result<(), String> {
        let v = &self.videos[id];
        let answer = self.get(&format!("/v1/videos/{id}")).await;
        match &answer {
            Ok((StatusCode::NOT_FOUND, _)) if v.deleted || v.maybe_deleted => return Ok(()),
            Ok((StatusCode::OK, _)) if v.deleted => {
                return Err("deleted, still served".to_owned());
            }
            Ok((StatusCode::OK, body)) => {
                let j = json(body);
                let title = j["title"].as_str().unwrap_or_default();
                if !v.title_possible(title) {
                    return Err(format!("title {title:?}, expected {:?}", v.title));
                }
                match j["state"].as_str().unwrap_or_default() {
                    "ready" => {}
                    "failed" => {
                        let job = self.get(&format!("/v1/videos/{id}/job")).await;
                        return match &job {
                            Ok((StatusCode::OK, b)) if json(b)["state"] == "dead_letter" => Ok(()),
                            _ => Err("failed, job not given up yet".to_owned()),
                        };
                    }
                    s => return Err(format!("still {s}")),
                }
            }
            a if unclear(a) => return Err(format!("{a:?}")),
            _ => self.wrong(&format!("settled {id}"), &answer),
        }
        let path = format!("/v1/videos/{id}/hls/master.m3u8");
        match self.get(&path).await {
            Ok((StatusCode::OK, body)) if body.starts_with(b"#EXTM3U") => {}
            other => return Err(format!("ready, master playlist {other:?}")),
        }
        // The transcoder model's thumbnail: a JPEG's first marker.
        let path = format!("/v1/videos/{id}/thumbnail.jpg");
        match self.get(&path).await {
            Ok((StatusCode::OK, body)) if body.starts_with(&[0xff, 0xd8]) => Ok(()),
            other => Err(format!("ready, thumbnail {other:?}")),
        }
    }

    /// The catalog as listed: every id, known or not.
    pub async fn listed(&self) -> Result<Vec<String>, String> {
        let answer = self.get("/v1/videos?page_size=100").await;
        match &answer {
            Ok((StatusCode::OK, body)) => Ok(json(body)["videos"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v["id"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()),
            other => Err(format!("{other:?}")),
        }
    }
}
