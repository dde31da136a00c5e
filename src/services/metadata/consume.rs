//! The pipeline events the catalog follows: Transcoding{Started,Completed,
//! Failed} move a video through its states, each event applied once.

use std::sync::Arc;

use super::catalog::Catalog;
use super::server::{announce, video_state};
use super::state::Step;
use crate::bus::events::{
    MetadataUpdated, Payload, TranscodingCompleted, TranscodingFailed, TranscodingStarted,
};
use crate::bus::{BusError, Event, EventBus, EventType, HandlerResult, Subscription, handler};
use crate::proto::{Rendition, Video};
use crate::rt;
use crate::services::media;

/// What a completed transcode writes into the video record.
type Fill = Box<dyn FnOnce(&mut Video) + Send>;

/// Queue group of the catalog's consumers: one instance applies each event.
pub const GROUP: &str = "metadata";

/// The renditions named by a completed transcode (unknown names skipped).
fn renditions(video_id: &str, names: &[String]) -> Vec<Rendition> {
    names
        .iter()
        .filter_map(|name| {
            let p = media::profile(name)?;
            Some(Rendition {
                name: name.clone(),
                width: p.width,
                height: p.height,
                bitrate_kbps: p.video_kbps,
                playlist_key: media::playlist_key(video_id, name),
            })
        })
        .collect()
}

/// Applies one event to the store; publishes MetadataUpdated on a change.
///
/// # Errors
/// The event does not decode, or the store failed (the bus may redeliver).
pub async fn apply(store: &Catalog, bus: &Arc<dyn EventBus>, event: Event) -> HandlerResult {
    let (video_id, step, fill): (String, Step, Fill) = match event.kind {
        EventType::TranscodingStarted => {
            let p = TranscodingStarted::from_event(&event)?;
            (p.video_id, Step::Started, Box::new(|_| {}))
        }
        EventType::TranscodingCompleted => {
            let p = TranscodingCompleted::from_event(&event)?;
            let list = renditions(&p.video_id, &p.renditions);
            let thumb = p.thumbnail_key.unwrap_or_default();
            let duration = p.duration_ms;
            (
                p.video_id,
                Step::Completed,
                Box::new(move |v: &mut Video| {
                    v.renditions = list;
                    v.duration_ms = duration;
                    v.thumbnail_key = thumb;
                }),
            )
        }
        EventType::TranscodingFailed => {
            let p = TranscodingFailed::from_event(&event)?;
            (p.video_id, Step::Failed(p.reason), Box::new(|_| {}))
        }
        other => return Err(BusError::Malformed(format!("unexpected {other:?}")).into()),
    };
    if !media::is_id(&video_id) {
        return Err(BusError::Malformed("video_id is not an id".into()).into());
    }
    let event_id = event.id.clone();
    let now = rt::unix_ms();
    let changed = store
        .apply(event_id, video_id, now, step, fill)
        .await
        .map_err(super::MetadataError::from)?;
    if let Some(v) = changed {
        tracing::info!(video = %v.id, state = video_state(&v), "video state changed");
        announce(
            bus,
            &MetadataUpdated {
                video_id: v.id.clone(),
                fields: vec!["state".into()],
                state: video_state(&v).to_owned(),
            },
        )
        .await;
    }
    Ok(())
}

/// Subscribes the catalog to the three transcoding events.
///
/// # Errors
/// The bus refused a subscription.
pub async fn subscribe(
    store: &Catalog,
    bus: &Arc<dyn EventBus>,
) -> Result<Vec<Subscription>, BusError> {
    let mut subs = Vec::new();
    for kind in [
        EventType::TranscodingStarted,
        EventType::TranscodingCompleted,
        EventType::TranscodingFailed,
    ] {
        let (store, publish) = (store.clone(), bus.clone());
        let h = handler(move |event| {
            let (store, bus) = (store.clone(), publish.clone());
            async move { apply(&store, &bus, event).await }
        });
        subs.push(bus.subscribe(kind.subject(), Some(GROUP), h).await?);
    }
    Ok(subs)
}
