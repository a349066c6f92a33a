use clap::Parser;
use leaktrace::{cli::Cli, demo, error};

fn main() {
    let cli = Cli::parse();
    env_logger::Builder::new()
        .filter_level(if cli.verbose {
            log::LevelFilter::Debug
        } else {
            log::LevelFilter::Warn
        })
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
