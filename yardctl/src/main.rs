//! `yardctl`: parses the command line, runs the command on a single-threaded
//! runtime, and turns a failure into one `error: ...` line on stderr and the
//! exit code `yardctl --help` documents.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use yardctl::{Cli, Console, Exit};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap's own exit code for usage errors is 2, which means
            // "refused by the server" here.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(Exit::Usage.code())
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Unavailable.code());
        }
    };
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    let mut console = Console {
        tty: out.is_terminal(),
        out: &mut out,
        err: &mut err,
    };
    match runtime.block_on(yardctl::run(cli, &mut console)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("error: {}", e.message);
            }
            ExitCode::from(e.exit.code())
        }
    }
}
