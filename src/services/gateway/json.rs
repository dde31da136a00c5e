//! JSON request bodies: read up to [`MAX_JSON_BYTES`], parsed into the
//! route's type, and a refusal that names the field or the problem in the
//! API's words ("body: missing field `email`", "body: title: expected a
//! string, got an integer"), never serde's Rust names ("struct SignUp",
//! "u64").

use axum::body::Body;
use http::StatusCode;
use http_body_util::BodyExt as _;
use serde::de::DeserializeOwned;
use serde_json::error::Category;

use super::deadline::BodyTimedOut;
use super::error::ApiError;

/// Largest JSON request body.
pub const MAX_JSON_BYTES: usize = 64 << 10;

/// Reads a body of at most [`MAX_JSON_BYTES`] (413 beyond, 408 past the
/// router's body deadline, 400 if it fails otherwise).
pub(super) async fn bytes(body: Body) -> Result<bytes::Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, MAX_JSON_BYTES);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body: exceeds {MAX_JSON_BYTES} bytes"),
        )),
        Err(e) => match BodyTimedOut::find(&*e) {
            Some(timed_out) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                timed_out.to_string(),
            )),
            None => {
                tracing::debug!(error = %e, "request body failed");
                Err(ApiError::bad_request("body: incomplete"))
            }
        },
    }
}

/// Reads an optional JSON body: none is `T`'s default, anything else (a
/// lone newline too: it is not JSON) is parsed as [`parse`] does.
pub(super) async fn optional<T: DeserializeOwned + Default>(body: Body) -> Result<T, ApiError> {
    let bytes = bytes(body).await?;
    if bytes.is_empty() {
        Ok(T::default())
    } else {
        parse(&bytes)
    }
}

/// Parses a JSON body into `T` (400 saying what does not fit).
pub(super) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Every body is an object; serde would also take a struct as an array.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        let message = match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Ok(_) => "body: expected a JSON object".to_owned(),
            Err(e) => rejection(".", &e),
        };
        return Err(ApiError::bad_request(message));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| ApiError::bad_request(rejection(&e.path().to_string(), e.inner())))?;
    // Bytes after the value are refused too.
    de.end()
        .map_err(|e| ApiError::bad_request(rejection(".", &e)))?;
    Ok(value)
}

/// For an optional field (`#[serde(default, deserialize_with =
/// "json::present")]`): absent is `None`, a value is `Some`, and `null` is
/// refused (400 naming the field) rather than read as absent, so a client
/// that means "clear it" learns it cannot.
pub(super) fn present<'de, D, T>(de: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(de).map(Some)
}

/// Reads and parses a JSON body of at most [`MAX_JSON_BYTES`].
pub(super) async fn body<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    parse(&bytes(body).await?)
}

/// The public message for `e`, met at `path` (`.` for the whole body).
fn rejection(path: &str, e: &serde_json::Error) -> String {
    match e.classify() {
        Category::Syntax | Category::Eof => format!(
            "body: invalid JSON at line {} column {}",
            e.line(),
            e.column()
        ),
        Category::Io => "body: unreadable".to_owned(),
        Category::Data => data_rejection(path, &e.to_string()),
    }
}

/// A value that does not fit: serde's message (without its " at line L
/// column C") in the API's words.
fn data_rejection(path: &str, message: &str) -> String {
    let message = message
        .rfind(" at line ")
        .map_or(message, |at| &message[..at]);
    let whole = path == ".";
    for prefix in ["missing field ", "unknown field ", "duplicate field "] {
        if let Some(field) = message.strip_prefix(prefix) {
            // "unknown field `x`, expected one of `a`, `b`" names fields only.
            let said = format!("{}{field}", prefix);
            return if whole || prefix == "unknown field " {
                format!("body: {said}")
            } else {
                format!("body: {path}: {said}")
            };
        }
    }
    let typed = ["invalid type: ", "invalid value: ", "invalid length "]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.rsplit_once(", expected "));
    match typed {
        Some(_) if whole => "body: expected a JSON object".to_owned(),
        Some((got, want)) => format!(
            "body: {path}: expected {}, got {}",
            want_name(want),
            got_name(got)
        ),
        None if whole => "body: does not fit the expected object".to_owned(),
        None => format!("body: {path}: not an accepted value"),
    }
}

