//! Generates the agent protocol (factotum.v1) and the client API (factotum.jobs.v2), messages and
//! tonic services, with protox (pure Rust): no system protoc. Also writes the encoded
//! descriptor set for gRPC reflection (well-known types included, for clients that resolve
//! imports through reflection).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=factotum");
    let fds = protox::compile(
        ["factotum/v1/agent.proto", "factotum/jobs/v2/jobs.proto"],
        ["."],
    )?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("factotum_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
