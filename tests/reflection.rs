//! gRPC server reflection on every service (issue #21, item 4): the nine
//! services in one process over real sockets (port 0 each), and on each
//! port a reflection client, with no service token, lists the services the
//! port serves (its own, `grpc.health.v1.Health` and reflection) over both
//! `grpc.reflection.v1` and `v1alpha`, and fetches a service's file
//! descriptor by symbol, as `grpcurl list` and `describe` do. A stock
//! client from outside the project, grpcio-reflection in the Python venv
//! `ci/deps` makes (`ci/probe/reflection_probe.py`), does the same.
#![cfg(not(madsim))]

use std::collections::BTreeSet;
use std::sync::Arc;

use streamgate::bus::memory::MemoryBus;
use streamgate::kernel::{Kernel, Plugin};
use streamgate::registry::ServiceInfo;
use streamgate::registry::memory::MemoryRegistry;
use streamgate::services::{Common, ServiceConfig, ServiceKind, ServicePlugin};
use tonic::transport::Channel;
use tonic_reflection::pb::{v1, v1alpha};

async fn start() -> Kernel {
    let plugins = ServiceKind::ALL
        .iter()
        .map(|&kind| {
            Box::new(ServicePlugin::new(
                Common::ephemeral(),
                ServiceConfig::new(kind),
            )) as Box<dyn Plugin>
        })
        .collect();
    Kernel::start(
        Arc::new(MemoryBus::new()),
        Arc::new(MemoryRegistry::new()),
        plugins,
    )
    .await
    .expect("kernel starts")
}

async fn channel(info: &ServiceInfo) -> Channel {
    Channel::from_shared(format!("http://{}:{}", info.address, info.port))
        .expect("a URI")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{}: connect: {e}", info.name))
}

/// What a port should advertise: the services its registration names, health
/// and reflection.
fn expected(info: &ServiceInfo) -> BTreeSet<String> {
    info.metadata
        .get("grpc")
        .map(String::as_str)
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .chain(
            [
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            ]
            .map(str::to_owned),
        )
        .collect()
}

async fn v1_ask(
    channel: Channel,
    request: v1::server_reflection_request::MessageRequest,
) -> v1::server_reflection_response::MessageResponse {
    v1_try(channel, request).await.expect("a reflection answer")
}

/// One reflection request; the answer, or the status the stream ended with.
async fn v1_try(
    channel: Channel,
    request: v1::server_reflection_request::MessageRequest,
) -> Result<v1::server_reflection_response::MessageResponse, tonic::Status> {
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers without a service token")
        .into_inner();
    Ok(answers
        .message()
        .await?
        .expect("one answer")
        .message_response
        .expect("a message response"))
}

async fn v1_list(channel: Channel) -> BTreeSet<String> {
    use v1::server_reflection_request::MessageRequest;
    use v1::server_reflection_response::MessageResponse;
    match v1_ask(channel, MessageRequest::ListServices(String::new())).await {
        MessageResponse::ListServicesResponse(list) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("not a service list: {other:?}"),
    }
}

async fn v1alpha_list(channel: Channel) -> BTreeSet<String> {
    use v1alpha::server_reflection_request::MessageRequest;
    use v1alpha::server_reflection_response::MessageResponse;
    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1alpha reflection answers")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("an answer")
        .expect("one answer");
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("not a service list: {other:?}"),
    }
}

#[tokio::test]
async fn every_service_lists_its_services_over_reflection() {
    let kernel = start().await;
    let registrations = kernel.registrations().to_vec();
    assert_eq!(registrations.len(), ServiceKind::ALL.len());
    let mut seen_domain_services = BTreeSet::new();
    for info in &registrations {
        let want = expected(info);
        let channel = channel(info).await;
        let listed = v1_list(channel.clone()).await;
        assert_eq!(listed, want, "{}: v1 list", info.name);
        let listed = v1alpha_list(channel).await;
        assert_eq!(listed, want, "{}: v1alpha list", info.name);
        seen_domain_services.extend(want.into_iter().filter(|s| s.starts_with("streamgate.")));
    }
    for name in [
        "streamgate.v1.UploadService",
        "streamgate.v1.StreamingService",
        "streamgate.v1.MetadataService",
        "streamgate.v1.AuthService",
        "streamgate.v1.CacheService",
        "streamgate.v1.TranscoderService",
        "streamgate.v1.WorkerService",
        "streamgate.v1.MonitorService",
    ] {
        assert!(
            seen_domain_services.contains(name),
            "{name} is served somewhere: {seen_domain_services:?}"
        );
    }
    kernel.shutdown().await;
}

