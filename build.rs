//! Generates the prost messages and tonic clients/servers from `proto/`
//! with protox (a Rust protobuf compiler), so no `protoc` binary is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["v1/service.proto"], ["proto"])?;
    // The encoded descriptor set, for gRPC server reflection
    // (`services::reflection`): clients list and describe the services
    // without the proto file.
    {
        use protox::prost::Message as _;
        let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR unset")?);
        std::fs::write(out.join("streamgate_descriptor.bin"), fds.encode_to_vec())?;
    }
    tonic_prost_build::configure()
        // The transport is chosen by `rt::transport` (tonic's, or the simulator's).
        .build_transport(false)
        // Video bytes travel as `Bytes`: decoding slices the receive buffer
        // instead of copying into a fresh Vec (the streaming path's hot spot).
        .bytes(".streamgate.v1.DataChunk.data")
        .bytes(".streamgate.v1.GetSegmentResponse.data")
        .bytes(".streamgate.v1.GetThumbnailResponse.data")
        .bytes(".streamgate.v1.UploadChunk.data")
        // Messages carrying passwords, tokens or secrets get a hand-written,
        // redacted Debug (src/services/auth/redact.rs), so logging one
        // never prints them.
        .skip_debug([
            ".streamgate.v1.SignUpRequest",
            ".streamgate.v1.LogInRequest",
            ".streamgate.v1.RefreshRequest",
            ".streamgate.v1.ValidateTokenRequest",
            ".streamgate.v1.IssueServiceTokenRequest",
            ".streamgate.v1.IssueServiceTokenResponse",
            ".streamgate.v1.RevokeTokenRequest",
            ".streamgate.v1.TokenPair",
        ])
        .compile_fds(fds)?;
    Ok(())
}
