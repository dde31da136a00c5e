//! gRPC server reflection (`grpc.reflection.v1.ServerReflection`, and the
//! older `v1alpha` that some clients still ask for) on every service's
//! port, so `grpcurl -plaintext HOST:PORT list` and `describe` work without
//! the proto file. Each service advertises its own gRPC services, the
//! standard health service and reflection itself; the descriptors of every
//! `proto/` file are served (build.rs encodes them). Like health, the calls
//! need no service token (`middleware::auth::EXEMPT_PREFIXES`).
//!
//! Not in the simulator build: the reflection server spawns its streams on
//! tokio directly.

use tonic::service::Routes;
use tonic_reflection::server::Builder;

/// The encoded `FileDescriptorSet` of `proto/` (build.rs writes it).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/streamgate_descriptor.bin"));

/// The reflection service's name (v1).
pub const V1: &str = "grpc.reflection.v1.ServerReflection";
/// The reflection service's name (v1alpha).
pub const V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";
/// The standard health service's name.
pub const HEALTH: &str = "grpc.health.v1.Health";

/// The services a port serving `grpc_names` advertises: those, health and
/// reflection (both versions), sorted.
#[must_use]
pub fn advertised(grpc_names: &[&'static str]) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = grpc_names
        .iter()
        .copied()
        .chain([HEALTH, V1, V1ALPHA])
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

fn builder(grpc_names: &[&'static str]) -> Builder<'static> {
    advertised(grpc_names).into_iter().fold(
        Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
        Builder::with_service_name,
    )
}

/// `routes` with the reflection services added, advertising
/// [`advertised`]`(grpc_names)`.
///
/// # Errors
/// A descriptor set does not decode (a build defect).
pub fn add(
    routes: Routes,
    grpc_names: &[&'static str],
) -> Result<Routes, tonic_reflection::server::Error> {
    let v1 = builder(grpc_names).build_v1()?;
    let v1alpha = builder(grpc_names).build_v1alpha()?;
    Ok(routes.add_service(v1).add_service(v1alpha))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptor_set_carries_every_service_of_the_proto() {
        // Names are stored as plain strings in the encoded descriptors.
        let has = |name: &str| {
            FILE_DESCRIPTOR_SET
                .windows(name.len())
                .any(|w| w == name.as_bytes())
        };
        for service in [
            "UploadService",
            "StreamingService",
            "MetadataService",
            "AuthService",
            "CacheService",
            "TranscoderService",
            "WorkerService",
            "MonitorService",
        ] {
            assert!(has(service), "{service} missing");
        }
        assert!(has("streamgate.v1"), "the package is named");
    }

    #[test]
    fn a_port_advertises_its_services_health_and_reflection() {
        assert_eq!(
            advertised(&["streamgate.v1.WorkerService", HEALTH]),
            [HEALTH, V1, V1ALPHA, "streamgate.v1.WorkerService"]
        );
        assert!(add(Routes::default(), &["streamgate.v1.WorkerService"]).is_ok());
    }
}
