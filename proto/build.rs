//! Compiles the `.proto` files with `protox` (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "rampart/v1/control.proto",
        "flagd/evaluation/v1/evaluation.proto",
        "flagd/evaluation/v2/evaluation.proto",
        "flagd/sync/v1/sync.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    // The RPC is named `Connect`, which would clash with the generated `connect` constructor;
    // clients are built with `RampControlClient::new(channel)` instead.
    // A histogram's packed varints are read in place from the received buffer (`Bytes`, no copy).
    tonic_prost_build::configure().build_transport(false).bytes(".rampart.v1.Histogram").compile_fds(fds)?;
    Ok(())
}
