//! Shader modules, pipelines and bind groups, created once and cached.
//!
//! Every shader binds a uniform parameter block at binding 0 (a slot of the step's uniform
//! arena, selected with a dynamic offset) and its storage buffers at bindings 1... Layouts are
//! fixed per shader; pipelines are cached per (shader, entry point, override constants) and
//! bind groups per (shader, buffers), so a steady-state decode step creates none.

use std::collections::HashMap;

/// Bytes of one uniform slot as the shaders see it (every Params struct is smaller).
pub(crate) const PARAM_BYTES: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Shader {
    Embed,
    RmsNorm,
    Matmul,
    MatmulF16Native,
    Rope,
    KvWrite,
    AttentionPrefill,
    AttentionDecode,
    Swiglu,
    Geglu,
    Softcap,
    Hadamard,
    MoeRoute,
    MoeMatmul,
    MoeSum,
    Add,
    Argmax,
    Sample,
    MaskLogits,
    CopyRows,
    Lora,
}

impl Shader {
    pub(crate) const ALL: [Shader; 21] = [
        Shader::Embed,
        Shader::RmsNorm,
        Shader::Matmul,
        Shader::MatmulF16Native,
        Shader::Rope,
        Shader::KvWrite,
        Shader::AttentionPrefill,
        Shader::AttentionDecode,
        Shader::Swiglu,
        Shader::Geglu,
        Shader::Softcap,
        Shader::Hadamard,
        Shader::MoeRoute,
        Shader::MoeMatmul,
        Shader::MoeSum,
        Shader::Add,
        Shader::Argmax,
        Shader::Sample,
        Shader::MaskLogits,
        Shader::CopyRows,
        Shader::Lora,
    ];

    /// The WGSL module: the shader's file, with shaders/kquant.wgsl appended to those that
    /// read GGUF block types, shaders/attention_kv.wgsl (the cache loads) to both attention
    /// modules, shaders/tanh.wgsl to those that soft-cap or gate with tanh, and
    /// shaders/matmul_tiled.wgsl (the prompt rows' kernel) to both matmul modules. The expert
    /// matmul is matmul.wgsl's decode arithmetic, called from shaders/moe_matmul.wgsl's entry
    /// points (so each of its rows is a decode row's bits).
    pub(crate) fn source(self) -> &'static str {
        match self {
            Shader::Embed => concat!(
                include_str!("../../../shaders/embed.wgsl"),
                include_str!("../../../shaders/kquant.wgsl")
            ),
            Shader::RmsNorm => include_str!("../../../shaders/rms_norm.wgsl"),
            Shader::Matmul => concat!(
                include_str!("../../../shaders/matmul.wgsl"),
                include_str!("../../../shaders/matmul_tiled.wgsl"),
                include_str!("../../../shaders/kquant.wgsl")
            ),
            Shader::MatmulF16Native => concat!(
                include_str!("../../../shaders/matmul_f16_native.wgsl"),
                include_str!("../../../shaders/matmul_tiled.wgsl")
            ),
            Shader::Rope => include_str!("../../../shaders/rope.wgsl"),
            Shader::KvWrite => include_str!("../../../shaders/kv_write.wgsl"),
            Shader::AttentionPrefill => concat!(
                include_str!("../../../shaders/attention_prefill.wgsl"),
                include_str!("../../../shaders/attention_kv.wgsl"),
                include_str!("../../../shaders/tanh.wgsl")
            ),
            Shader::AttentionDecode => concat!(
                include_str!("../../../shaders/attention_decode.wgsl"),
                include_str!("../../../shaders/attention_kv.wgsl"),
                include_str!("../../../shaders/tanh.wgsl")
            ),
            Shader::Swiglu => include_str!("../../../shaders/swiglu.wgsl"),
            Shader::Geglu => concat!(
                include_str!("../../../shaders/geglu.wgsl"),
                include_str!("../../../shaders/tanh.wgsl")
            ),
            Shader::Softcap => concat!(
                include_str!("../../../shaders/softcap.wgsl"),
                include_str!("../../../shaders/tanh.wgsl")
            ),
            Shader::Hadamard => include_str!("../../../shaders/hadamard.wgsl"),
            Shader::MoeRoute => include_str!("../../../shaders/moe_route.wgsl"),
            Shader::MoeMatmul => concat!(
                include_str!("../../../shaders/matmul.wgsl"),
                include_str!("../../../shaders/moe_matmul.wgsl"),
                include_str!("../../../shaders/kquant.wgsl")
            ),
            Shader::MoeSum => include_str!("../../../shaders/moe_sum.wgsl"),
            Shader::Add => include_str!("../../../shaders/add.wgsl"),
            Shader::Argmax => include_str!("../../../shaders/argmax.wgsl"),
            Shader::Sample => include_str!("../../../shaders/sample.wgsl"),
            Shader::MaskLogits => include_str!("../../../shaders/mask_logits.wgsl"),
            Shader::CopyRows => include_str!("../../../shaders/copy_rows.wgsl"),
            Shader::Lora => include_str!("../../../shaders/lora.wgsl"),
        }
    }

    /// Read-only flag of each storage binding 1.. (as declared in the WGSL).
    pub fn storage(self) -> &'static [bool] {
        match self {
            Shader::Embed => &[true, true, false],
            Shader::RmsNorm => &[true, true, false],
            Shader::Matmul | Shader::MatmulF16Native => &[true, true, true, false],
            Shader::Rope => &[false, true, true],
            Shader::KvWrite => &[true, true, false, false, true],
            Shader::AttentionPrefill => &[true, true, true, true, true, true, false],
            Shader::AttentionDecode => &[true, true, true, true, true, true, false, false],
            Shader::Swiglu | Shader::Geglu => &[true, true, false],
            Shader::Softcap | Shader::Hadamard => &[false],
            Shader::MoeRoute => &[true, false, false],
            // matmul.wgsl's x, w, bias (unused: x bound again), out; then the ids.
            Shader::MoeMatmul => &[true, true, true, false, true],
            Shader::MoeSum => &[true, true, false],
            Shader::Add => &[false, true],
            Shader::Argmax => &[true, false],
            Shader::Sample => &[true, true, false],
            Shader::MaskLogits => &[false, true, true],
            Shader::CopyRows => &[true, false],
            Shader::Lora => &[true, true, true, true, false],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Shader::Embed => "embed",
            Shader::RmsNorm => "rms_norm",
            Shader::Matmul => "matmul",
            Shader::MatmulF16Native => "matmul_f16_native",
            Shader::Rope => "rope",
            Shader::KvWrite => "kv_write",
            Shader::AttentionPrefill => "attention_prefill",
            Shader::AttentionDecode => "attention_decode",
            Shader::Swiglu => "swiglu",
            Shader::Geglu => "geglu",
            Shader::Softcap => "softcap",
            Shader::Hadamard => "hadamard",
            Shader::MoeRoute => "moe_route",
            Shader::MoeMatmul => "moe_matmul",
            Shader::MoeSum => "moe_sum",
            Shader::Add => "add",
            Shader::Argmax => "argmax",
            Shader::Sample => "sample",
            Shader::MaskLogits => "mask_logits",
            Shader::CopyRows => "copy_rows",
            Shader::Lora => "lora",
        }
    }
}

