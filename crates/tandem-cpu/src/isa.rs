//! The instruction set fast mode's kernels use: chosen once, when the backend is made, and
//! checked against the machine then, so every kernel behind it may assume its features.

use std::fmt;
use std::str::FromStr;

/// Which build of the hand-written kernels fast mode runs. Each has its own table of kernels
/// (`ops::matmul::Kernels`); a row's arithmetic is fixed by the ISA and the row's shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Plain loops the compiler vectorizes for the target's baseline: runs on any CPU.
    Portable,
    /// x86-64 with AVX2, FMA and F16C.
    Avx2,
    /// x86-64 with AVX-512 F/BW/DQ/VL and VNNI besides AVX2's: the AVX2 kernels' bits, faster,
    /// and the 16-bit integer prompt kernel for Q8_0.
    Avx512,
    /// wasm32 built with simd128 (a build-time feature: such a build runs nowhere else).
    Simd128,
}

/// The environment variable that overrides [`Isa::detect`]: `portable`, `avx2` or `avx512`.
pub const ISA_ENV: &str = "TANDEM_CPU_ISA";

impl Isa {
    /// Every ISA, most capable last.
    pub const ALL: [Isa; 4] = [Isa::Portable, Isa::Simd128, Isa::Avx2, Isa::Avx512];

    /// The most capable ISA this machine (and build) runs.
    pub fn detect() -> Isa {
        *Isa::ALL.iter().rev().find(|i| i.supported()).unwrap_or(&Isa::Portable)
    }

    /// The ISAs this machine runs, least capable first (what tests cover).
    pub fn supported_all() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.supported()).collect()
    }

    /// Whether this machine and build can run the ISA's kernels.
    pub fn supported(self) -> bool {
        match self {
            // A simd128 build's kernels are simd128 throughout.
            Isa::Portable => !cfg!(all(target_arch = "wasm32", target_feature = "simd128")),
            Isa::Simd128 => cfg!(all(target_arch = "wasm32", target_feature = "simd128")),
            Isa::Avx2 => x86::avx2(),
            Isa::Avx512 => x86::avx2() && x86::avx512(),
        }
    }

    /// The override in [`ISA_ENV`] (`TANDEM_CPU_AVX512=0`, the older switch, reads as `avx2`),
    /// or `None` when neither is set.
    pub fn from_env() -> Result<Option<Isa>, String> {
        if let Ok(v) = std::env::var(ISA_ENV) {
            return v.parse().map(Some).map_err(|e| format!("{ISA_ENV}: {e}"));
        }
        Ok(match std::env::var("TANDEM_CPU_AVX512") {
            Ok(v) if v == "0" => Some(Isa::Avx2),
            _ => None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Simd128 => "simd128",
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Isa {
    type Err = String;

    fn from_str(s: &str) -> Result<Isa, String> {
        Isa::ALL.into_iter().find(|i| i.name() == s.trim().to_ascii_lowercase()).ok_or_else(|| {
            format!("unknown instruction set {s:?} (portable, avx2, avx512 or simd128)")
        })
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    pub fn avx2() -> bool {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }

    pub fn avx512() -> bool {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512vnni")
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    pub fn avx2() -> bool {
        false
    }

    pub fn avx512() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::Isa;

    #[test]
    fn names_round_trip_and_detect_is_supported() {
        for i in Isa::ALL {
            assert_eq!(i.name().parse::<Isa>(), Ok(i));
        }
        assert!(" AVX2".parse::<Isa>().is_ok());
        assert!("sse".parse::<Isa>().is_err());
        assert!(Isa::detect().supported());
        assert!(Isa::supported_all().contains(&Isa::detect()));
    }
}
