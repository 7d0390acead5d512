"""The device's two ceilings, measured through PyTorch (cuBLAS) on the device machine, in the
same run as tandem's benchmarks: device-to-device copy bandwidth (bytes read + written) and the
bf16 matrix rate, both on random data, timed with CUDA events (median of repeats after
warm-ups). The matrix rate is also measured at the shapes of Llama-3.1-8B's prefill at 512
tokens, which is what tandem's prefill is compared with. Prints one JSON object per line.
"""
import json
import statistics

import torch


def timed(fn, warmup=3, reps=15):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ms = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ms.append(a.elapsed_time(b))
    return statistics.median(ms)


def main():
    dev = torch.cuda.get_device_properties(0)
    print(json.dumps({"device": torch.cuda.get_device_name(0), "sms": dev.multi_processor_count,
                      "l2_mb": dev.L2_cache_size / 2**20, "torch": torch.__version__,
                      "cuda": torch.version.cuda}))
    n = 1 << 30
    src = torch.randint(0, 255, (n,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = timed(lambda: dst.copy_(src))
    print(json.dumps({"ceiling": "copy", "bytes": n, "ms": ms, "gb_s": 2 * n / ms / 1e6}))
    del src, dst

    shapes = [(8192, 8192, 8192), (512, 4096, 4096), (512, 1024, 4096), (512, 14336, 4096),
              (512, 4096, 14336), (512, 128256, 4096)]
    for m, nn, k in shapes:
        # Several input sets so that repeats do not run out of L2.
        sets = [(torch.randn(m, k, device="cuda", dtype=torch.bfloat16),
                 torch.randn(k, nn, device="cuda", dtype=torch.bfloat16)) for _ in range(3)]
        i = [0]

        def mm():
            a, b = sets[i[0] % 3]
            i[0] += 1
            return a @ b

        ms = timed(mm)
        print(json.dumps({"ceiling": "bf16_gemm", "m": m, "n": nn, "k": k, "ms": ms,
                          "tflop_s": 2 * m * nn * k / ms / 1e9}))
        del sets


if __name__ == "__main__":
    main()
