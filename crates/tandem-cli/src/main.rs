//! `tandem`: run Llama-family models on the CPU (and, later, WebGPU and CUDA).

mod backend;
mod bench;
mod bench_batch;
mod inspect;
mod run;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "tandem", version, about = "LLM inference for the browser and the server, from one engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streamed to stdout.
    Run(run::RunArgs),
    /// Measure prefill and decode speed.
    Bench(bench::BenchArgs),
    /// Describe a model: architecture, hyper-parameters, tensors, sizes.
    Inspect(inspect::InspectArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Bench(args) => bench::bench(args),
        Command::Inspect(args) => inspect::inspect(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

/// The model path given, or the default model (fetched on first use).
fn model_path(given: Option<std::path::PathBuf>) -> tandem_core::Result<std::path::PathBuf> {
    match given {
        Some(p) => Ok(p),
        None => tandem_core::default_model::ensure(&mut |line| eprintln!("{line}")),
    }
}
