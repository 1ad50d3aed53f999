//! `pbx-edge`: the binary. Command-line parsing lives in `pbx_edge::cli`; each
//! command is a module of the `pbx_edge` library.

use pbx_edge::{cli, commands, config, daemon};

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // The daemon's [log] settings apply from the first line; a config error
    // is reported by `run` itself (with defaults for logging until then).
    let log = match &cli.command {
        cli::Command::Run => config::Config::load(cli.config.as_deref())
            .map(|c| c.log)
            .unwrap_or_else(|_| config::Config::default().log),
        _ => config::Config::default().log,
    };
    init_logging(cli.verbose, &log);
    let res = match cli.command {
        cli::Command::Import(args) => commands::import::run(&args, cli.config.as_deref()),
        cli::Command::CheckConfig { file } => Ok(commands::check_config::run(file, cli.config)),
        cli::Command::Run => daemon::run(cli.config),
        cli::Command::Status(c) => commands::status::run(cli.config, c.json),
        cli::Command::Drain { wait } => commands::drain::run(cli.config, wait),
        cli::Command::Spool(c) => commands::spool::run(c, cli.config),
        cli::Command::Generate { what, dir } => match cli::generate(what, &dir) {
            Ok(files) => {
                for f in files {
                    println!("{}", f.display());
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Err(anyhow::anyhow!("generate into {}: {e}", dir.display())),
        },
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pbx-edge: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(verbose: u8, log: &pbx_edge::config::LogConfig) {
    use pbx_edge::config::LogFormat;
    use tracing_subscriber::EnvFilter;
    // -v and -vv are pbx-edge's own detail; the libraries stay at info.
    let default = match verbose {
        0 => "info",
        1 => "info,pbx_edge=debug",
        _ => "info,pbx_edge=trace",
    };
    let mut filter =
        EnvFilter::try_from_env("PBX_EDGE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // Whatever PBX_EDGE_LOG says: the WebSocket library's debug and trace
    // lines show the live stream's handshake (its bearer token) and frames
    // (the parties' names and numbers).
    for quiet in ["tungstenite=info", "tokio_tungstenite=info"] {
        if let Ok(d) = quiet.parse() {
            filter = filter.add_directive(d);
        }
    }
    // Phone numbers are masked unless log.log_numbers = true (a reload
    // changes it: daemon::main_loop).
    pbx_edge::logmask::show_numbers(log.log_numbers);
    // Under systemd (JOURNAL_STREAM names stderr) journald adds time stamps
    // and the unit name itself: plain lines without colours or our own time
    // stamps. Lines for the journal start with their syslog priority (`<3>`
    // error, `<4>` warning, `<6>` info, `<7>` debug), which journald takes
    // off and keeps as PRIORITY= (`journalctl -p err`).
    let journal = pbx_edge::logmask::stderr_is_journal();
    let format = log.format.resolve(journal);
    let writer = if journal || format == LogFormat::Journald {
        pbx_edge::logmask::MaskedStderr::journald()
    } else {
        pbx_edge::logmask::MaskedStderr::plain()
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
        LogFormat::Journald => builder
            .without_time()
            .with_ansi(false)
            .with_target(false)
            .try_init(),
        _ => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}
