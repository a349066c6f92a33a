use clap::Parser;
use leaktrace::{cli::Cli, demo, error};

fn main() {
    let cli = Cli::parse();
    // --verbose is about leaktrace's own steps; aya's loader chatter stays at warnings.
    let own_level = if cli.verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Warn
    };
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Warn)
        .filter_module("leaktrace", own_level)
        .format_timestamp(None)
        .init();
    if cli.demo_target {
        demo::run();
        return;
    }
    if let Err(error) = leaktrace::run(cli) {
        eprintln!("leaktrace: {error:#}");
        std::process::exit(error::exit_code(&error));
    }
}
