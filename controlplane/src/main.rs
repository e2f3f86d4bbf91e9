//! picket-controlplane: the central service (ingest of sensor flows and cloud flow logs,
//! detection, REST API, dashboard). This is the skeleton with the interface contract of DESIGN.md;
//! the commands are built by the control-plane issues.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "picket-controlplane",
    version,
    about = "Picket's control plane"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve sensor ingest (gRPC), the REST API and the dashboard.
    Serve {
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7443")]
        grpc_listen: SocketAddr,
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        http_listen: SocketAddr,
    },
    /// Import cloud flow logs (gzip detected; `-` for stdin) into a data dir.
    Import {
        provider: Provider,
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Provider {
    Aws,
    Gcp,
    Azure,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let what = match cli.cmd {
        Cmd::Serve { .. } => "serve",
        Cmd::Import { .. } => "import",
    };
    eprintln!(
        "picket-controlplane: `{what}` is not available in this version yet; use `picket-sensor --stdout` for now"
    );
    ExitCode::from(2)
}
