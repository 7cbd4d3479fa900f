//! `watcher` binary: parse config, pick the subcommand, run it, map errors to
//! exit codes. Everything else lives in the library (`watcher::app`).

use std::process::ExitCode;

use clap::CommandFactory;
use watcher::config::{self, Command};

fn main() -> ExitCode {
    let command = config::Cli::command();
    let matches = match command.clone().try_get_matches() {
        Ok(m) => m,
        // Prints help/version (exit 0) or a usage error (exit 2).
        Err(e) => e.exit(),
    };
    let (cli, cfg) = match config::load(&command, &matches) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("watcher: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("watcher: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command.unwrap_or(Command::Run) {
            Command::Run => watcher::app::run(cfg).await,
            Command::Render { file, format } => {
                watcher::cli::render_file(&cfg, &file, format).await
            }
            Command::Dlq(cmd) => watcher::cli::dlq(&cfg, cmd).await,
            Command::CheckConfig => watcher::cli::check_config(&cfg),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("watcher: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
