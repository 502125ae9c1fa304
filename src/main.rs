//! The `kefu` binary: parse the command line, start telemetry, run one command.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = kefu::cli::Cli::parse();
    kefu::telemetry::init(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            kefu::errln!("kefu: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    rt.block_on(kefu::cli::run(cli))
}
