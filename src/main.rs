//! `pbx-edge`: the binary. Command-line parsing lives in `pbx_edge::cli`; each
//! command is a module of the `pbx_edge` library.

use pbx_edge::{cli, config, daemon, import};

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging(cli.verbose);
    let res = match cli.command {
        cli::Command::Import(args) => import::run(&args),
        cli::Command::CheckConfig { file, config } => Ok(config::check_config(file, config)),
        cli::Command::Run(c) => daemon::run(c.config),
        cli::Command::Status(c) => daemon::print_status(c.config),
        other => {
            eprintln!(
                "pbx-edge: `{}` is not available in this build yet",
                other.name()
            );
            Ok(ExitCode::from(2))
        }
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pbx-edge: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter =
        EnvFilter::try_from_env("PBX_EDGE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
