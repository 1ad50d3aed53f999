//! The command line (CONTRACT §1). One definition serves `--help`, the man page
//! and shell completions.

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

/// Records calls beside a PBX as two-channel WAVs and delivers them to a
/// speech-analytics cloud.
#[derive(Debug, Parser)]
#[command(name = "pbx-edge", version, about, long_about = None)]
pub struct Cli {
    /// More log output (-v info, -vv debug). PBX_EDGE_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Configuration file (default: /etc/pbx-edge/pbx-edge.toml, else
    /// built-in defaults). Taken before or after the command's words
    /// (`pbx-edge spool list --config F`, `pbx-edge --config F spool list`).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: every configured source, recording, spooling, uploading.
    Run,
    /// Validate a configuration file.
    CheckConfig {
        /// The file to check (default: /etc/pbx-edge/pbx-edge.toml; or
        /// --config).
        file: Option<PathBuf>,
    },
    /// Read pcap / pcapng captures and write one recording per call.
    Import(ImportArgs),
    /// Inspect and act on the spool of a configured daemon.
    #[command(subcommand)]
    Spool(SpoolCommand),
    /// Show what the running daemon reports on /status (sizes and ages for
    /// people; `--json` for the exact figures).
    Status(ReportArgs),
    /// Drain the running daemon (as SIGUSR1): no new calls (SIPREC INVITE and
    /// OPTIONS answered 503), the calls in progress finish, the spool is
    /// delivered, then it exits 0. For rolling upgrades behind a dispatcher.
    Drain {
        /// Wait until the daemon has exited, printing its progress.
        #[arg(long)]
        wait: bool,
    },
    /// Write the man pages or the shell completions into DIR (for packaging).
    #[command(hide = true)]
    Generate {
        /// What to write.
        what: Generate,
        /// Directory to write into (created if missing).
        dir: PathBuf,
    },
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Run => "run",
            Command::CheckConfig { .. } => "check-config",
            Command::Import(_) => "import",
            Command::Spool(_) => "spool",
            Command::Status(_) => "status",
            Command::Drain { .. } => "drain",
            Command::Generate { .. } => "generate",
        }
    }
}

/// A report for people, or its exact figures as JSON.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Print the exact figures as JSON (bytes, milliseconds) instead.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum SpoolCommand {
    /// List recordings in the spool (sizes and ages for people; `--json`
    /// for exact bytes and milliseconds).
    List(ReportArgs),
    /// Retry a failed recording (or all failed ones with --all-failed).
    Retry {
        id: Option<String>,
        #[arg(long)]
        all_failed: bool,
    },
    /// Remove a recording from the spool; or, for a data-subject request,
    /// every recording of a phone number (--number) and/or every recording
    /// of calls that started before a date (--before), whatever their state.
    Purge {
        id: Option<String>,
        /// Remove the recordings whose caller or callee is this number
        /// (digits compared; "+49 30 1234567", "0049301234567" and
        /// "030 1234567" are the same number when their last 9+ digits
        /// agree). Not printed: the output names the recordings removed.
        #[arg(long)]
        number: Option<String>,
        /// Remove the recordings of calls that started before this time
        /// (RFC 3339, e.g. 2026-11-01T00:00:00Z, or a date, 2026-11-01,
        /// meaning its start in UTC).
        #[arg(long)]
        before: Option<String>,
        /// Say what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write a recording's WAV and JSON as plaintext into a directory
    /// (decrypted when the spool is encrypted at rest; files of mode 0600).
    Export {
        id: String,
        /// Directory for `<id>.wav` and `<id>.json` (created, mode 0700, if missing).
        #[arg(long)]
        out: PathBuf,
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
    /// Output sample rate: auto, 8000 or 16000 (default: the
    /// configuration's recording.sample_rate, built in "auto").
    #[arg(long)]
    pub sample_rate: Option<String>,
    /// Calls shorter than this (e.g. "2s") are not written (default: the
    /// configuration's recording.min_duration, built in "0s").
    #[arg(long)]
    pub min_duration: Option<String>,
    /// Reorder/jitter window in milliseconds (default: the configuration's
    /// recording.jitter, built in 500).
    #[arg(long)]
    pub jitter_ms: Option<u32>,
    /// Agent id written into the recordings (default: the configuration's
    /// agent.id, built in the host name).
    #[arg(long)]
    pub agent_id: Option<String>,
    /// No progress bar even on a terminal.
    #[arg(long, short)]
    pub quiet: bool,
}

/// What `pbx-edge generate` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Generate {
    /// `pbx-edge.1` and one page per command (`pbx-edge-run.1`, ...).
    Man,
    /// `pbx-edge.bash`, `_pbx-edge` (zsh) and `pbx-edge.fish`.
    Completions,
}

