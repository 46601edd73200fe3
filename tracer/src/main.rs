use std::process::ExitCode;

use clap::Parser;
use dptrace::{
    cli::{Cli, Command, LabAction},
    commands::{self, Outcome},
    lab,
    probes::DEFAULT_BUFFER_BYTES,
};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).format_timestamp(None).init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not errors; everything else is a usage error (2).
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().thread_name("dptrace").enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dptrace: error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Check { json } => dptrace::check::check(json).await,
            Command::Trace(args) => commands::trace(args).await,
            Command::Lab { action: LabAction::List } => lab::list(),
            Command::Lab { action: LabAction::Run { names, all, json, verbose, backends } } => {
                lab::run(&names, all, json, verbose, backends.probe_options(DEFAULT_BUFFER_BYTES)).await
            }
            Command::Generate { kind } => dptrace::generate::generate(kind, &mut std::io::stdout().lock())
                .map(|()| Outcome::Ok)
                .map_err(|e| anyhow::anyhow!("cannot write to standard output: {e}")),
        }
    });
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Problem) => ExitCode::from(1),
        Err(e) => {
            eprintln!("dptrace: error: {}", dptrace::probes::error_chain(e.as_ref()));
            ExitCode::from(2)
        }
    }
}
