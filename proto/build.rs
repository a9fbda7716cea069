// Compiles the mesh APIs with protox (a protobuf compiler in Rust), so a build needs no system
// `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/ambit/workload/v1/workload.proto",
        "proto/ambit/security/v1/security.proto",
        "proto/ambit/route/v1/route.proto",
        "proto/ambit/discovery/v1/discovery.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    Ok(())
}
