//! The call policy: which service may call which gRPC method, checked
//! against the caller's verified identity (its certificate under mutual
//! TLS, else its service token) by [`super::auth::VerifyLayer`]. Default
//! deny: a call no rule allows is refused with PERMISSION_DENIED, logged
//! and counted (`streamgate_requests_total{code="PermissionDenied"}`).
//! Health and reflection stay open ([`super::auth::EXEMPT_PREFIXES`]).
//!
//! The file (`--call-policy`, TOML) lists, under `[allow]`, a method
//! (`<package>.<Service>/<Method>`) or every method of a service
//! (`<package>.<Service>/*`) and the services that may call it:
//!
//! ```toml
//! [allow]
//! "streamgate.v1.UploadService/*" = ["api-gateway"]
//! "streamgate.v1.CacheService/Get" = ["monitor"]
//! ```
//!
//! A call is allowed when the rule for its method or the wildcard rule for
//! its service names the caller. `config/call-policy.toml` is the policy of
//! StreamGate's own call graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::rt::transport::valid_service;

/// Largest policy file read.
pub const MAX_FILE_BYTES: u64 = 64 << 10;
/// Most rules a policy may hold.
pub const MAX_RULES: usize = 1024;

/// A parsed call policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CallPolicy {
    /// `<package>.<Service>/<Method>` -> the services allowed.
    methods: BTreeMap<String, BTreeSet<String>>,
    /// `<package>.<Service>` (a `/*` rule) -> the services allowed: kept
    /// apart so that a call's check borrows its path and allocates nothing.
    services: BTreeMap<String, BTreeSet<String>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    allow: BTreeMap<String, Vec<String>>,
}

fn valid_method_key(key: &str) -> bool {
    let Some((service, method)) = key.split_once('/') else {
        return false;
    };
    let ident = |s: &str| {
        !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    service.split('.').all(ident) && service.contains('.') && (method == "*" || ident(method))
}

impl CallPolicy {
    /// Parses a policy file's text.
    ///
    /// # Errors
    /// What is wrong, naming the rule.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        if file.allow.len() > MAX_RULES {
            return Err(format!("more than {MAX_RULES} rules"));
        }
        let (mut methods, mut services) = (BTreeMap::new(), BTreeMap::new());
        for (key, callers) in file.allow {
            if !valid_method_key(&key) {
                return Err(format!(
                    "rule {key:?}: expected `<package>.<Service>/<Method>` or `<package>.<Service>/*`"
                ));
            }
            if let Some(bad) = callers.iter().find(|c| !valid_service(c)) {
                return Err(format!(
                    "rule {key:?}: {bad:?} is not a service name ([A-Za-z0-9-]{{1,64}})"
                ));
            }
            let callers = callers.into_iter().collect();
            match key.strip_suffix("/*") {
                Some(service) => services.insert(service.to_owned(), callers),
                None => methods.insert(key, callers),
            };
        }
        Ok(Self { methods, services })
    }

    /// Reads and parses the policy file at `path`.
    ///
    /// # Errors
    /// What is wrong, naming the file.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let named = |e: &dyn std::fmt::Display| format!("call policy {}: {e}", path.display());
        let meta = std::fs::metadata(path).map_err(|e| named(&e))?;
        if meta.len() > MAX_FILE_BYTES {
            return Err(named(&format!("larger than {} KiB", MAX_FILE_BYTES >> 10)));
        }
        let text = std::fs::read_to_string(path).map_err(|e| named(&e))?;
        Self::parse(&text).map_err(|e| named(&e))
    }

    /// Whether `caller` may call the method at `path` (`/<package>.<Service>/<Method>`).
    #[must_use]
    pub fn allows(&self, caller: &str, path: &str) -> bool {
        let Some(method) = path.strip_prefix('/') else {
            return false;
        };
        let Some((service, _)) = method.rsplit_once('/') else {
            return false;
        };
        let names = |rules: &BTreeMap<String, BTreeSet<String>>, key: &str| {
            rules.get(key).is_some_and(|c| c.contains(caller))
        };
        names(&self.methods, method) || names(&self.services, service)
    }

    /// Every service a rule names as a caller.
    #[must_use]
    pub fn callers(&self) -> BTreeSet<&str> {
        self.methods
            .values()
            .chain(self.services.values())
            .flat_map(|c| c.iter().map(String::as_str))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
[allow]
"streamgate.v1.UploadService/*" = ["api-gateway"]
"streamgate.v1.CacheService/Get" = ["monitor"]
"streamgate.v1.CacheService/*" = ["api-gateway"]
"#;

    #[test]
    fn allows_what_a_rule_names_and_nothing_else() {
        let p = CallPolicy::parse(POLICY).expect("parses");
        assert!(p.allows("api-gateway", "/streamgate.v1.UploadService/Upload"));
        assert!(!p.allows("worker", "/streamgate.v1.UploadService/Upload"));
        assert!(p.allows("monitor", "/streamgate.v1.CacheService/Get"));
        assert!(!p.allows("monitor", "/streamgate.v1.CacheService/Set"));
        assert!(p.allows("api-gateway", "/streamgate.v1.CacheService/Set"));
        // Unknown services and malformed paths are refused.
        assert!(!p.allows("api-gateway", "/streamgate.v1.AuthService/LogIn"));
        assert!(!p.allows("api-gateway", "streamgate.v1.UploadService/Upload"));
        assert!(!p.allows("api-gateway", "/"));
        assert!(!p.allows("api-gateway", ""));
        // A prefix of a rule's service is not that service.
        assert!(!p.allows("api-gateway", "/streamgate.v1.UploadServiceX/Upload"));
        assert!(!p.allows("api-gateway", "/streamgate.v1.Upload/Service/x"));
    }

    #[test]
    fn the_empty_policy_refuses_everything() {
        let p = CallPolicy::parse("[allow]\n").expect("parses");
        assert!(!p.allows("api-gateway", "/streamgate.v1.UploadService/Upload"));
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        for (text, want) in [
            (
                "[allow]\n\"UploadService/*\" = [\"x\"]\n",
                "expected `<package>",
            ),
            ("[allow]\n\"a.B/C/D\" = [\"x\"]\n", "expected `<package>"),
            (
                "[allow]\n\"a.B/*\" = [\"not a name\"]\n",
                "is not a service name",
            ),
            ("[allow]\n\"a.B/*\" = \"x\"\n", "invalid type"),
            ("[deny]\n", "unknown field"),
            ("", "missing field `allow`"),
        ] {
            let err = CallPolicy::parse(text).expect_err(text);
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn the_shipped_policy_parses_and_names_only_services() {
        let text = include_str!("../../config/call-policy.toml");
        let p = CallPolicy::parse(text).expect("config/call-policy.toml parses");
        assert!(p.allows("api-gateway", "/streamgate.v1.UploadService/Upload"));
        assert!(!p.allows("worker", "/streamgate.v1.UploadService/Upload"));
        assert_eq!(
            p.callers().into_iter().collect::<Vec<_>>(),
            ["api-gateway", "streaming", "upload", "worker"]
        );
        // The media port reads what it needs, and no more.
        assert!(p.allows("streaming", "/streamgate.v1.MetadataService/GetVideo"));
        assert!(!p.allows("streaming", "/streamgate.v1.MetadataService/DeleteVideo"));
    }
}