/// A pipeline: shader, entry point and override constants (name, value).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PipeKey {
    pub shader: Shader,
    pub entry: &'static str,
    pub constants: Vec<(&'static str, u32)>,
}

impl PipeKey {
    pub fn new(shader: Shader, entry: &'static str) -> Self {
        PipeKey { shader, entry, constants: vec![] }
    }
    pub fn with(mut self, name: &'static str, value: u32) -> Self {
        self.constants.push((name, value));
        self
    }
}

struct Layout {
    bind: wgpu::BindGroupLayout,
    pipeline: wgpu::PipelineLayout,
}

#[derive(Default)]
pub(crate) struct Cache {
    modules: HashMap<Shader, wgpu::ShaderModule>,
    layouts: HashMap<Shader, Layout>,
    pipelines: HashMap<PipeKey, wgpu::ComputePipeline>,
    /// (shader, uniform arena uid, storage buffer uids) -> bind group.
    bind_groups: HashMap<(Shader, u64, Vec<u64>), wgpu::BindGroup>,
    pub pipelines_created: u64,
    pub bind_groups_created: u64,
}

impl Cache {
    fn layout(&mut self, device: &wgpu::Device, shader: Shader) -> &Layout {
        self.layouts.entry(shader).or_insert_with(|| {
            let mut entries = vec![wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: wgpu::BufferSize::new(PARAM_BYTES),
                },
                count: None,
            }];
            for (i, &read_only) in shader.storage().iter().enumerate() {
                entries.push(wgpu::BindGroupLayoutEntry {
                    binding: i as u32 + 1,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                });
            }
            let bind = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(shader.name()),
                entries: &entries,
            });
            let pipeline = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(shader.name()),
                bind_group_layouts: &[Some(&bind)],
                immediate_size: 0,
            });
            Layout { bind, pipeline }
        })
    }

    pub fn pipeline(&mut self, device: &wgpu::Device, key: &PipeKey) -> wgpu::ComputePipeline {
        if let Some(p) = self.pipelines.get(key) {
            return p.clone();
        }
        let module = self
            .modules
            .entry(key.shader)
            .or_insert_with(|| {
                device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(key.shader.name()),
                    source: wgpu::ShaderSource::Wgsl(key.shader.source().into()),
                })
            })
            .clone();
        let layout = self.layout(device, key.shader).pipeline.clone();
        let constants: Vec<(&str, f64)> =
            key.constants.iter().map(|&(n, v)| (n, v as f64)).collect();
        let p = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(key.entry),
            layout: Some(&layout),
            module: &module,
            entry_point: Some(key.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants,
                // Every kernel writes its workgroup memory before reading it.
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        self.pipelines_created += 1;
        self.pipelines.insert(key.clone(), p.clone());
        p
    }

    pub fn bind_group(
        &mut self,
        device: &wgpu::Device,
        shader: Shader,
        arena: (u64, &wgpu::Buffer),
        bufs: &[(u64, wgpu::Buffer)],
    ) -> wgpu::BindGroup {
        let key = (shader, arena.0, bufs.iter().map(|b| b.0).collect::<Vec<_>>());
        if let Some(g) = self.bind_groups.get(&key) {
            return g.clone();
        }
        let layout = self.layout(device, shader).bind.clone();
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: arena.1,
                offset: 0,
                size: wgpu::BufferSize::new(PARAM_BYTES),
            }),
        }];
        for (i, (_, b)) in bufs.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: b.as_entire_binding(),
            });
        }
        let g = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(shader.name()),
            layout: &layout,
            entries: &entries,
        });
        self.bind_groups_created += 1;
        self.bind_groups.insert(key, g.clone());
        g
    }

    /// Drops every cached bind group that references one of `uids` (freed or replaced buffers).
    pub fn forget(&mut self, uids: &[u64]) {
        if uids.is_empty() {
            return;
        }
        self.bind_groups
            .retain(|(_, a, bufs), _| !uids.contains(a) && !bufs.iter().any(|b| uids.contains(b)));
    }
}
