//! Text helpers shared by the services.

/// The longest prefix of `s` of at most `max` bytes that ends on a character
/// boundary (what every length limit on free text cuts to).
#[must_use]
pub fn prefix(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `url` with its password replaced by `***`, for logs and printed
/// options: the `user:password@` of a URL (`postgres://u:pw@host/db`), or
/// a `password=...` pair of a libpq `key=value` string.
#[must_use]
pub fn redact_password(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            let head = scheme_end + 3 + colon + 1;
            return format!("{}***{}", &url[..head], &url[scheme_end + 3 + at..]);
        }
        return url.to_owned();
    }
    url.split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some(("password", _)) => "password=***".to_owned(),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Serialises `bytes` as one base64 string (serde's `serialize_with`).
///
/// # Errors
/// The serializer's.
pub fn base64_serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    use base64::Engine as _;
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Reads the bytes [`base64_serialize`] wrote.
///
/// # Errors
/// Not a string, or not base64.
pub fn base64_deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    use base64::Engine as _;
    use serde::Deserialize as _;
    let text = String::deserialize(d)?;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(serde::de::Error::custom)
}

/// A protobuf message on a JSON wire: its encoding, in base64 (the
/// simulator's modelled servers carry videos and records so).
#[derive(Debug, Clone, PartialEq)]
pub struct Base64Proto<M>(pub M);

impl<M: prost::Message> serde::Serialize for Base64Proto<M> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        base64_serialize(&self.0.encode_to_vec(), s)
    }
}

impl<'de, M: prost::Message + Default> serde::Deserialize<'de> for Base64Proto<M> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = base64_deserialize(d)?;
        M::decode(bytes.as_slice())
            .map(Base64Proto)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_password("postgres://sg:hunter2@db:5432/sg?sslmode=disable"),
            "postgres://sg:***@db:5432/sg?sslmode=disable"
        );
        assert_eq!(
            redact_password("postgres://sg@db/sg"),
            "postgres://sg@db/sg"
        );
        assert_eq!(
            redact_password("postgres://a:b:c@d@db/x"),
            "postgres://a:***@db/x"
        );
        assert_eq!(
            redact_password("host=db user=sg password=hunter2 dbname=sg"),
            "host=db user=sg password=*** dbname=sg"
        );
    }
    use proptest::prelude::*;

    #[test]
    fn cuts_on_a_char_boundary() {
        assert_eq!(prefix("héllo", 2), "h");
        assert_eq!(prefix("héllo", 3), "hé");
        assert_eq!(prefix("abc", 5), "abc");
        assert_eq!(prefix("abc", 0), "");
    }

    proptest! {
        #[test]
        fn is_the_longest_prefix_within_the_limit(s in "\\PC{0,40}", max in 0usize..60) {
            let p = prefix(&s, max);
            prop_assert!(s.starts_with(p));
            prop_assert!(p.len() <= max);
            // One more character would pass the limit (or there is none).
            let next = s[p.len()..].chars().next();
            prop_assert!(next.is_none_or(|c| p.len() + c.len_utf8() > max));
        }
    }
}