/// What serde expected, in JSON's terms.
fn want_name(want: &str) -> &'static str {
    match want {
        "a string" | "a borrowed string" => "a string",
        "a boolean" => "a boolean",
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer in range",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer in range",
        "f32" | "f64" => "a number",
        w if w.contains("sequence") || w.contains("tuple") || w.contains("array") => "an array",
        w if w.contains("struct") || w.contains("map") => "an object",
        _ => "another value",
    }
}

/// What the body held, in JSON's terms (the value itself is not echoed).
fn got_name(got: &str) -> &'static str {
    let kind = got.split_once(' ').map_or(got, |(k, _)| k);
    match kind {
        "integer" => "an integer",
        "floating" => "a number",
        "string" | "character" => "a string",
        "boolean" => "a boolean",
        "null" | "unit" => "null",
        "map" => "an object",
        "sequence" => "an array",
        _ => "another value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct SignUp {
        email: String,
        password: String,
        #[serde(default)]
        display_name: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Stop {
        bytes_served: Option<u64>,
        watched_ms: Option<u64>,
    }

    fn refused<T: DeserializeOwned + std::fmt::Debug>(body: &str) -> String {
        let e = parse::<T>(body.as_bytes()).expect_err(body);
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
        e.message
    }

    #[test]
    fn refusals_name_the_field_or_the_problem() {
        let cases = [
            (
                r#"{"email": "a@b.c""#,
                "body: invalid JSON at line 1 column 17",
            ),
            ("{,}", "body: invalid JSON at line 1 column 2"),
            (
                r#"{"email":"a","password":"b"} x"#,
                "body: invalid JSON at line 1 column 30",
            ),
            (r#"["a","b"]"#, "body: expected a JSON object"),
            (r#""a""#, "body: expected a JSON object"),
            ("null", "body: expected a JSON object"),
            (r#"{"email":"a"}"#, "body: missing field `password`"),
            (
                r#"{"email":"a","password":"b","admin":true}"#,
                "body: unknown field `admin`, expected one of `email`, `password`, `display_name`",
            ),
            (
                r#"{"email":5,"password":"b"}"#,
                "body: email: expected a string, got an integer",
            ),
            (
                r#"{"email":{"x":1},"password":"b"}"#,
                "body: email: expected a string, got an object",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(refused::<SignUp>(body), want, "{body}");
        }
        assert_eq!(
            refused::<Stop>(r#"{"watched_ms":-1}"#),
            "body: watched_ms: expected a non-negative integer in range, got an integer"
        );
        assert_eq!(
            refused::<Stop>(r#"{"bytes_served":"9"}"#),
            "body: bytes_served: expected a non-negative integer in range, got a string"
        );
    }

    /// JSON values of a few levels, as a client might send anything.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            "[a-z]{0,8}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("email".to_owned()),
                        Just("password".to_owned()),
                        Just("watched_ms".to_owned()),
                        "[a-z_]{1,8}"
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// A refusal never names a Rust type, whatever the body.
        #[test]
        fn no_refusal_names_a_rust_type(value in json_value(), cut in 0usize..64) {
            let text = value.to_string();
            let bodies = [text.clone(), text.get(..cut).unwrap_or(&text).to_owned()];
            for body in &bodies {
                for message in [
                    parse::<SignUp>(body.as_bytes()).err().map(|e| e.message),
                    parse::<Stop>(body.as_bytes()).err().map(|e| e.message),
                ]
                .into_iter()
                .flatten()
                {
                    prop_assert!(message.starts_with("body: "), "{message}");
                    for rust in ["struct", "SignUp", "Stop", "u64", "Option", "enum", "sequence", " map"] {
                        prop_assert!(!message.contains(rust), "{body} -> {message}");
                    }
                }
            }
        }
    }
}
