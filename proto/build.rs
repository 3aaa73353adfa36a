//! Generates the factotum.v1 messages with protox (pure Rust): no system protoc needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=factotum");
    let fds = protox::compile(["factotum/v1/agent.proto"], ["."])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
