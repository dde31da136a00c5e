//! Query strings: `application/x-www-form-urlencoded` pairs, percent-decoded,
//! from a string already bounded by the router's limit.

use super::error::ApiError;

/// Longest query string accepted.
pub const MAX_QUERY_BYTES: usize = 2048;

/// The decoded pairs of a query string.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Query(Vec<(String, String)>);

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

impl Query {
    /// Parses `query` (without the `?`).
    ///
    /// # Errors
    /// 400 for a bad percent escape or a value that is not UTF-8.
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut pairs = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match (decode(k), decode(v)) {
                (Some(k), Some(v)) => pairs.push((k, v)),
                _ => return Err(ApiError::bad_request("query: malformed percent-encoding")),
            }
        }
        Ok(Self(pairs))
    }

    /// The first value of `key`.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `key` as a number; absent is `None`.
    ///
    /// # Errors
    /// 400 when it is not a number (an empty value is not one either).
    pub fn number<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("{key}: expected a number"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_decoded() {
        let q = Query::parse(Some(
            "name=my%20clip.mp4&title=Hello+w%C3%B6rld&flag&&page_size=5",
        ))
        .expect("parses");
        assert_eq!(q.get("name"), Some("my clip.mp4"));
        assert_eq!(q.get("title"), Some("Hello wörld"));
        assert_eq!(q.get("flag"), Some(""));
        assert_eq!(q.number::<u32>("page_size").expect("number"), Some(5));
        assert_eq!(q.number::<u32>("missing").expect("absent"), None);
        assert!(q.number::<u32>("name").is_err());
        // Empty is not a number (schemathesis found it read as absent).
        assert!(q.number::<u32>("flag").is_err());
        assert_eq!(Query::parse(None).expect("empty"), Query::default());
        for bad in ["a=%", "a=%zz", "a=%+1", "a=%c3", "%ff=1", "a=%2"] {
            assert!(Query::parse(Some(bad)).is_err(), "{bad}");
        }
    }
}