/// Sections of `pbx-edge(1)` that clap does not know about, in roff.
const MAN_EXTRA: &str = r#".SH FILES
.TP
\fI/etc/pbx\-edge/pbx\-edge.toml\fR
The configuration (TOML). Every key is documented in the file itself; check it with
\fBpbx\-edge check\-config\fR. Without \fB\-\-config\fR and without this file,
\fBrun\fR uses built\-in defaults.
.TP
\fI/etc/pbx\-edge/token\fR
The cloud bearer token (mode 0600, owner root). The systemd unit hands it to the
daemon as the credential \fIcloud\-token\fR.
.TP
\fI/var/lib/pbx\-edge/\fR
The spool: recordings (\fIID\fR.wav and \fIID\fR.json, mode 0600) waiting for delivery.
.TP
\fI/usr/share/doc/pbx\-edge/\fR
The operators' guide and the systemd drop\-in examples.
.SH ENVIRONMENT
.TP
\fBPBX_EDGE__\fR\fISECTION\fR\fB__\fR\fIKEY\fR
Overrides any configuration key, e.g. \fBPBX_EDGE__CLOUD__URL\fR or
\fBPBX_EDGE__SOURCES__SIPREC__LISTEN\fR.
.TP
\fBPBX_EDGE_LOG\fR
Log filter (\fBerror\fR, \fBwarn\fR, \fBinfo\fR, \fBdebug\fR, \fBtrace\fR, or per module).
.TP
\fBSTATE_DIRECTORY\fR
Set by systemd (\fBStateDirectory=\fR); the default spool directory. Without it the default is \fI/var/lib/pbx\-edge\fR for a binary installed under \fI/usr\fR, else \fI./var\fR (run from a checkout).
.TP
\fBCREDENTIALS_DIRECTORY\fR
Set by systemd (\fBLoadCredential=\fR); the cloud token is read from its file \fIcloud\-token\fR.
.TP
\fBJOURNAL_STREAM\fR
Set by systemd when logging to the journal: when it names stderr, log lines carry no time stamps or colours and start with their syslog priority (\fB<3>\fR error, \fB<4>\fR warning, \fB<6>\fR info, \fB<7>\fR debug), so \fBjournalctl \-p err\fR finds the errors.
.SH SIGNALS
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop taking calls, close every open recording, exit 0 within 10 seconds.
.TP
\fBSIGUSR1\fR
Drain (as \fBpbx\-edge drain\fR): take no new calls (SIPREC INVITE and OPTIONS answered 503),
let the calls in progress finish, deliver the spool, exit 0.
.TP
\fBSIGHUP\fR
Re\-read the configuration. A file with errors is rejected (the reason is logged) and the
running configuration is kept.
.SH EXIT STATUS
0 on success; 1 on an error (an invalid configuration, an unreadable capture); 2 on a usage error.
.SH SEE ALSO
\fBsystemctl\fR(1), \fBjournalctl\fR(1), \fBsystemd.exec\fR(5),
\fI/usr/share/doc/pbx\-edge/operators\-guide.md\fR
"#;

/// Write the man pages (`what == Man`) or the shell completions into `dir`.
/// Returns the files written.
pub fn generate(what: Generate, dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut written = Vec::new();
    match what {
        Generate::Man => {
            let source = format!("pbx-edge {}", env!("CARGO_PKG_VERSION"));
            let mut cmd = cmd.disable_help_subcommand(true);
            cmd.build();
            // One page per visible command, depth first (pbx-edge-spool-list.1 ...).
            let mut todo: Vec<clap::Command> = cmd.get_subcommands().cloned().collect();
            while let Some(sub) = todo.pop() {
                if sub.is_hide_set() || sub.get_name() == "help" {
                    continue;
                }
                todo.extend(sub.get_subcommands().cloned());
                let man = clap_mangen::Man::new(sub)
                    .source(source.clone())
                    .manual("pbx-edge");
                written.push(man.generate_to(dir)?);
            }
            let man = clap_mangen::Man::new(cmd.clone())
                .source(source)
                .manual("pbx-edge");
            let mut page = Vec::new();
            man.render(&mut page)?;
            let mut page = String::from_utf8_lossy(&page).into_owned();
            page.push_str(MAN_EXTRA);
            let path = dir.join(man.get_filename());
            std::fs::write(&path, page)?;
            written.push(path);
        }
        Generate::Completions => {
            use clap_complete::Shell;
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                written.push(clap_complete::generate_to(
                    shell, &mut cmd, "pbx-edge", dir,
                )?);
            }
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn generates_man_pages_and_completions() {
        let dir = tempfile::tempdir().unwrap();
        let man = generate(Generate::Man, dir.path()).unwrap();
        let names: Vec<String> = man
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "pbx-edge.1",
            "pbx-edge-run.1",
            "pbx-edge-check-config.1",
            "pbx-edge-spool-list.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        assert!(
            !names
                .iter()
                .any(|n| n.contains("generate") || n.contains("help")),
            "{names:?}"
        );
        let main = std::fs::read_to_string(dir.path().join("pbx-edge.1")).unwrap();
        assert!(main.contains(".TH pbx-edge 1"), "no title");
        for section in [
            ".SH SYNOPSIS",
            ".SH FILES",
            ".SH ENVIRONMENT",
            ".SH SIGNALS",
        ] {
            assert!(main.contains(section), "{section} missing");
        }
        let comp = generate(Generate::Completions, dir.path()).unwrap();
        assert_eq!(comp.len(), 3);
        let bash = std::fs::read_to_string(dir.path().join("pbx-edge.bash")).unwrap();
        assert!(bash.contains("check-config"));
        let fish = std::fs::read_to_string(dir.path().join("pbx-edge.fish")).unwrap();
        assert!(fish.contains("import"));
        assert!(dir.path().join("_pbx-edge").is_file());
    }
}
