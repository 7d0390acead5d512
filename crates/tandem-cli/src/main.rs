//! `tandem`: run Llama-family models on the CPU (and, later, WebGPU and CUDA).

mod alloc_count;
mod backend;
mod bench;
mod bench_batch;
mod bench_lora;
mod bench_structured;
mod bench_verify;
mod inspect;
mod perplexity;
mod run;
mod serve;
mod speculate;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: alloc_count::Counting = alloc_count::Counting;

#[derive(Parser)]
#[command(
    name = "tandem",
    version,
    about = "LLM inference for the browser and the server, from one engine"
)]
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
    /// Serve models over HTTP with OpenAI's API (chat and text completions, streaming).
    Serve(serve::ServeArgs),
    /// Perplexity of a model over a text file, as llama.cpp's llama-perplexity measures it.
    Perplexity(perplexity::PerplexityArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Command::Run(args) => run::run(args).map_err(Into::into),
        Command::Bench(args) => bench::bench(args).map_err(Into::into),
        Command::Inspect(args) => inspect::inspect(args).map_err(Into::into),
        Command::Serve(args) => serve::serve(args),
        Command::Perplexity(args) => perplexity::perplexity(args).map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = e.source();
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
        None => tandem_tools::default_model::ensure(&mut |line| eprintln!("{line}")),
    }
}
