//! `pbx-edge check-config [FILE] [--config FILE]`: the config read as the
//! daemon reads it, its summary or every problem.
//!
//! In: the file arguments and the environment. Out: stdout/stderr lines and
//! the exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{Config, DEFAULT_PATH};

/// `pbx-edge check-config [FILE] [--config FILE]`: prints the summary line to
/// stdout and exits 0 (warnings, such as a token file others can read, go to
/// stderr as `warning: key: ...`), or prints every problem to stderr and
/// exits 1 (2 for contradicting arguments); a token file that cannot be
/// read is such a problem, though the daemon runs with it (recording,
/// not delivering: [`Config::delivery_problems`]).
pub fn run(file: Option<PathBuf>, config: Option<PathBuf>) -> ExitCode {
    let path = match (file, config) {
        (Some(a), Some(b)) if a != b => {
            eprintln!(
                "pbx-edge: check-config: two different files given ({} and --config {})",
                a.display(),
                b.display()
            );
            return ExitCode::from(2);
        }
        (a, b) => a.or(b),
    };
    let used = Config::resolve_path(path.as_deref());
    match Config::load(path.as_deref()) {
        Ok(c) if !c.delivery_problems.is_empty() => {
            // The daemon would run and record, but deliver nothing.
            for e in &c.delivery_problems {
                eprintln!("{e}");
            }
            ExitCode::from(1)
        }
        Ok(c) => {
            for w in c.warnings() {
                eprintln!("warning: {w}");
            }
            println!("{}", check_ok_line(used.as_deref(), &c));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// The line `check-config` prints for a good configuration.
pub fn check_ok_line(path: Option<&Path>, c: &Config) -> String {
    let name = match path {
        Some(p) => p.display().to_string(),
        None => format!("(built-in defaults; {DEFAULT_PATH} not found)"),
    };
    format!("{name}: ok ({})", c.summary())
}
