//! The command line (CONTRACT §1). One definition serves `--help`, the man page
//! and shell completions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Records calls beside a PBX as two-channel WAVs and delivers them to a
/// speech-analytics cloud.
#[derive(Debug, Parser)]
#[command(name = "pbx-edge", version, about, long_about = None)]
pub struct Cli {
    /// More log output (-v info, -vv debug). PBX_EDGE_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: every configured source, recording, spooling, uploading.
    Run(ConfigArg),
    /// Validate a configuration file.
    CheckConfig {
        /// The file to check (default: /etc/pbx-edge/pbx-edge.toml).
        file: Option<PathBuf>,
        #[arg(long = "config", hide = true)]
        config: Option<PathBuf>,
    },
    /// Read pcap / pcapng captures and write one recording per call.
    Import(ImportArgs),
    /// Inspect and act on the spool of a configured daemon.
    #[command(subcommand)]
    Spool(SpoolCommand),
    /// Show what the running daemon reports on /status.
    Status(ConfigArg),
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Run(_) => "run",
            Command::CheckConfig { .. } => "check-config",
            Command::Import(_) => "import",
            Command::Spool(_) => "spool",
            Command::Status(_) => "status",
        }
    }
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Configuration file (default: /etc/pbx-edge/pbx-edge.toml, else built-in defaults).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum SpoolCommand {
    /// List recordings in the spool.
    List(ConfigArg),
    /// Retry a failed recording (or all failed ones with --all-failed).
    Retry {
        id: Option<String>,
        #[arg(long)]
        all_failed: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Remove a recording from the spool.
    Purge {
        id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// pcap or pcapng files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Directory for the recordings (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Configuration file (recording.* settings and agent.id are used).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Output sample rate: auto, 8000 or 16000.
    #[arg(long, default_value = "auto")]
    pub sample_rate: String,
    /// Calls shorter than this (e.g. "2s") are not written.
    #[arg(long, default_value = "0s")]
    pub min_duration: String,
    /// Reorder/jitter window in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub jitter_ms: u32,
    /// Agent id written into the recordings (default: host name).
    #[arg(long)]
    pub agent_id: Option<String>,
    /// No progress bar even on a terminal.
    #[arg(long, short)]
    pub quiet: bool,
}
