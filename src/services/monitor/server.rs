//! MonitorService over gRPC: the platform's status, alerts in pages, a
//! bounded stream of alert changes, and acknowledgement.

use std::pin::Pin;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::Stream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::broadcast::{self, error::RecvError};
use tonic::{Request, Response, Status};

use super::book::{Filter, Record};
use super::error::MonitorError;
use super::health::Severity;
use super::state::Monitor;
use crate::proto::monitor_service_server::MonitorService;
use crate::proto::{
    self, AcknowledgeAlertRequest, AcknowledgeAlertResponse, GetStatusRequest, GetStatusResponse,
    ListAlertsRequest, ListAlertsResponse, WatchAlertsRequest,
};
use crate::rt;
use crate::services::media;

/// Page size when a request says 0.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// Largest page.
pub const MAX_PAGE_SIZE: u32 = 100;
/// Longest acknowledgement note, bytes.
pub const MAX_NOTE: usize = 1024;
/// Longest page token, bytes.
const MAX_TOKEN: usize = 512;

/// The gRPC face of the monitor.
#[derive(Debug, Clone)]
pub struct MonitorServer {
    monitor: Arc<Monitor>,
}

impl MonitorServer {
    /// A server over `monitor`.
    #[must_use]
    pub fn new(monitor: Arc<Monitor>) -> Self {
        Self { monitor }
    }
}

/// The page token continuing before `seq`.
fn token(seq: u64) -> String {
    URL_SAFE_NO_PAD.encode(format!("alert:{seq}"))
}

fn parse_token(token: &str) -> Result<Option<u64>, MonitorError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || MonitorError::Invalid("page_token: not a token from this service".into());
    if token.len() > MAX_TOKEN {
        return Err(bad());
    }
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = std::str::from_utf8(&raw).map_err(|_| bad())?;
    let seq = text
        .strip_prefix("alert:")
        .and_then(|n| n.parse().ok())
        .ok_or_else(bad)?;
    Ok(Some(seq))
}

fn severity(raw: i32) -> Result<Option<Severity>, MonitorError> {
    Severity::filter(raw).map_err(MonitorError::Invalid)
}

/// What a watch stream carries between items.
struct Watch {
    rx: broadcast::Receiver<Record>,
    /// Firing alerts to send before live changes.
    backlog: std::vec::IntoIter<Record>,
    min_severity: Option<Severity>,
    service: String,
    until: rt::Instant,
    done: bool,
    _permit: OwnedSemaphorePermit,
}

impl Watch {
    fn wants(&self, r: &Record) -> bool {
        self.min_severity.is_none_or(|m| r.severity >= m)
            && (self.service.is_empty() || self.service == r.service)
    }
}

/// The next item of a watch, `None` when it ends.
async fn next_alert(mut w: Watch) -> Option<(Result<proto::Alert, Status>, Watch)> {
    if w.done {
        return None;
    }
    while let Some(r) = w.backlog.next() {
        if w.wants(&r) {
            return Some((Ok(r.to_proto()), w));
        }
    }
    loop {
        let end = match rt::timeout_at(w.until, w.rx.recv()).await {
            Ok(Ok(r)) if w.wants(&r) => return Some((Ok(r.to_proto()), w)),
            Ok(Ok(_)) => continue,
            Ok(Err(RecvError::Lagged(n))) => MonitorError::FellBehind(n),
            Ok(Err(RecvError::Closed)) => return None,
            Err(rt::Elapsed) => MonitorError::WatchEnded,
        };
        w.done = true;
        return Some((Err(end.into()), w));
    }
}

type AlertStream = Pin<Box<dyn Stream<Item = Result<proto::Alert, Status>> + Send>>;

#[tonic::async_trait]
impl MonitorService for MonitorServer {
    async fn get_status(
        &self,
        _req: Request<GetStatusRequest>,
    ) -> Result<Response<GetStatusResponse>, Status> {
        Ok(Response::new(self.monitor.status()))
    }

