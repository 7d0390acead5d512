//! Without a GPU: every op records launches whose kernel names, argument counts and argument
//! types match what NVRTC compiled from kernels/*.cu (parsed from the PTX), with blocks
//! within each kernel's launch bounds and shared memory within 48 KiB; every kernel entry is
//! reached by some op; and the index checks turn bad ids, slots and block tables into errors.
//! With no libnvrtc the PTX half prints SKIP with the reason.

use std::collections::{BTreeSet, HashMap};

use tandem_core::ops::*;
use tandem_core::{BufId, DType};

use crate::buffers::{Entry, Table};
use crate::kernels::{self, KernelFile};
use crate::launch::{Arch, Arg, Launch, Recorder};
use crate::ops;

struct Fake {
    table: Table,
    next_ptr: u64,
}

impl Fake {
    fn new() -> Self {
        Fake { table: Table::default(), next_ptr: 0x7000_0000 }
    }
    fn buf(&mut self, dtype: DType, numel: usize) -> BufId {
        let bytes = dtype.storage_bytes(numel);
        let ptr = self.next_ptr;
        self.next_ptr += (bytes as u64).next_multiple_of(256).max(256);
        self.table.insert(Entry { ptr, dtype, numel, bytes, shadow: Default::default() })
    }
    fn u32s(&mut self, v: &[u32]) -> BufId {
        let id = self.buf(DType::U32, v.len());
        self.table.shadow_write(id, bytemuck::cast_slice(v));
        id
    }
    fn record(&self, ops: &[Op]) -> tandem_core::Result<Vec<Launch>> {
        let (mut out, mut dyn_host, mut written) = (Vec::new(), Vec::new(), Vec::new());
        let mut r = Recorder {
            table: &self.table,
            modules: None,
            arch: &Arch { name: "sm_80".into(), cubin: true, sms: 4 },
            out: &mut out,
            dyn_host: &mut dyn_host,
            dyn_base: 0x1000,
            scratch: 0x2000,
            // A stand-in handle, so prompt-sized products record the tensor-core path.
            blas: Some(1),
            written_u32: &mut written,
        };
        for op in ops {
            ops::record(&mut r, op)?;
        }
        assert!(dyn_host.len() <= ops.iter().map(ops::dyn_slots).sum(), "more dyn slots than counted");
        Ok(out)
    }
}

const WEIGHTS: [DType; 5] = [DType::F32, DType::F16, DType::Q8_0, DType::Q4_0, DType::Q4_1];

/// Ops reaching every kernel entry: each weight dtype through embed and the three matmul
/// paths, both KV dtypes through kv_write and both attention kernels, and the small ops.
fn every_op(f: &mut Fake) -> Vec<Op> {
    let mut ops = vec![];
    for wdtype in WEIGHTS {
        let (vocab, dim) = (50, 64);
        let table = f.buf(wdtype, vocab * dim);
        let ids = f.u32s(&[3, 49, 0]);
        let out = f.buf(DType::F32, 3 * dim);
        ops.push(Op::Embed(Embed { table, dtype: wdtype, ids, out, n: 3, vocab, dim }));
        for (n, k, m, bias) in [(1, 64, 33, false), (4, 96, 9, false), (3, 37, 5, true), (20, 100, 70, true), (20, 64, 70, true)] {
            let x = f.buf(DType::F32, n * k);
            let w = f.buf(wdtype, m * k);
            let bias = bias.then(|| f.buf(DType::F32, m));
            let out = f.buf(DType::F32, n * m);
            ops.push(Op::Matmul(Matmul { x, w, wdtype, bias, out, n, k, m }));
        }
    }
    for kv_dtype in [DType::F32, DType::F16] {
        let (kvh, hd, bs, blocks) = (2, 64, 16, 8);
        let cache_k = f.buf(kv_dtype, blocks * bs * kvh * hd);
        let cache_v = f.buf(kv_dtype, blocks * bs * kvh * hd);
        let (k, v) = (f.buf(DType::F32, 5 * kvh * hd), f.buf(DType::F32, 5 * kvh * hd));
        let slots = f.u32s(&[0, 1, 17, 40, 127]);
        ops.push(Op::KvWrite(KvWrite { k, v, cache_k, cache_v, kv_dtype, slots, n: 5, kv_heads: kvh, head_dim: hd }));
        let block_table = f.u32s(&[3, 0, 7, 5, 1]);
        for (n, ctx_len) in [(1, 70), (5, 37)] {
            let q = f.buf(DType::F32, n * 8 * hd);
            let out = f.buf(DType::F32, n * 8 * hd);
            ops.push(Op::Attention(Attention {
                q,
                cache_k,
                cache_v,
                kv_dtype,
                block_table,
                out,
                n,
                ctx_len,
                heads: 8,
                kv_heads: kvh,
                head_dim: hd,
                block_size: bs,
                scale: 0.125,
            }));
        }
    }
    let (x, w, o) = (f.buf(DType::F32, 3 * 100), f.buf(DType::F32, 100), f.buf(DType::F32, 3 * 100));
    ops.push(Op::RmsNorm(RmsNorm { x, weight: w, out: o, n: 3, dim: 100, eps: 1e-5 }));
    let (positions, inv_freq) = (f.u32s(&[0, 5, 9]), f.buf(DType::F32, 32));
    let xr = f.buf(DType::F32, 3 * 4 * 64);
    ops.push(Op::Rope(Rope { x: xr, positions, inv_freq, n: 3, heads: 4, head_dim: 64 }));
    ops.push(Op::Swiglu(Swiglu { gate: x, up: w, out: o, len: 100 }));
    ops.push(Op::Add(Add { x: o, y: x, len: 300 }));
    ops.push(Op::CopyRows(CopyRows { src: x, dst: o, src_row: 1, n_rows: 2, width: 100 }));
    let tok = f.buf(DType::U32, 3);
    ops.push(Op::Argmax(Argmax { x, out: tok, n: 3, width: 100 }));
    ops.push(Op::Sample(Sample { x, out: tok, n: 3, width: 100, temperature: 0.8, top_k: 40, top_p: 0.9, min_p: 0.05, uniform: 0.3 }));
    ops
}

