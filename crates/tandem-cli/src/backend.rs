//! Choosing a backend from the command line. The engine is generic over the backend, so each
//! command hands a [`WithBackend`] to [`dispatch`], which calls it with the one chosen.

use clap::{Args, ValueEnum};
use tandem_core::{Backend, Result};
use tandem_cpu::{CpuBackend, CpuMode};
use tandem_wgpu::{WgpuBackend, WgpuOptions};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// A GPU through WebGPU if one is present, else the CPU.
    Auto,
    /// The CPU, multithreaded.
    Cpu,
    /// The CPU's scalar reference mode: the oracle, slow.
    CpuReference,
    /// WebGPU through wgpu (Vulkan, Metal, DX12).
    Wgpu,
}

#[derive(Args, Clone)]
pub struct BackendArgs {
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendKind,
    /// CPU threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// wgpu: never use native shader-f16 (run the packed-u32 path browsers without it use).
    #[arg(long)]
    pub no_f16: bool,
}

/// A command body that runs on whichever backend was chosen.
pub trait WithBackend {
    fn call<B: Backend>(self, backend: B) -> Result<()>;
}

pub fn dispatch(args: &BackendArgs, user: impl WithBackend) -> Result<()> {
    match args.backend {
        BackendKind::Auto => match pollster::block_on(WgpuBackend::new(wgpu_options(args))) {
            Ok(gpu) if !gpu.is_software() => {
                eprintln!("backend: wgpu on {}", gpu.adapter_info());
                user.call(gpu)
            }
            found => {
                let why = match found {
                    Ok(gpu) => format!("{} is a software adapter", gpu.adapter_info()),
                    Err(e) => e.to_string(),
                };
                eprintln!("backend: cpu, {} threads ({why})", threads(args.threads));
                user.call(CpuBackend::new(CpuMode::Fast { threads: args.threads })?)
            }
        },
        BackendKind::Cpu => user.call(CpuBackend::new(CpuMode::Fast { threads: args.threads })?),
        BackendKind::CpuReference => user.call(CpuBackend::new(CpuMode::Reference)?),
        BackendKind::Wgpu => {
            let gpu = pollster::block_on(WgpuBackend::new(wgpu_options(args)))?;
            eprintln!("backend: wgpu on {}{}", gpu.adapter_info(), if gpu.uses_f16() { ", shader-f16" } else { "" });
            user.call(gpu)
        }
    }
}

fn wgpu_options(args: &BackendArgs) -> WgpuOptions {
    WgpuOptions { allow_f16: !args.no_f16, ..WgpuOptions::default() }
}

fn threads(n: usize) -> usize {
    if n == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        n
    }
}
