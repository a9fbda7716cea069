// Compiles the mesh APIs with protox (a protobuf compiler in Rust), so a build needs no system
// `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/ambit/workload/v1/workload.proto",
        "proto/ambit/security/v1/security.proto",
        "proto/ambit/route/v1/route.proto",
        "proto/ambit/traffic/v1/traffic.proto",
        "proto/ambit/discovery/v1/discovery.proto",
        "proto/ambit/telemetry/v1/telemetry.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    // The controller's side of Discovery/Subscribe, sending parts whose resources were encoded
    // once per snapshot (`response_parts::EncodedResponse`) rather than copied and encoded again
    // for every subscriber. Same route and bytes on the wire as the generated service.
    let subscribe = tonic_build::manual::Method::builder()
        .name("subscribe")
        .route_name("Subscribe")
        .input_type("crate::api::discovery::SubscribeRequest")
        .output_type("crate::response_parts::EncodedResponse")
        .codec_path("tonic_prost::ProstCodec")
        .client_streaming()
        .server_streaming()
        .build();
    let discovery = tonic_build::manual::Service::builder()
        .name("Discovery")
        .package("ambit.discovery.v1")
        .method(subscribe)
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .compile(&[discovery]);
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    Ok(())
}
