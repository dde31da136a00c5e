//! Typed payloads of the 14 event types (ARCHITECTURE.md, "Events"), and
//! publish helpers. `data` in the envelope is one of these, as JSON.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{BusError, Event, EventBus, EventType};

/// A payload type and the event type it belongs to.
pub trait Payload: Serialize + DeserializeOwned {
    /// The event type that carries this payload.
    const KIND: EventType;

    /// Wraps the payload in a new envelope from `source`.
    ///
    /// # Errors
    /// [`BusError::Malformed`] if it does not serialize.
    fn to_event(&self, source: &str) -> Result<Event, BusError> {
        let data = serde_json::to_value(self).map_err(|e| BusError::Malformed(e.to_string()))?;
        Ok(Event::new(Self::KIND, source, data))
    }

    /// The payload of `event`.
    ///
    /// # Errors
    /// [`BusError::Malformed`] if the event is of another type or its data does not fit.
    fn from_event(event: &Event) -> Result<Self, BusError> {
        if event.kind != Self::KIND {
            return Err(BusError::Malformed(format!(
                "expected {:?}, got {:?}",
                Self::KIND,
                event.kind
            )));
        }
        serde_json::from_value(event.data.clone()).map_err(|e| BusError::Malformed(e.to_string()))
    }
}

