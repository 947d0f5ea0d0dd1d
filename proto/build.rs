//! Compiles the push API protos with a protoc shipped as a crate, so a fresh
//! machine needs nothing but cargo. `PROTOC` in the environment wins.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => path.into(),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .bytes(".")
        // Maps in answers keep their keys sorted, as the HTTP API's do.
        .btree_map(".")
        .file_descriptor_set_path(out.join("gpush_descriptor.bin"))
        .compile_with_config(
            config,
            &["gpush/v1/push.proto", "order/proxy.proto"],
            &["."],
        )?;
    Ok(())
}
