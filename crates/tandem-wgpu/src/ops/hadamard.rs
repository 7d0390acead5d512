//! The orthonormal Walsh-Hadamard rotation of every run of `size` values, in place (the
//! rotation a quantized KV cache stores K and V under): one dispatch, a workgroup per tile of
//! [`TILE`] values (whole runs), the butterflies in workgroup memory.

use tandem_core::ops::Hadamard;
use tandem_core::Result;

use super::{fits_u32, groups_1d, Recorder};
use crate::pipelines::{PipeKey, Shader};

const OP: &str = "hadamard";

/// Values a workgroup rotates at once: shaders/hadamard.wgsl's TILE, the largest run it takes.
pub(crate) const TILE: usize = 1024;

pub(crate) fn record(r: &mut Recorder, op: &Hadamard) -> Result<()> {
    let x = r.buf(OP, "x", op.x)?;
    if op.len == 0 || op.size == 1 {
        return Ok(());
    }
    let len = fits_u32(OP, "len", op.len)?;
    // The reference's f32 scale, so both multiply by the same number.
    let scale = 1.0 / (op.size as f32).sqrt();
    r.push(
        PipeKey::new(Shader::Hadamard, "main"),
        vec![x],
        vec![len, op.size as u32, scale.to_bits()],
        groups_1d(op.len, TILE),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_tile_is_the_shaders() {
        let src = include_str!("../../../../shaders/hadamard.wgsl");
        assert!(src.contains(&format!("const TILE: u32 = {}u;", super::TILE)));
    }
}