macro_rules! payloads {
    ($($(#[$doc:meta])* $name:ident => $kind:ident { $($(#[$fdoc:meta])* $field:ident : $ty:ty),* $(,)? })*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
            #[serde(deny_unknown_fields)]
            pub struct $name { $($(#[$fdoc])* pub $field: $ty),* }
            impl Payload for $name { const KIND: EventType = EventType::$kind; }
        )*
    };
}

payloads! {
    /// An upload was stored.
    FileUploaded => FileUploaded {
        /// The video.
        video_id: String,
        /// Blob key of the original.
        blob_key: String,
        /// Its size.
        size_bytes: u64,
        /// Its content type (`video/*`).
        content_type: String,
        /// Hex SHA-256 of the bytes.
        sha256_hex: String,
    }
    /// A transcode began.
    TranscodingStarted => TranscodingStarted {
        /// The video.
        video_id: String,
        /// The job running it.
        job_id: String,
        /// Renditions being produced (e.g. `480p`).
        renditions: Vec<String>,
    }
    /// A transcode produced its renditions.
    TranscodingCompleted => TranscodingCompleted {
        /// The video.
        video_id: String,
        /// The job that ran it.
        job_id: String,
        /// Renditions produced.
        renditions: Vec<String>,
        /// Duration of the video.
        duration_ms: u64,
        /// Blob key of the thumbnail, if one was made.
        thumbnail_key: Option<String>,
    }
    /// A transcode failed.
    TranscodingFailed => TranscodingFailed {
        /// The video.
        video_id: String,
        /// The job that ran it.
        job_id: String,
        /// Why, for people.
        reason: String,
    }
    /// A viewer started a stream.
    StreamingStarted => StreamingStarted {
        /// The video.
        video_id: String,
        /// The session.
        session_id: String,
        /// The rendition, or `original`.
        rendition: String,
    }
    /// A viewer stopped a stream.
    StreamingStopped => StreamingStopped {
        /// The video.
        video_id: String,
        /// The session.
        session_id: String,
        /// Bytes served in the session.
        bytes_served: u64,
    }
    /// A video record was created.
    MetadataCreated => MetadataCreated {
        /// The video.
        video_id: String,
        /// Its owner.
        owner_id: String,
        /// Its title.
        title: String,
    }
    /// A video record changed.
    MetadataUpdated => MetadataUpdated {
        /// The video.
        video_id: String,
        /// Names of the fields that changed.
        fields: Vec<String>,
        /// The state after the change (`uploaded`, `transcoding`, `ready`, `failed`).
        state: String,
    }
    /// A video record was deleted.
    MetadataDeleted => MetadataDeleted {
        /// The video.
        video_id: String,
    }
    /// A job entered the queue.
    JobSubmitted => JobSubmitted {
        /// The job.
        job_id: String,
        /// Its kind (e.g. `transcode`).
        kind: String,
        /// The video it works on, if any.
        video_id: Option<String>,
    }
    /// A job finished.
    JobCompleted => JobCompleted {
        /// The job.
        job_id: String,
        /// Its kind.
        kind: String,
        /// Attempts it took.
        attempts: u32,
    }
    /// A job attempt failed.
    JobFailed => JobFailed {
        /// The job.
        job_id: String,
        /// Its kind.
        kind: String,
        /// Attempts so far.
        attempts: u32,
        /// Why.
        reason: String,
        /// Whether it went to the dead-letter state (no more retries).
        dead_letter: bool,
    }
    /// The monitor raised an alert.
    AlertTriggered => AlertTriggered {
        /// The alert.
        alert_id: String,
        /// The service concerned.
        service_name: String,
        /// `info`, `warning` or `critical`.
        severity: String,
        /// What happened.
        summary: String,
    }
    /// The monitor cleared an alert.
    AlertResolved => AlertResolved {
        /// The alert.
        alert_id: String,
        /// The service concerned.
        service_name: String,
    }
}

/// Publishes `payload` from `source`; returns the event sent (its id for dedup).
///
/// # Errors
/// As [`EventBus::publish`].
pub async fn publish<P: Payload>(
    bus: &dyn EventBus,
    source: &str,
    payload: &P,
) -> Result<Event, BusError> {
    let event = payload.to_event(source)?;
    bus.publish(&event).await?;
    Ok(event)
}

/// Publishes [`FileUploaded`].
///
/// # Errors
/// As [`EventBus::publish`].
pub async fn publish_file_uploaded(
    bus: &dyn EventBus,
    source: &str,
    p: &FileUploaded,
) -> Result<Event, BusError> {
    publish(bus, source, p).await
}

/// Publishes [`TranscodingStarted`].
///
/// # Errors
/// As [`EventBus::publish`].
pub async fn publish_transcoding_started(
    bus: &dyn EventBus,
    source: &str,
    p: &TranscodingStarted,
) -> Result<Event, BusError> {
    publish(bus, source, p).await
}

/// Publishes [`TranscodingCompleted`].
///
/// # Errors
/// As [`EventBus::publish`].
pub async fn publish_transcoding_completed(
    bus: &dyn EventBus,
    source: &str,
    p: &TranscodingCompleted,
) -> Result<Event, BusError> {
    publish(bus, source, p).await
}

/// Publishes [`JobSubmitted`].
///
/// # Errors
/// As [`EventBus::publish`].
pub async fn publish_job_submitted(
    bus: &dyn EventBus,
    source: &str,
    p: &JobSubmitted,
) -> Result<Event, BusError> {
    publish(bus, source, p).await
}

/// Publishes [`JobCompleted`].
///
/// # Errors
/// As [`EventBus::publish`].
pub async fn publish_job_completed(
    bus: &dyn EventBus,
    source: &str,
    p: &JobCompleted,
) -> Result<Event, BusError> {
    publish(bus, source, p).await
}

/// Publishes [`AlertTriggered`].
///
/// # Errors
/// As [`EventBus::publish`].
pub async fn publish_alert_triggered(
    bus: &dyn EventBus,
    source: &str,
    p: &AlertTriggered,
) -> Result<Event, BusError> {
    publish(bus, source, p).await
}

/// Checks that `event`'s data fits its type's payload.
///
/// # Errors
/// [`BusError::Malformed`] naming the problem.
pub fn validate(event: &Event) -> Result<(), BusError> {
    match event.kind {
        EventType::FileUploaded => FileUploaded::from_event(event).map(drop),
        EventType::TranscodingStarted => TranscodingStarted::from_event(event).map(drop),
        EventType::TranscodingCompleted => TranscodingCompleted::from_event(event).map(drop),
        EventType::TranscodingFailed => TranscodingFailed::from_event(event).map(drop),
        EventType::StreamingStarted => StreamingStarted::from_event(event).map(drop),
        EventType::StreamingStopped => StreamingStopped::from_event(event).map(drop),
        EventType::MetadataCreated => MetadataCreated::from_event(event).map(drop),
        EventType::MetadataUpdated => MetadataUpdated::from_event(event).map(drop),
        EventType::MetadataDeleted => MetadataDeleted::from_event(event).map(drop),
        EventType::JobSubmitted => JobSubmitted::from_event(event).map(drop),
        EventType::JobCompleted => JobCompleted::from_event(event).map(drop),
        EventType::JobFailed => JobFailed::from_event(event).map(drop),
        EventType::AlertTriggered => AlertTriggered::from_event(event).map(drop),
        EventType::AlertResolved => AlertResolved::from_event(event).map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::memory::MemoryBus;

    #[test]
    fn envelope_round_trips_with_typed_payload() {
        let p = FileUploaded {
            video_id: "v1".into(),
            blob_key: "blobs/ab/cd".into(),
            size_bytes: 42,
            content_type: "video/mp4".into(),
            sha256_hex: "00".repeat(32),
        };
        let event = p.to_event("upload").unwrap();
        let bytes = event.encode().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        for field in ["id", "type", "source", "time", "data"] {
            assert!(json.get(field).is_some(), "envelope has {field}");
        }
        assert_eq!(json["type"], "file_uploaded");
        let back = Event::decode(&bytes).unwrap();
        assert_eq!(FileUploaded::from_event(&back).unwrap(), p);
        validate(&back).unwrap();
    }

    #[test]
    fn wrong_or_unknown_payloads_are_malformed() {
        let event = Event::new(
            EventType::JobCompleted,
            "worker",
            serde_json::json!({"job_id": "j"}),
        );
        assert!(
            matches!(validate(&event), Err(BusError::Malformed(_))),
            "missing fields"
        );
        assert!(
            matches!(
                JobSubmitted::from_event(&event),
                Err(BusError::Malformed(_))
            ),
            "wrong type"
        );
        let unknown = br#"{"id":"1","type":"file_exploded","source":"x","time":1,"data":{}}"#;
        assert!(matches!(
            Event::decode(unknown),
            Err(BusError::Malformed(_))
        ));
        assert!(matches!(
            Event::decode(&vec![b' '; crate::bus::MAX_EVENT_BYTES + 1]),
            Err(BusError::TooLarge(_))
        ));
    }

    #[test]
    fn every_type_has_a_distinct_versioned_subject() {
        let mut subjects: Vec<_> = EventType::ALL.iter().map(|k| k.subject()).collect();
        assert!(
            subjects
                .iter()
                .all(|s| s.starts_with("streamgate.v1.") && crate::bus::valid_name(s))
        );
        subjects.sort_unstable();
        subjects.dedup();
        assert_eq!(subjects.len(), 14);
    }

    #[tokio::test]
    async fn helpers_publish_on_the_right_subject() {
        let bus = MemoryBus::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _sub = bus
            .subscribe(
                EventType::JobSubmitted.subject(),
                None,
                crate::bus::handler(move |e| {
                    let tx = tx.clone();
                    async move { tx.send(e).map_err(|e| e.to_string().into()) }
                }),
            )
            .await
            .unwrap();
        let p = JobSubmitted {
            job_id: "j1".into(),
            kind: "transcode".into(),
            video_id: Some("v1".into()),
        };
        let sent = publish_job_submitted(&bus, "worker", &p).await.unwrap();
        let got = rx.recv().await.unwrap();
        assert_eq!(got, sent);
        assert_eq!(JobSubmitted::from_event(&got).unwrap(), p);
    }
}
