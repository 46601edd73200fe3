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
        Err(e) if !e.use_stderr() => {
            // --help and --version are not errors.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // A usage error (2), on one line: clap's usage block and blank lines are left out.
            eprintln!("{}", dptrace::usage::usage_error_line(&e, std::env::args().skip(1)));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().thread_name("dptrace").enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dptrace: error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    // A panic is a bug, yet still the tool failing (2). Unwinding has dropped the session, and
    // with it every probe, by the time it is caught here.
    let run = std::panic::AssertUnwindSafe(|| {
        runtime.block_on(async {
            match cli.command {
                Command::Check { json } => dptrace::check::check(json).await,
                Command::Trace(args) => commands::trace(*args).await,
                Command::Report(args) => dptrace::report::report(&args),
                Command::Lab { action: LabAction::List } => lab::list(),
                Command::Lab { action: LabAction::Run { names, all, json, verbose, backends } } => {
                    lab::run(&names, all, json, verbose, backends.probe_options(DEFAULT_BUFFER_BYTES)).await
                }
                Command::Generate { kind } => dptrace::generate::generate(kind, &mut std::io::stdout().lock())
                    .map(|()| Outcome::Ok)
                    .map_err(|e| anyhow::anyhow!("cannot write to standard output: {e}")),
            }
        })
    });
    let result = std::panic::catch_unwind(run).unwrap_or_else(|_| {
        Err(anyhow::anyhow!("internal error (a bug in dptrace: the panic above says where; please report it); nothing it attached stays attached"))
    });
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Problem) => ExitCode::from(1),
        Err(e) => {
            // One line, whatever the messages of its sources hold.
            eprintln!("dptrace: error: {}", dptrace::usage::one_line(&dptrace::probes::error_chain(e.as_ref())));
            ExitCode::from(2)
        }
    }
}
