//! streaming (9093): byte ranges of originals and HLS playlists and segments from the blob store.

use crate::kernel::{KernelError, Runtime};
use crate::services::{Domain, ServiceOpts};

/// The service's routes and background work.
///
/// # Errors
/// Its store cannot be opened.
#[allow(clippy::unused_async)]
pub async fn domain(_opts: &ServiceOpts, _rt: &Runtime) -> Result<Domain, KernelError> {
    Ok(Domain::default())
}
