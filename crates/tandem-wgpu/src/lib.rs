//! tandem on WebGPU.
