//! Generates the quiver.v1 Rust code and the descriptor set used by server reflection.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("quiver_descriptor.bin"))
        .compile_protos(
            &["quiver/v1/quiver.proto", "quiver/internal/v1/raft.proto"],
            &["."],
        )?;
    println!("cargo:rerun-if-changed=quiver");
    Ok(())
}
