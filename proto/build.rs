//! Generates the picket.v1 messages and the SensorIngest client and server with protoc (installed
//! by scripts/setup.sh from Debian's protobuf-compiler).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    if std::env::var_os("PROTOC").is_none()
        && std::process::Command::new("protoc")
            .arg("--version")
            .output()
            .is_err()
    {
        return Err(
            "protoc not found: run scripts/setup.sh (Debian package protobuf-compiler)".into(),
        );
    }
    tonic_prost_build::configure().compile_protos(&["proto/picket/v1/sensor.proto"], &["proto"])?;
    Ok(())
}
