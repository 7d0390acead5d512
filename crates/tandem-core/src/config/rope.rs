//! Rotary position embedding frequencies: the base, the scaling schemes, partial rotary.

use super::ModelConfig;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Llama 3.x frequency-dependent scaling.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position: usize,
    },
    /// Plain position interpolation: every frequency divided by `factor`.
    Linear {
        factor: f32,
    },
    /// LongRoPE (Phi-3, Phi-4-mini): every frequency divided by its own factor, the short
    /// list's for contexts up to `original_max_position`, the long list's beyond; cos and sin
    /// scaled by `attention_factor`.
    LongRope {
        short: Vec<f32>,
        long: Vec<f32>,
        original_max_position: usize,
        attention_factor: f32,
    },
}

impl RopeScaling {
    /// The factor lists' lengths (rot_dim / 2 each) and positive factors.
    pub(super) fn validate(&self, rot_dim: usize) -> Result<()> {
        let bad = |m: String| Err(Error::BadConfig(m));
        let positive = |x: f32| x.is_finite() && x > 0.0;
        match self {
            RopeScaling::None => Ok(()),
            RopeScaling::Linear { factor } if positive(*factor) => Ok(()),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position,
            } if positive(*factor)
                && positive(*low_freq_factor)
                && high_freq_factor > low_freq_factor
                && high_freq_factor.is_finite()
                && *original_max_position > 0 =>
            {
                Ok(())
            }
            RopeScaling::LongRope { short, long, original_max_position, attention_factor } => {
                for (name, list) in [("short_factor", short), ("long_factor", long)] {
                    if list.len() != rot_dim / 2 {
                        return bad(format!(
                            "rope_scaling.{name} has {} factors; the rotary dimension {rot_dim} needs {}",
                            list.len(),
                            rot_dim / 2
                        ));
                    }
                    if let Some(f) = list.iter().find(|&&f| !positive(f)) {
                        return bad(format!(
                            "rope_scaling.{name} holds {f}, not a positive factor"
                        ));
                    }
                }
                if *original_max_position == 0 || !positive(*attention_factor) {
                    return bad(format!(
                        "rope_scaling: original_max_position_embeddings {original_max_position} and attention_factor {attention_factor} must be positive"
                    ));
                }
                Ok(())
            }
            other => {
                bad(format!("rope_scaling {other:?} has a non-positive or inconsistent factor"))
            }
        }
    }
}

/// RoPE inverse frequencies, [rot_dim / 2], for base `theta` and `scaling`, in a model whose
/// sequences reach `context` positions (LongRoPE's choice of list).
pub fn inv_freq(theta: f32, rot_dim: usize, scaling: &RopeScaling, context: usize) -> Vec<f32> {
    let half = rot_dim / 2;
    (0..half)
        .map(|i| {
            let base = 1.0 / (theta as f64).powf(2.0 * i as f64 / rot_dim as f64);
            let f = match scaling {
                RopeScaling::None => base,
                RopeScaling::Linear { factor } => base / *factor as f64,
                RopeScaling::Llama3 {
                    factor,
                    low_freq_factor,
                    high_freq_factor,
                    original_max_position,
                } => {
                    let (factor, low, high) =
                        (*factor as f64, *low_freq_factor as f64, *high_freq_factor as f64);
                    let old = *original_max_position as f64;
                    let wavelen = 2.0 * std::f64::consts::PI / base;
                    if wavelen < old / high {
                        base
                    } else if wavelen > old / low {
                        base / factor
                    } else {
                        let smooth = (old / wavelen - low) / (high - low);
                        (1.0 - smooth) * base / factor + smooth * base
                    }
                }
                RopeScaling::LongRope { short, long, original_max_position, .. } => {
                    let list = if context > *original_max_position { long } else { short };
                    base / list[i] as f64
                }
            };
            f as f32
        })
        .collect()
}

impl ModelConfig {
    /// The global layers' RoPE inverse frequencies, [rot_dim / 2], at the model's longest
    /// context.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        inv_freq(self.rope_theta, self.rot_dim(), &self.rope_scaling, self.max_position)
    }

    /// The inverse frequencies of the global or the local (sliding) layers' RoPE for
    /// sequences of up to `context` positions.
    pub fn rope_inv_freq_for(&self, local: bool, context: usize) -> Vec<f32> {
        match (local, self.features.local_rope_theta) {
            (true, Some(t)) => inv_freq(t, self.rot_dim(), &RopeScaling::None, context),
            _ => inv_freq(self.rope_theta, self.rot_dim(), &self.rope_scaling, context),
        }
    }

    /// The factor RoPE multiplies cos and sin by (LongRoPE's attention factor; else 1).
    pub fn rope_scale(&self) -> f32 {
        match &self.rope_scaling {
            RopeScaling::LongRope { attention_factor, .. } => *attention_factor,
            _ => 1.0,
        }
    }
}

/// LongRoPE's default attention factor for a model stretched from `original` to `max`
/// positions: sqrt(1 + ln(max / original) / ln(original)), 1 when not stretched.
pub(super) fn longrope_attention_factor(max: usize, original: usize) -> f32 {
    let factor = max as f64 / original as f64;
    if factor <= 1.0 || original < 2 {
        1.0
    } else {
        (1.0 + factor.ln() / (original as f64).ln()).sqrt() as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Arch, Features};

    fn llama3(scaling: RopeScaling) -> ModelConfig {
        ModelConfig {
            arch: Arch::Llama,
            dim: 4096,
            n_layers: 1,
            n_heads: 32,
            n_kv_heads: 8,
            head_dim: 128,
            ffn_dim: 14336,
            vocab_size: 128256,
            max_position: 131072,
            rope_theta: 500000.0,
            rope_scaling: scaling,
            rms_norm_eps: 1e-5,
            tie_embeddings: false,
            qkv_bias: false,
            bos_token_id: None,
            eos_token_ids: vec![],
            features: Features::default(),
        }
    }

    #[test]
    fn llama3_scaling_keeps_high_frequencies_and_divides_low_ones() {
        let plain = llama3(RopeScaling::None).rope_inv_freq();
        let scaled = llama3(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position: 8192,
        })
        .rope_inv_freq();
        assert_eq!(plain.len(), 64);
        assert_eq!(plain[0], 1.0);
        for (i, (&p, &s)) in plain.iter().zip(&scaled).enumerate() {
            let wavelen = 2.0 * std::f32::consts::PI / p;
            if wavelen < 2048.0 {
                assert_eq!(s, p, "short wavelengths are untouched (i = {i})");
            } else if wavelen > 8192.0 {
                assert!(
                    (s - p / 8.0).abs() <= p * 1e-6,
                    "long wavelengths are divided by the factor (i = {i})"
                );
            } else {
                assert!(s < p && s > p / 8.0, "the band between blends smoothly (i = {i})");
            }
        }
        assert!(scaled.windows(2).all(|w| w[1] < w[0]), "frequencies stay ordered");
        let linear = llama3(RopeScaling::Linear { factor: 4.0 }).rope_inv_freq();
        assert!((linear[5] - plain[5] / 4.0).abs() < 1e-9);
    }
}
