// The emulator's launcher: runs a registered kernel over its grid, one block at a time, each
// CUDA thread of a block on its own OS thread (see cuda_emu.h). The OS threads are kept in a
// pool across blocks and launches: creating them per block cost more than the kernels.

#include "cuda_emu.h"

#include <mutex>
#include <semaphore>
#include <thread>

namespace {

struct Job {
    emu::Kernel kernel;
    const std::uint64_t* args;
    emu::Block* block;
    uint3_emu block_idx, block_dim, grid_dim;
};

class Pool {
   public:
    // One launch at a time, process-wide: static __shared__ storage allows one block at a time.
    std::mutex lock;

    void run_block(const Job& job) {
        const unsigned n = job.block_dim.x;
        while (workers_ < n) start_worker();
        job_ = job;
        remaining_.store(n);
        for (unsigned t = 0; t < n; ++t) go_[t]->release();
        done_.acquire();
    }

   private:
    Job job_{};
    unsigned workers_ = 0;
    std::vector<std::unique_ptr<std::binary_semaphore>> go_;
    std::binary_semaphore done_{0};
    std::atomic<unsigned> remaining_{0};

    void start_worker() {
        const unsigned t = workers_++;
        go_.push_back(std::make_unique<std::binary_semaphore>(0));
        std::binary_semaphore* go = go_.back().get();
        // Detached: the pool lives as long as the process.
        std::thread([this, t, go] {
            for (;;) {
                go->acquire();
                const Job& j = job_;
                emu::thread_idx = {t, 0, 0};
                emu::block_idx = j.block_idx;
                emu::block_dim = j.block_dim;
                emu::grid_dim = j.grid_dim;
                emu::block = j.block;
                j.kernel.call(j.kernel.f, j.args);
                // An exited thread no longer holds up the others' barriers, as on a GPU.
                j.block->warps[t / 32]->arrive_and_drop();
                j.block->block.arrive_and_drop();
                if (remaining_.fetch_sub(1) == 1) done_.release();
            }
        }).detach();
    }
};

// Never destroyed: its threads outlive main's return.
Pool& pool() {
    static Pool* p = new Pool;
    return *p;
}

}  // namespace

// 0: done; -1: no kernel of that name; -2: wrong argument count; -3: a bad block size.
extern "C" int emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned threads,
                          unsigned smem, const std::uint64_t* args, int nargs) {
    auto it = emu::registry().find(name);
    if (it == emu::registry().end()) return -1;
    if (it->second.nargs != nargs) return -2;
    if (threads == 0 || threads > 1024) return -3;
    Pool& p = pool();
    std::lock_guard<std::mutex> guard(p.lock);
    for (unsigned z = 0; z < gz; ++z)
        for (unsigned y = 0; y < gy; ++y)
            for (unsigned x = 0; x < gx; ++x) {
                emu::Block block(threads, smem);
                p.run_block(Job{it->second, args, &block, {x, y, z}, {threads, 1, 1}, {gx, gy, gz}});
            }
    return 0;
}
