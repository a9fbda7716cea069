use clap::Parser;

fn main() {
    let cli = ambit_cli::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    if let Err(e) = ambit_cli::cli::run(cli) {
        eprintln!("ambit: {e:#}");
        std::process::exit(1);
    }
}
