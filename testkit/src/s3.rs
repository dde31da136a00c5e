//! The S3-compatible server the tests use: Garage, which ci/garage starts
//! and whose endpoint and credentials it writes to `$STREAMGATE_TEST_S3_ENV`
//! (default `/var/cache/streamgate/garage/s3.env`, `KEY=value` lines).

use std::collections::BTreeMap;

use streamgate::blob::s3::S3Config;

/// The settings ci/garage wrote, with blobs under `prefix` of its bucket.
///
/// # Panics
/// The file is missing or incomplete: the server is needed, and a test
/// that needs it fails, never skips.
#[must_use]
pub fn garage(prefix: &str) -> S3Config {
    let path = std::env::var("STREAMGATE_TEST_S3_ENV")
        .unwrap_or_else(|_| "/var/cache/streamgate/garage/s3.env".to_owned());
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("{path}: {e}; an S3-compatible server is needed (ci/garage starts Garage)")
    });
    let vars: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let get = |k: &str| -> String {
        (*vars.get(k).unwrap_or_else(|| panic!("{path}: no {k}"))).to_owned()
    };
    S3Config {
        bucket: get("S3_BUCKET"),
        prefix: prefix.to_owned(),
        endpoint: Some(get("S3_ENDPOINT")),
        region: get("S3_REGION"),
        access_key_id: get("S3_ACCESS_KEY_ID"),
        secret_access_key: get("S3_SECRET_ACCESS_KEY"),
    }
}
