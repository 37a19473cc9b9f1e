//! The `rdev` binary: see `rdev --help`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // reqwest's rustls needs one crypto provider chosen before any TLS use.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let code = rdev_cli::main().await;
    std::process::ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1))
}