/// A PTX entry's parameter types (".u64", ".u32", ".f32") and its .maxntid bound.
struct PtxEntry {
    params: Vec<String>,
    max_threads: Option<u32>,
}

fn parse_ptx(ptx: &str) -> HashMap<String, PtxEntry> {
    let mut out = HashMap::new();
    for part in ptx.split(".entry ").skip(1) {
        let name = part[..part.find('(').expect("(")].trim().to_string();
        let close = part.find(')').expect(")");
        let params = part[part.find('(').unwrap() + 1..close]
            .split(',')
            .filter_map(|p| p.split_whitespace().skip_while(|t| *t != ".param").nth(1).map(str::to_string))
            .collect();
        let head = &part[close..part.find('{').unwrap_or(part.len())];
        let max_threads = head.find(".maxntid").map(|i| {
            let nums: Vec<u32> = head[i + 8..]
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .take(3)
                .map(|s| s.parse().unwrap())
                .collect();
            nums.iter().product()
        });
        out.insert(name, PtxEntry { params, max_threads });
    }
    out
}

fn arg_type(a: &Arg) -> &'static str {
    match a {
        Arg::Ptr(_) | Arg::U64(_) => ".u64",
        Arg::U32(_) => ".u32",
        Arg::F32(_) => ".f32",
    }
}

#[test]
fn launches_match_the_compiled_kernels() {
    let mut f = Fake::new();
    let ops = every_op(&mut f);
    let launches = f.record(&ops).expect("every op records");
    let gemms = launches.iter().filter(|l| l.gemm.is_some()).count();
    assert!(gemms >= 3, "the quantized prompt products go to cuBLAS ({gemms} products)");
    let launches: Vec<_> = launches.into_iter().filter(|l| l.gemm.is_none()).collect();
    for l in &launches {
        assert!(l.block >= 32 && l.block <= 1024 && l.block % 32 == 0, "{}: block {}", l.entry, l.block);
        assert!(l.smem <= 48 * 1024, "{}: {} bytes of shared memory", l.entry, l.smem);
    }
    if let Err(why) = kernels::nvrtc_present() {
        eprintln!("SKIP launches_match_the_compiled_kernels (PTX half): {why}");
        return;
    }
    let mut entries = HashMap::new();
    for file in KernelFile::ALL {
        let ptx = kernels::compile(file, &file.source(), &kernels::options("sm_80")).unwrap_or_else(|e| panic!("{e}"));
        entries.insert(file, parse_ptx(&ptx));
    }
    let mut used = BTreeSet::new();
    for l in &launches {
        let e = entries[&l.file].get(l.entry).unwrap_or_else(|| panic!("no kernel {} in kernels/{}.cu", l.entry, l.file.name()));
        let got: Vec<&str> = l.args[..l.nargs].iter().map(arg_type).collect();
        assert_eq!(got, e.params, "arguments of {}", l.entry);
        if let Some(max) = e.max_threads {
            assert!(l.block <= max, "{}: block {} over its launch bound {max}", l.entry, l.block);
        }
        used.insert((l.file.name(), l.entry.to_string()));
        // Each f16 weight kernel's bf16 twin takes the same arguments (the op code picks one
        // by dtype, so the two must stay interchangeable).
        if let Some(stem) = l.entry.strip_suffix("_f16").filter(|_| l.file != KernelFile::AttentionPrefill && l.file != KernelFile::AttentionDecode && l.file != KernelFile::KvWrite) {
            let twin = format!("{stem}_bf16");
            let t = entries[&l.file].get(&twin).unwrap_or_else(|| panic!("no {twin} beside {}", l.entry));
            assert_eq!(t.params, e.params, "arguments of {twin}");
            used.insert((l.file.name(), twin));
        }
    }
    for (file, es) in &entries {
        for name in es.keys() {
            assert!(used.contains(&(file.name(), name.clone())), "no op reaches kernel {name} of kernels/{}.cu", file.name());
        }
    }
    let bf16 = used.iter().filter(|(_, e)| e.ends_with("_bf16")).count();
    assert!(bf16 >= 5, "bf16 twins of embed and the four matmul kernels");
    eprintln!("{} launches over {} kernel entries match their PTX signatures", launches.len(), used.len());
}

