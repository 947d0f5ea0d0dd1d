//! `gpush-bench`: see [`gpush_integration_tests::bench`]. Runs the
//! benchmark, or one of the roles it re-executes itself in.

use clap::Parser;
use gpush_integration_tests::bench::cli::{Cli, Role};
use gpush_integration_tests::bench::{api_baseline, baseline, client, load};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let role = match cli.role {
        None => return gpush_integration_tests::bench::run(cli.run),
        Some(Role::Client(args)) => client::run(args),
        Some(Role::ServeBaseline(args)) => baseline::run(args),
        Some(Role::ServeApiBaseline(args)) => api_baseline::run(args),
        Some(Role::Load(args)) => load::run(args),
    };
    match role {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpush-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
