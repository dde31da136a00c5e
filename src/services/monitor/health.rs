//! A service's health as the monitor judges it from its instances' health
//! checks, and alert severities: small pure vocabulary shared by the rest.

use crate::proto;

/// Health of one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// Every instance answers SERVING.
    Serving,
    /// Some instances answer SERVING, some do not.
    Degraded,
    /// No instance answers SERVING, or none is registered.
    NotServing,
}

impl Health {
    /// The health of a service of which `serving` of `instances` answered
    /// SERVING.
    #[must_use]
    pub fn of(serving: usize, instances: usize) -> Self {
        if serving == 0 {
            Self::NotServing
        } else if serving >= instances {
            Self::Serving
        } else {
            Self::Degraded
        }
    }

    /// Whether the service counts as healthy for alerting.
    #[must_use]
    pub fn is_healthy(self) -> bool {
        self == Self::Serving
    }

    /// The severity of an alert about a service in this state (`None`
    /// when healthy).
    #[must_use]
    pub fn severity(self) -> Option<Severity> {
        match self {
            Self::Serving => None,
            Self::Degraded => Some(Severity::Warning),
            Self::NotServing => Some(Severity::Critical),
        }
    }

    /// Its protocol value.
    #[must_use]
    pub fn to_proto(self) -> proto::ServiceHealth {
        match self {
            Self::Serving => proto::ServiceHealth::Serving,
            Self::Degraded => proto::ServiceHealth::Degraded,
            Self::NotServing => proto::ServiceHealth::NotServing,
        }
    }
}

/// How urgent an alert is; ordered from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Informational.
    Info,
    /// Needs attention soon (a service degraded).
    Warning,
    /// Needs attention now (a service down).
    Critical,
}

impl Severity {
    /// The name carried in `AlertTriggered.severity`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }

    /// Its protocol value.
    #[must_use]
    pub fn to_proto(self) -> proto::AlertSeverity {
        match self {
            Self::Info => proto::AlertSeverity::Info,
            Self::Warning => proto::AlertSeverity::Warning,
            Self::Critical => proto::AlertSeverity::Critical,
        }
    }

    /// A severity filter from the protocol: `None` for UNSPECIFIED (any).
    ///
    /// # Errors
    /// The value is not a known severity.
    pub fn filter(raw: i32) -> Result<Option<Self>, String> {
        match proto::AlertSeverity::try_from(raw) {
            Ok(proto::AlertSeverity::Unspecified) => Ok(None),
            Ok(proto::AlertSeverity::Info) => Ok(Some(Self::Info)),
            Ok(proto::AlertSeverity::Warning) => Ok(Some(Self::Warning)),
            Ok(proto::AlertSeverity::Critical) => Ok(Some(Self::Critical)),
            Err(_) => Err(format!("min_severity: unknown severity {raw}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_of_instances() {
        assert_eq!(Health::of(0, 0), Health::NotServing, "none registered");
        assert_eq!(Health::of(0, 2), Health::NotServing);
        assert_eq!(Health::of(1, 2), Health::Degraded);
        assert_eq!(Health::of(2, 2), Health::Serving);
        assert!(Health::NotServing > Health::Degraded && Health::Degraded > Health::Serving);
    }

    #[test]
    fn severity_filters() {
        assert_eq!(Severity::filter(0), Ok(None));
        assert_eq!(Severity::filter(3), Ok(Some(Severity::Critical)));
        assert!(Severity::filter(99).is_err());
        assert_eq!(Health::Degraded.severity(), Some(Severity::Warning));
        assert_eq!(Health::Serving.severity(), None);
    }
}