    async fn list_alerts(
        &self,
        req: Request<ListAlertsRequest>,
    ) -> Result<Response<ListAlertsResponse>, Status> {
        let req = req.into_inner();
        let limit = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(
                    MonitorError::Invalid(format!("page_size: above {MAX_PAGE_SIZE}")).into(),
                );
            }
            n => n,
        };
        let filter = Filter {
            include_resolved: req.include_resolved,
            min_severity: severity(req.min_severity)?,
        };
        let before = parse_token(&req.page_token)?;
        let (alerts, next) = self.monitor.alerts(filter, before, limit as usize);
        Ok(Response::new(ListAlertsResponse {
            alerts,
            next_page_token: next.map(token).unwrap_or_default(),
        }))
    }

    type WatchAlertsStream = AlertStream;

    async fn watch_alerts(
        &self,
        req: Request<WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        let req = req.into_inner();
        let min_severity = severity(req.min_severity)?;
        if !req.service_name.is_empty() {
            media::check_id("service_name", &req.service_name).map_err(MonitorError::Invalid)?;
        }
        let (permit, rx, firing) = self.monitor.watch().ok_or(MonitorError::TooManyWatches)?;
        let backlog = if req.include_existing {
            firing
        } else {
            Vec::new()
        };
        let watch = Watch {
            rx,
            backlog: backlog.into_iter(),
            min_severity,
            service: req.service_name,
            until: rt::now() + self.monitor.config().max_watch,
            done: false,
            _permit: permit,
        };
        Ok(Response::new(Box::pin(futures::stream::unfold(
            watch, next_alert,
        ))))
    }

    async fn acknowledge_alert(
        &self,
        req: Request<AcknowledgeAlertRequest>,
    ) -> Result<Response<AcknowledgeAlertResponse>, Status> {
        let req = req.into_inner();
        media::check_id("alert_id", &req.alert_id).map_err(MonitorError::Invalid)?;
        media::check_id("acknowledged_by", &req.acknowledged_by).map_err(MonitorError::Invalid)?;
        if req.note.len() > MAX_NOTE {
            return Err(MonitorError::Invalid(format!("note: exceeds {MAX_NOTE} bytes")).into());
        }
        let alert = self
            .monitor
            .acknowledge(&req.alert_id, &req.acknowledged_by)
            .map_err(MonitorError::from)?;
        if !req.note.is_empty() {
            tracing::info!(alert = %req.alert_id, by = %req.acknowledged_by, note = %req.note, "alert acknowledged");
        }
        Ok(Response::new(AcknowledgeAlertResponse {
            alert: Some(alert),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::monitor::Config;
    use crate::services::monitor::state::Observation;
    use futures::StreamExt as _;
    use std::time::Duration;

    fn down(service: &str) -> Observation {
        Observation {
            service: service.into(),
            instances: 1,
            serving: 0,
            breakers: Vec::new(),
        }
    }

    fn server(cfg: Config) -> (Arc<Monitor>, MonitorServer) {
        let monitor = Arc::new(Monitor::new(cfg));
        (monitor.clone(), MonitorServer::new(monitor))
    }

    #[test]
    fn tokens_round_trip_and_foreign_ones_are_refused() {
        assert_eq!(parse_token(&token(42)), Ok(Some(42)));
        assert_eq!(parse_token(""), Ok(None));
        for bad in [
            "x",
            "!!!",
            &URL_SAFE_NO_PAD.encode("seq:1"),
            &"A".repeat(600),
        ] {
            assert!(parse_token(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn lists_in_pages_and_acknowledges_idempotently() {
        let (monitor, server) = server(Config::default());
        for _ in 0..2 {
            monitor.apply(["cache", "auth", "upload"].map(down).to_vec());
        }
        let page = |token: String| ListAlertsRequest {
            page_size: 2,
            page_token: token,
            include_resolved: true,
            min_severity: proto::AlertSeverity::Critical.into(),
        };
        let first = server
            .list_alerts(Request::new(page(String::new())))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(first.alerts.len(), 2);
        assert!(!first.next_page_token.is_empty());
        let second = server
            .list_alerts(Request::new(page(first.next_page_token)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(second.alerts.len(), 1);
        assert!(second.next_page_token.is_empty());

        let too_big = ListAlertsRequest {
            page_size: 101,
            ..ListAlertsRequest::default()
        };
        let err = server.list_alerts(Request::new(too_big)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);

        let id = first.alerts[0].id.clone();
        let ack = |by: &str| AcknowledgeAlertRequest {
            alert_id: id.clone(),
            acknowledged_by: by.into(),
            note: String::new(),
        };
        let a = server
            .acknowledge_alert(Request::new(ack("ops")))
            .await
            .unwrap()
            .into_inner();
        let b = server
            .acknowledge_alert(Request::new(ack("bob")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(a.alert, b.alert, "idempotent");
        assert_eq!(a.alert.unwrap().acknowledged_by, "ops");
        let missing = AcknowledgeAlertRequest {
            alert_id: "nope".into(),
            ..ack("ops")
        };
        let err = server
            .acknowledge_alert(Request::new(missing))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        let bad = AcknowledgeAlertRequest {
            acknowledged_by: String::new(),
            ..ack("ops")
        };
        let err = server
            .acknowledge_alert(Request::new(bad))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test(start_paused = true)]
    async fn watches_send_existing_then_live_changes_and_end() {
        let cfg = Config {
            max_watchers: 1,
            max_watch: Duration::from_secs(60),
            ..Config::default()
        };
        let (monitor, server) = server(cfg);
        for _ in 0..2 {
            monitor.apply(vec![down("cache")]);
        }
        let req = WatchAlertsRequest {
            min_severity: 0,
            service_name: "auth".into(),
            include_existing: true,
        };
        let mut stream = server
            .watch_alerts(Request::new(req))
            .await
            .unwrap()
            .into_inner();
        let second = server
            .watch_alerts(Request::new(WatchAlertsRequest::default()))
            .await
            .err()
            .map(|s| s.code());
        assert_eq!(second, Some(tonic::Code::ResourceExhausted));
        for _ in 0..2 {
            monitor.apply(vec![down("auth")]);
        }
        let got = stream.next().await.unwrap().unwrap();
        assert_eq!(
            (got.service_name.as_str(), got.state),
            ("auth", proto::AlertState::Firing as i32)
        );
        let end = stream.next().await.unwrap().unwrap_err();
        assert_eq!(end.code(), tonic::Code::DeadlineExceeded);
        assert!(stream.next().await.is_none());
    }
}