#[tokio::test]
async fn a_service_is_described_by_symbol_and_unknown_symbols_are_not_found() {
    use v1::server_reflection_request::MessageRequest;
    use v1::server_reflection_response::MessageResponse;
    let kernel = start().await;
    let info = kernel
        .registrations()
        .iter()
        .find(|i| i.name == ServiceKind::Metadata.name())
        .expect("metadata is registered")
        .clone();
    let channel = channel(&info).await;
    let answer = v1_ask(
        channel.clone(),
        MessageRequest::FileContainingSymbol("streamgate.v1.MetadataService".to_owned()),
    )
    .await;
    let MessageResponse::FileDescriptorResponse(files) = answer else {
        panic!("not a file descriptor: {answer:?}");
    };
    assert_eq!(files.file_descriptor_proto.len(), 1);
    let file = &files.file_descriptor_proto[0];
    let contains = |needle: &str| file.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(contains("v1/service.proto"), "the file is named");
    assert!(contains("MetadataService"), "the service is in it");

    let health = v1_ask(
        channel.clone(),
        MessageRequest::FileContainingSymbol("grpc.health.v1.Health".to_owned()),
    )
    .await;
    assert!(
        matches!(health, MessageResponse::FileDescriptorResponse(_)),
        "health is described too: {health:?}"
    );

    let unknown = v1_try(
        channel,
        MessageRequest::FileContainingSymbol("streamgate.v1.NoSuchService".to_owned()),
    )
    .await
    .expect_err("an unknown symbol is not found");
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
    assert!(unknown.message().contains("NoSuchService"), "{unknown:?}");
    kernel.shutdown().await;
}

/// The Python the outside probes run in: `STREAMGATE_PYTHON`, default the
/// venv `ci/deps` makes.
fn python() -> std::path::PathBuf {
    std::env::var_os("STREAMGATE_PYTHON").map_or_else(
        || std::path::PathBuf::from("/var/cache/streamgate/pyenv/bin/python"),
        std::path::PathBuf::from,
    )
}

/// A stock client from outside the project (grpcio-reflection, in the venv
/// `ci/deps` makes) lists the metadata port's services and resolves a
/// method's types from the descriptors alone. Fails, never skips, without
/// the venv.
#[tokio::test]
async fn a_stock_python_client_lists_and_describes_over_reflection() {
    let kernel = start().await;
    let info = kernel
        .registrations()
        .iter()
        .find(|i| i.name == ServiceKind::Metadata.name())
        .expect("metadata is registered")
        .clone();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/probe/reflection_probe.py");
    let address = format!("{}:{}", info.address, info.port);
    let python = python();
    let child = tokio::process::Command::new(&python)
        .arg(&script)
        .args(["--describe", "streamgate.v1.MetadataService", &address])
        .output();
    let out = streamgate::rt::timeout(std::time::Duration::from_secs(60), child)
        .await
        .expect("the probe ends within a minute")
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run ci/deps, which makes the venv with grpcio-reflection)",
                python.display()
            )
        });
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "reflection_probe.py: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let services: BTreeSet<String> = said
        .lines()
        .filter_map(|l| l.strip_prefix("service "))
        .map(str::to_owned)
        .collect();
    assert_eq!(services, expected(&info), "{said}");
    for line in [
        "method streamgate.v1.MetadataService/GetVideo streamgate.v1.GetVideoRequest streamgate.v1.GetVideoResponse",
        "method streamgate.v1.MetadataService/ListVideos streamgate.v1.ListVideosRequest streamgate.v1.ListVideosResponse",
    ] {
        assert!(said.lines().any(|l| l == line), "{line} missing: {said}");
    }
    kernel.shutdown().await;
}