#[test]
fn bad_indices_and_shapes_are_errors() {
    let mut f = Fake::new();
    let table = f.buf(DType::F32, 10 * 4);
    let ids = f.u32s(&[2, 10]);
    let out = f.buf(DType::F32, 8);
    let embed = Op::Embed(Embed { table, dtype: DType::F32, ids, out, n: 2, vocab: 10, dim: 4 });
    let e = f.record(&[embed]).err().expect("id 10 of a 10-row table").to_string();
    assert!(e.contains("ids[1] = 10"), "{e}");

    let cache = f.buf(DType::F16, 4 * 8); // 4 rows of 8, or 2 blocks of 2 rows
    let (k, v) = (f.buf(DType::F32, 8), f.buf(DType::F32, 8));
    let slots = f.u32s(&[4]);
    let kv = Op::KvWrite(KvWrite { k, v, cache_k: cache, cache_v: cache, kv_dtype: DType::F16, slots, n: 1, kv_heads: 1, head_dim: 8 });
    let e = f.record(&[kv]).err().expect("slot 4 of 4 rows").to_string();
    assert!(e.contains("slots[0] = 4"), "{e}");

    let bt = f.u32s(&[1, 9]);
    let q = f.buf(DType::F32, 16);
    let att = |n: usize, ctx_len: usize, head_dim: usize, kv_dtype: DType| {
        Op::Attention(Attention {
            q,
            cache_k: cache,
            cache_v: cache,
            kv_dtype,
            block_table: bt,
            out: q,
            n,
            ctx_len,
            heads: 1,
            kv_heads: 1,
            head_dim,
            block_size: 2,
            scale: 1.0,
        })
    };
    let e = f.record(&[att(1, 3, 8, DType::F16)]).err().expect("block 9 of 4").to_string();
    assert!(e.contains("block_table[1] = 9"), "{e}");
    assert!(f.record(&[att(1, 2, 8, DType::F16)]).is_ok(), "only the table's first entry is in the context");
    assert!(f.record(&[att(2, 1, 8, DType::F16)]).is_err(), "n > ctx_len");
    assert!(f.record(&[att(1, 2, 8, DType::F32)]).is_err(), "an f16 cache read as f32");

    let (x, w) = (f.buf(DType::F32, 4), f.buf(DType::Q4_0, 32));
    let mm = Op::Matmul(Matmul { x, w, wdtype: DType::Q4_0, bias: None, out: x, n: 1, k: 4, m: 9 });
    assert!(f.record(&[mm]).is_err(), "a weight smaller than m * k");
    let u = f.buf(DType::U32, 1);
    let sample = |temperature: f32, uniform: f32| {
        Op::Sample(Sample { x, out: u, n: 1, width: 4, temperature, top_k: 0, top_p: 1.0, min_p: 0.0, uniform })
    };
    assert!(f.record(&[sample(1.0, 0.5)]).is_ok());
    assert!(f.record(&[sample(0.0, 0.5)]).is_err(), "temperature 0");
    assert!(f.record(&[sample(1.0, 1.0)]).is_err(), "uniform 1");
    let rope = Op::Rope(Rope { x, positions: u, inv_freq: x, n: 1, heads: 1, head_dim: 3 });
    assert!(f.record(&[rope]).is_err(), "odd head_dim");
}

#[test]
fn decode_partitions_follow_the_table_capacity() {
    let op = |ctx_len| Attention {
        q: BufId(0),
        cache_k: BufId(0),
        cache_v: BufId(0),
        kv_dtype: DType::F16,
        block_table: BufId(0),
        out: BufId(0),
        n: 1,
        ctx_len,
        heads: 32,
        kv_heads: 8,
        head_dim: 128,
        block_size: 16,
        scale: 1.0,
    };
    // The scratch (and so the launch) is the same for every ctx_len the table holds.
    let a = ops::decode_scratch_floats(&op(1), 128);
    assert_eq!(a, ops::decode_scratch_floats(&op(2048), 128));
    assert_eq!(a, 32 * 64 * 130, "2048 positions in 64 partitions of 32");
    // A large context caps the partition count near 256 by lengthening partitions.
    assert_eq!(ops::decode_scratch_floats(&op(1), 8192), 32 * 256 * 130);
}
