//! Choosing a backend from the command line. The engine is generic over the backend, so each
//! command hands a [`WithBackend`] to [`dispatch`], which calls it with the one chosen.

use clap::{Args, ValueEnum};
use tandem_core::{Backend, Result};
use tandem_cpu::{CpuBackend, CpuMode};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// A GPU through WebGPU if one is present, else the CPU.
    Auto,
    /// The CPU, multithreaded.
    Cpu,
    /// The CPU's scalar reference mode: the oracle, slow.
    CpuReference,
}

#[derive(Args, Clone)]
pub struct BackendArgs {
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendKind,
    /// CPU threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// A command body that runs on whichever backend was chosen.
pub trait WithBackend {
    fn call<B: Backend>(self, backend: B) -> Result<()>;
}

pub fn dispatch(args: &BackendArgs, user: impl WithBackend) -> Result<()> {
    match args.backend {
        BackendKind::Auto | BackendKind::Cpu => {
            if args.backend == BackendKind::Auto {
                eprintln!("backend: cpu ({} threads)", threads(args.threads));
            }
            user.call(CpuBackend::new(CpuMode::Fast { threads: args.threads })?)
        }
        BackendKind::CpuReference => user.call(CpuBackend::new(CpuMode::Reference)?),
    }
}

fn threads(n: usize) -> usize {
    if n == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        n
    }
}
