//! SHA-256 over a stream of chunks, for the worker to check a downloaded model file against the
//! digest its source gives (`js/cache.js`). A multi-GB file cannot be one buffer for
//! `crypto.subtle.digest`, and WebCrypto has no incremental hashing; the wasm module is loaded
//! in the worker anyway, so the `sha2` crate does it here. Each chunk is copied into wasm
//! memory by the binding, hashed and forgotten.
use sha2::Digest;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen::prelude::*;

/// An incremental SHA-256: `update` with each chunk in order, then `finish` for the hex digest.
#[cfg_attr(target_arch = "wasm32", wasm_bindgen)]
#[derive(Default)]
pub struct Sha256 {
    inner: sha2::Sha256,
}

#[cfg_attr(target_arch = "wasm32", wasm_bindgen)]
impl Sha256 {
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen(constructor))]
    pub fn new() -> Sha256 {
        Sha256::default()
    }

    /// The next bytes of the file.
    pub fn update(&mut self, chunk: &[u8]) {
        self.inner.update(chunk);
    }

    /// The digest of everything given, as 64 lowercase hex digits (as `sha256sum` prints it).
    pub fn finish(self) -> String {
        self.inner.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Sha256;

    fn digest(chunks: &[&[u8]]) -> String {
        let mut h = Sha256::new();
        for c in chunks {
            h.update(c);
        }
        h.finish()
    }

    #[test]
    fn known_digests() {
        // FIPS 180-2's examples.
        assert_eq!(
            digest(&[b""]),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            digest(&[b"abc"]),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn chunking_does_not_change_the_digest() {
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let whole = digest(&[&bytes]);
        let pieces: Vec<&[u8]> = bytes.chunks(63).collect();
        assert_eq!(digest(&pieces), whole);
        assert_eq!(digest(&[&bytes[..1], &bytes[1..999], &bytes[999..], b""]), whole);
    }
}
