//! The CPU fast mode against the CPU reference: on two workers and on one (the single-thread
//! split of every parallel loop must agree too), and with the AVX2 kernels off (the portable
//! loops other CPUs run).

use tandem_cpu::CpuBackend;

tandem_tests::conformance_suite!(cpu_fast_2, || CpuBackend::fast(2).map_err(|e| e.to_string()));
tandem_tests::conformance_suite!(cpu_fast_1, || CpuBackend::fast(1).map_err(|e| e.to_string()));
tandem_tests::conformance_suite!(cpu_fast_portable, || CpuBackend::fast(2)
    .map(|b| b.with_avx2(false))
    .map_err(|e| e.to_string()));
