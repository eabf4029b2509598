//! The `kube-log-relay` command line (SPEC §3): parse arguments, load the configuration, start the
//! system, map errors to exit codes (0 success, 1 invalid configuration, 2 runtime failure).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use kube_log_relay::{app, config, demo, logging, runtime, sim};

/// mimalloc rather than glibc's malloc: chunks, batch entries and hyper's buffers are allocated
/// on the tailers' thread and freed on the receivers', and glibc spent a sixth of the relay's CPU
/// on that at 5,000 quiet streams (README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keeps the process's memory in 4 KiB pages. mimalloc's arenas are eligible for transparent
/// huge pages, and it returns unused parts of them to the kernel in small pieces: each later
/// touch of such a piece faulted in and zeroed a whole 2 MiB page again. At saturation that
/// zeroing was 40 % of the relay's CPU (`throughput` 0.85 → 0.49–0.53 CPU-s per million lines
/// without it). Nothing here gains from huge pages: the memory is queues of small lines.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and only sets a flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

#[derive(Parser)]
#[command(
    name = "kube-log-relay",
    version,
    about = "Tails Kubernetes container logs through the API server and pushes them to Grafana Loki, exactly once."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (for the default `run` command).
    #[arg(
        long,
        short,
        env = "KUBE_LOG_RELAY_CONFIG",
        default_value = "config.toml",
        global = true
    )]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (the default).
    Run,
    /// Validate the configuration, print every error, exit 1 when there is any.
    Check,
    /// Run the relay against an in-process simulator and print what it ships.
    Demo {
        /// Where the relay's HTTP endpoints listen.
        #[arg(long, default_value = "127.0.0.1:12345")]
        listen: String,
    },
    /// Run the Kubernetes API and Loki simulator.
    Sim {
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: String,
        /// Scenario file (pods, containers, scripts); the demo pods when absent.
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Serve HTTPS (HTTP/2 by ALPN) with a generated CA; writes the CA and a kubeconfig.
        #[arg(long)]
        tls: bool,
        /// Where --tls writes ca.crt, client.crt, client.key and kubeconfig (default: a new
        /// directory under the system's temporary directory).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// SETTINGS_MAX_CONCURRENT_STREAMS advertised on HTTP/2 connections.
        #[arg(long, default_value_t = sim::MAX_CONCURRENT_STREAMS)]
        max_concurrent_streams: u32,
    },
}

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.config),
        Command::Check => check(cli.config),
        Command::Demo { listen } => {
            logging::init(
                "info,kube_client=warn,kube_runtime=warn",
                config::LogFormat::Logfmt,
            );
            match runtime::system() {
                Ok(system) => runtime_result(system.block_on(demo::run(&listen))),
                Err(e) => runtime_result(Err(e.into())),
            }
        }
        Command::Sim {
            listen,
            scenario,
            tls,
            state_dir,
            max_concurrent_streams,
        } => {
            logging::init("info", config::LogFormat::Logfmt);
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => return runtime_result(Err(e.into())),
            };
            let options = sim::SimOptions {
                tls,
                state_dir,
                max_concurrent_streams,
                ..Default::default()
            };
            runtime_result(rt.block_on(sim::run(&listen, scenario.as_deref(), options)))
        }
    }
}

fn check(path: PathBuf) -> ExitCode {
    match config::load(&path) {
        Ok(_) => {
            println!("{}: configuration is valid", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{}: {} error(s)", path.display(), errors.0.len());
            eprintln!("{errors}");
            ExitCode::from(1)
        }
    }
}

fn run(path: PathBuf) -> ExitCode {
    let config = match config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!(
                "{}: invalid configuration, {} error(s):\n{errors}",
                path.display(),
                errors.0.len()
            );
            return ExitCode::from(1);
        }
    };
    logging::init(&config.server.log_level, config.server.log_format);
    let system = match runtime::system() {
        Ok(system) => system,
        Err(e) => return runtime_result(Err(e.into())),
    };
    runtime_result(
        system
            .block_on(app::run_until_signal(config, path))
            .map_err(anyhow::Error::from),
    )
}

fn runtime_result(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kube-log-relay: {}", logging::causes(e.as_ref()));
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}: {source}")]
    struct Read {
        path: &'static str,
        #[source]
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("kubernetes client: {0}")]
    struct Start(#[source] Read);

    #[derive(Debug, thiserror::Error)]
    #[error("positions")]
    struct Terse(#[source] std::io::Error);

    fn io() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")
    }

    #[test]
    fn each_cause_is_said_once_outermost_first() {
        let repeated = anyhow::Error::from(Start(Read {
            path: "/ca.crt",
            source: io(),
        }));
        assert_eq!(
            format!("{repeated:#}"),
            "kubernetes client: cannot read /ca.crt: no such file: cannot read /ca.crt: no such file: no such file",
            "what the chain says without deduplication"
        );
        assert_eq!(
            logging::causes(repeated.as_ref()),
            "kubernetes client: cannot read /ca.crt: no such file"
        );
        let terse = anyhow::Error::from(Terse(io()));
        assert_eq!(logging::causes(terse.as_ref()), "positions: no such file");
    }
}
