//! The CPU fast mode against the CPU reference: on two workers and on one (the single-thread
//! split of every parallel loop must agree too), on every instruction set's kernels (each
//! suite an ISA forces prints SKIP where this machine lacks it).

use tandem_cpu::{CpuBackend, Isa};

fn on(threads: usize, isa: Isa) -> Result<CpuBackend, String> {
    CpuBackend::fast(threads).and_then(|b| b.with_isa(isa)).map_err(|e| e.to_string())
}

tandem_tests::conformance_suite!(cpu_fast_2, || CpuBackend::fast(2).map_err(|e| e.to_string()));
tandem_tests::conformance_suite!(cpu_fast_1, || CpuBackend::fast(1).map_err(|e| e.to_string()));
tandem_tests::conformance_suite!(cpu_fast_portable, || on(2, Isa::Portable));
tandem_tests::conformance_suite!(cpu_fast_avx2, || on(2, Isa::Avx2));
tandem_tests::conformance_suite!(cpu_fast_avx512, || on(2, Isa::Avx512));
tandem_tests::conformance_suite!(cpu_fast_avx512_1, || on(1, Isa::Avx512));
