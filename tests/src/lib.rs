//! tandem's shared backend test suite.
//!
//! Every backend runs the same generated cases ([`cases`]) against the CPU backend in reference
//! mode, compared with a normalized error and a tolerance set per op and dtype ([`tolerance`]),
//! never per backend. Instantiate it for a backend with [`conformance_suite!`].

#[cfg(not(target_arch = "wasm32"))]
pub mod batch;
pub mod cases;
#[cfg(not(target_arch = "wasm32"))]
pub mod constrained;
#[cfg(not(target_arch = "wasm32"))]
pub mod e2e;
#[cfg(not(target_arch = "wasm32"))]
pub mod families;
pub mod harness;
#[cfg(not(target_arch = "wasm32"))]
pub mod kquant;
#[cfg(not(target_arch = "wasm32"))]
pub mod lora;
#[cfg(not(target_arch = "wasm32"))]
pub mod lora_smollm;
pub mod rng;
#[cfg(not(target_arch = "wasm32"))]
pub mod speculate;

pub use cases::{cases_for, Case, Init, OPS};
pub use harness::{
    check_backend_op, check_batch_invariance, run_case_async, tolerance, OpSummary, Tol,
};
#[cfg(not(target_arch = "wasm32"))]
pub use harness::{check_invariance, check_op, run_case};

/// One `#[test]` per op for a backend. `$make` is an expression usable as
/// `Fn() -> Result<B, String>`; an `Err(reason)` (no device, say) prints
/// `SKIP <backend>: <reason>` and the test returns.
///
/// ```text
/// tandem_tests::conformance_suite!(cpu_fast, || tandem_cpu::CpuBackend::fast(2).map_err(|e| e.to_string()));
/// ```
#[macro_export]
macro_rules! conformance_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn check(op: &str) {
                $crate::check_op($make, stringify!($name), op);
            }

            #[test]
            fn embed() {
                check("embed");
            }
            #[test]
            fn rms_norm() {
                check("rms_norm");
            }
            #[test]
            fn matmul() {
                check("matmul");
            }
            #[test]
            fn rope() {
                check("rope");
            }
            #[test]
            fn kv_write() {
                check("kv_write");
            }
            #[test]
            fn attention_prefill() {
                check("attention_prefill");
            }
            #[test]
            fn attention_decode() {
                check("attention_decode");
            }
            #[test]
            fn swiglu() {
                check("swiglu");
            }
            #[test]
            fn geglu() {
                check("geglu");
            }
            #[test]
            fn softcap() {
                check("softcap");
            }
            #[test]
            fn hadamard() {
                check("hadamard");
            }
            #[test]
            fn moe_route() {
                check("moe_route");
            }
            #[test]
            fn moe_matmul() {
                check("moe_matmul");
            }
            #[test]
            fn moe_sum() {
                check("moe_sum");
            }
            #[test]
            fn add() {
                check("add");
            }
            #[test]
            fn argmax() {
                check("argmax");
            }
            #[test]
            fn sample() {
                check("sample");
            }
            #[test]
            fn mask_logits() {
                check("mask_logits");
            }
            #[test]
            fn copy_rows() {
                check("copy_rows");
            }
            #[test]
            fn lora_shrink() {
                check("lora_shrink");
            }
            #[test]
            fn lora_expand() {
                check("lora_expand");
            }
            #[test]
            fn batch_invariance_lora() {
                $crate::check_invariance($make, stringify!($name), "lora");
            }
            #[test]
            fn batch_invariance_matmul() {
                $crate::check_invariance($make, stringify!($name), "matmul");
            }
            #[test]
            fn batch_invariance_attention() {
                $crate::check_invariance($make, stringify!($name), "attention");
            }
            #[test]
            fn batch_invariance_moe_matmul() {
                $crate::check_invariance($make, stringify!($name), "moe_matmul");
            }
        }
    };
}

/// One `#[test]` per model family (safetensors and GGUF, opened and streamed) for a backend, against transformers'
/// references ([`families`]). `$make` is as in [`conformance_suite!`].
#[macro_export]
macro_rules! families_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use $crate::families::{check, Format};

            fn run(family: &str) {
                let make = $make;
                for format in Format::ALL {
                    let backend = match make() {
                        Ok(b) => b,
                        Err(reason) => {
                            eprintln!("SKIP {}: {reason}", stringify!($name));
                            return;
                        }
                    };
                    match check(backend, family, format) {
                        Ok(line) => eprintln!("{line}"),
                        Err(e) => panic!("{e}"),
                    }
                }
            }

            #[test]
            fn qwen3() {
                run("qwen3");
            }
            #[test]
            fn qwen3_moe() {
                run("qwen3_moe");
            }
            #[test]
            fn gemma2() {
                run("gemma2");
            }
            #[test]
            fn gemma3() {
                run("gemma3");
            }
            #[test]
            fn phi3() {
                run("phi3");
            }
            #[test]
            fn mistral() {
                run("mistral");
            }
            #[test]
            fn mixtral() {
                run("mixtral");
            }
        }
    };
}
