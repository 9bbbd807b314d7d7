//! The `keeptyping` binary: parses the command line and hands over to the library.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keeptyping::{app::App, config, demo, mock, shutdown, telemetry};

#[derive(Parser)]
#[command(version, about = "Keeps the \"Model is typing...\" indicator alive while a chatter composes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve(ConfigArg),
    /// The whole thing on loopback: mock OnlyFansAPI, the service, simulated chatters.
    Demo(demo::DemoArgs),
    /// Run the mock OnlyFansAPI alone.
    MockUpstream(mock::MockArgs),
    /// Validate and print the effective configuration, secrets redacted.
    CheckConfig(ConfigArg),
}

#[derive(clap::Args)]
struct ConfigArg {
    /// TOML configuration file.
    #[arg(long, env = "KEEPTYPING_CONFIG")]
    config: Option<PathBuf>,
}

/// Exit code for a configuration error (DESIGN.md).
const EXIT_CONFIG: u8 = 64;

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init(std::env::var("KEEPTYPING_LOG_FORMAT").is_ok_and(|v| v == "json"));
    let env: HashMap<String, String> = std::env::vars().collect();
    let result = match Cli::parse().command {
        Command::Serve(c) => match config::load(c.config.as_deref(), &env) {
            Err(e) => return config_error(&e),
            Ok(cfg) => match App::build(cfg).await {
                Ok(app) => app.run_until_stopped(shutdown::signal()).await,
                Err(e) => Err(e),
            },
        },
        Command::CheckConfig(c) => match config::load(c.config.as_deref(), &env) {
            Err(e) => return config_error(&e),
            Ok(cfg) => {
                print!("{}", cfg.settings.describe(&cfg.secrets));
                Ok(())
            }
        },
        Command::Demo(args) => demo::run(args).await,
        Command::MockUpstream(args) => mock::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keeptyping: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_error(e: &config::ConfigError) -> ExitCode {
    eprintln!("keeptyping: {e}");
    ExitCode::from(EXIT_CONFIG)
}
