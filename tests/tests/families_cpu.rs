//! Every model family on the CPU, reference and fast, against transformers (see
//! `tandem_tests::families`).

use tandem_cpu::CpuBackend;

tandem_tests::families_suite!(cpu_reference, || Ok::<_, String>(CpuBackend::reference()));
tandem_tests::families_suite!(cpu_fast, || CpuBackend::fast(2).map_err(|e| e.to_string()));
