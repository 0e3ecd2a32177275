// runtime.cpp: the execution model behind cuda_host.h (fibers, barriers, warp rendezvous, cp.async
// queues, shared memory as NaN-filled TLS, fault recovery). Built once per harness version and linked
// into every host-compiled kernel module by tests/kernels/cuda_host.py.
#include "cuda_host.h"

#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <csetjmp>
#include <csignal>
#include <cstdarg>
#include <cstdio>
#include <deque>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <xmmintrin.h>
#endif
// Fibers switch with a few lines of assembly on x86-64 (no syscall), with ucontext elsewhere or when
// LIVEVSR_HOST_UCONTEXT is defined.
#if defined(__x86_64__) && !defined(LIVEVSR_HOST_UCONTEXT)
#define LIVEVSR_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

namespace livevsr_host {
namespace {

constexpr int kWarp = 32;
constexpr size_t kStackBytes = 128 * 1024;
constexpr size_t kGuardBytes = 4096;
// Shared memory before a block: NaN (as fp32 and as each bf16 half), or in every other block a huge
// finite value (3.4e38 as fp32 and as bf16), which fmaxf/fminf do not skip the way they skip NaN.
constexpr unsigned kFillPatterns[2] = {0x7fc07fc0u, 0x7f7f7f7fu};

// Modes of a block: the shared-memory fill, who runs next at a switch, and when cp.async copies land.
// Mode m: fill m % 2, schedule (m / 2) % 2, landing m / 4 (a launch rotates through them by block).
enum Sched { kRunAhead = 0, kRandom = 1 };  // run-ahead: one warp as far as barriers allow, then the next
enum Land { kLazy = 0, kEager = 1, kMixed = 2 };  // at the covering wait / at issue / per copy at random
constexpr int kModes = 12;

enum Kind { kNone, kShfl, kMatch, kBallot, kLdsm, kLdsmTrans, kMma };
const char* kind_name(int k) {
    static const char* names[] = {"none", "shfl.xor", "match.any", "ballot", "ldmatrix.x4", "ldmatrix.x4.trans",
                                  "mma.m16n8k16"};
    return names[k];
}

enum State { kReady, kAtBarrier, kAtWarp, kDone };

struct Copy {
    unsigned dst;
    unsigned char bytes[16];
};

struct Fiber {
    void* sp = nullptr;
#if !defined(LIVEVSR_ASM_SWITCH)
    ucontext_t uc;
#endif
    char* stack_lo = nullptr;  // usable stack [stack_lo, stack_lo + kStackBytes)
    uint3 tid{};
    int linear = 0, warp = 0, lane = 0, rank = 0;
    State state = kReady;
    std::vector<Copy> open;                     // cp.async copies not yet committed
    std::deque<std::vector<Copy>> committed;    // committed groups not yet landed, oldest first
};

struct Deposit {
    unsigned mask;
    unsigned u[4];
    float f[4];
    unsigned b0, b1;
    int imm;
};

struct Warp {
    int arrived = 0;
    int kind = kNone;
    Deposit dep[kWarp];
    unsigned out_u[kWarp][4];
    float out_f[kWarp][4];
};

struct Worker {
    const LaunchConfig* cfg = nullptr;
    const char* name = nullptr;
    Body body = nullptr;
    void* ctx = nullptr;
    char* tls = nullptr;  // this OS thread's TLS block of the module = the block's shared memory
    size_t tls_bytes = 0;
    char* stacks = nullptr;
    size_t stacks_bytes = 0;
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    std::vector<uint64_t> ready;  // bit per rank
    std::vector<int> by_rank;
    Fiber* cur = nullptr;
    void* sched_sp = nullptr;
#if !defined(LIVEVSR_ASM_SWITCH)
    ucontext_t sched_uc;
#endif
    uint3 block{};
    dim3 bdim{}, gdim{};
    int live = 0, at_barrier = 0;
    int sched = kRunAhead, land = kLazy;
    std::mt19937_64 rng;
    bool in_block = false;
    sigjmp_buf jb;
    std::string error;
};

pthread_key_t g_key;
std::once_flag g_once;
struct sigaction g_prev_segv, g_prev_bus;

Worker* worker() { return static_cast<Worker*>(pthread_getspecific(g_key)); }

[[noreturn]] void fail_in(Worker* w, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
[[noreturn]] void fail_in(Worker* w, const char* fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    char where[160];
    if (w->cur != nullptr) {
        snprintf(where, sizeof where, " (block (%u,%u,%u), thread (%u,%u,%u))", w->block.x, w->block.y,
                 w->block.z, w->cur->tid.x, w->cur->tid.y, w->cur->tid.z);
    } else {
        snprintf(where, sizeof where, " (block (%u,%u,%u))", w->block.x, w->block.y, w->block.z);
    }
    w->error = std::string(w->name) + ": " + buf + where;
    siglongjmp(w->jb, 1);
}

#define FAIL(...) fail_in(worker(), __VA_ARGS__)

void on_fault(int sig, siginfo_t* si, void* uc) {
    Worker* w = worker();
    if (w != nullptr && w->in_block) {
        fail_in(w, "illegal memory access at %#lx (signal %d)", (unsigned long)si->si_addr, sig);
    }
    struct sigaction& prev = sig == SIGSEGV ? g_prev_segv : g_prev_bus;
    if (prev.sa_flags & SA_SIGINFO) {
        prev.sa_sigaction(sig, si, uc);
    } else if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN) {
        prev.sa_handler(sig);
    } else {
        signal(sig, SIG_DFL);
        raise(sig);
    }
}

void init_once() {
    pthread_key_create(&g_key, nullptr);
    struct sigaction sa {};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_prev_segv);
    sigaction(SIGBUS, &sa, &g_prev_bus);
}

// ---- this module's TLS block (= shared memory) ----

thread_local char g_tls_anchor;  // makes sure the module has a TLS block, and allocates it in a thread

struct TlsQuery {
    uintptr_t code;
    char* base;
    size_t bytes;
};

int find_tls(dl_phdr_info* info, size_t, void* data) {
    auto* q = static_cast<TlsQuery*>(data);
    bool mine = false;
    const ElfW(Phdr)* tls = nullptr;
    for (int i = 0; i < info->dlpi_phnum; ++i) {
        const ElfW(Phdr)& ph = info->dlpi_phdr[i];
        const uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
        if (ph.p_type == PT_LOAD && q->code >= lo && q->code < lo + ph.p_memsz) mine = true;
        if (ph.p_type == PT_TLS) tls = &ph;
    }
    if (!mine) return 0;
    if (tls != nullptr) {
        q->base = static_cast<char*>(info->dlpi_tls_data);
        q->bytes = tls->p_memsz;
    }
    return 1;
}

void locate_tls(Worker* w) {
    volatile char* anchor = &g_tls_anchor;
    (void)*anchor;
    TlsQuery q{reinterpret_cast<uintptr_t>(&find_tls), nullptr, 0};
    dl_iterate_phdr(find_tls, &q);
    if (q.base == nullptr || q.bytes == 0) {
        w->error = std::string(w->name) + ": cannot find the module's TLS block (shared memory)";
        return;
    }
    w->tls = q.base;
    w->tls_bytes = q.bytes;
}

// ---- fibers ----

extern "C" [[noreturn]] void livevsr_fiber_main(Fiber* f);

#if defined(LIVEVSR_ASM_SWITCH)
extern "C" void livevsr_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .globl livevsr_switch
    .hidden livevsr_switch
    .type livevsr_switch, @function
livevsr_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size livevsr_switch, .-livevsr_switch

    .globl livevsr_fiber_entry
    .hidden livevsr_fiber_entry
    .type livevsr_fiber_entry, @function
livevsr_fiber_entry:
    movq %r12, %rdi
    call livevsr_fiber_main
    ud2
    .size livevsr_fiber_entry, .-livevsr_fiber_entry
)");
extern "C" void livevsr_fiber_entry();

void prepare_fiber(Worker*, Fiber& f) {
    uintptr_t top = reinterpret_cast<uintptr_t>(f.stack_lo + kStackBytes) & ~uintptr_t{15};
    auto* slot = reinterpret_cast<uintptr_t*>(top - 8 - 6 * 8);
    slot[0] = 0;                                              // r15
    slot[1] = 0;                                              // r14
    slot[2] = 0;                                              // r13
    slot[3] = reinterpret_cast<uintptr_t>(&f);                // r12: the fiber
    slot[4] = 0;                                              // rbx
    slot[5] = 0;                                              // rbp
    slot[6] = reinterpret_cast<uintptr_t>(&livevsr_fiber_entry);  // return address
    f.sp = slot;
}
void to_fiber(Worker* w, Fiber& f) { livevsr_switch(&w->sched_sp, f.sp); }
void to_scheduler(Worker* w, Fiber& f) { livevsr_switch(&f.sp, w->sched_sp); }
#else
void ucontext_entry(unsigned hi, unsigned lo) {
    livevsr_fiber_main(reinterpret_cast<Fiber*>((static_cast<uintptr_t>(hi) << 32) | lo));
}
void prepare_fiber(Worker* w, Fiber& f) {
    getcontext(&f.uc);
    f.uc.uc_stack.ss_sp = f.stack_lo;
    f.uc.uc_stack.ss_size = kStackBytes;
    f.uc.uc_link = &w->sched_uc;
    const auto p = reinterpret_cast<uintptr_t>(&f);
    makecontext(&f.uc, reinterpret_cast<void (*)()>(ucontext_entry), 2, static_cast<unsigned>(p >> 32),
                static_cast<unsigned>(p));
}
void to_fiber(Worker* w, Fiber& f) { swapcontext(&w->sched_uc, &f.uc); }
void to_scheduler(Worker* w, Fiber& f) { swapcontext(&f.uc, &w->sched_uc); }
#endif

void set_ready(Worker* w, Fiber& f) {
    f.state = kReady;
    w->ready[f.rank >> 6] |= uint64_t{1} << (f.rank & 63);
}

int pick(Worker* w) {
    const size_t words = w->ready.size();
    if (w->sched == kRunAhead) {
        for (size_t i = 0; i < words; ++i) {
            if (w->ready[i]) return (int)(i * 64) + __builtin_ctzll(w->ready[i]);
        }
        return -1;
    }
    const size_t n = w->fibers.size();
    const size_t start = w->rng() % n;
    size_t i = start >> 6;
    uint64_t word = w->ready[i] & (~uint64_t{0} << (start & 63));
    for (size_t step = 0; step <= words; ++step) {
        if (word) return (int)(i * 64) + __builtin_ctzll(word);
        i = (i + 1) % words;
        word = w->ready[i];
    }
    return -1;
}

void release_barrier(Worker* w) {
    for (Fiber& f : w->fibers) {
        if (f.state == kAtBarrier) set_ready(w, f);
    }
    w->at_barrier = 0;
}

extern "C" [[noreturn]] void livevsr_fiber_main(Fiber* f) {
    Worker* w = worker();
    w->body(w->ctx);
    f->state = kDone;
    f->open.clear();
    f->committed.clear();
    --w->live;
    if (w->at_barrier > 0 && w->at_barrier == w->live) release_barrier(w);  // exited threads count as arrived
    to_scheduler(w, *f);
    __builtin_trap();
}

void yield(Worker* w) { to_scheduler(w, *w->cur); }

Fiber& current(Worker* w) {
    if (w == nullptr || w->cur == nullptr) {
        fprintf(stderr, "cuda_host: a device function was called outside a kernel launch\n");
        abort();
    }
    return *w->cur;
}

void land(Worker* w, const Copy& c) { std::memcpy(w->tls + c.dst, c.bytes, 16); }

void check_smem(Worker* w, unsigned addr, unsigned bytes, unsigned align, const char* what) {
    if (addr % align != 0) FAIL("%s: shared address %#x is not %u-byte aligned", what, addr, align);
    if ((size_t)addr + bytes > w->tls_bytes) {
        FAIL("%s: shared address %#x + %u is outside shared memory (%zu bytes)", what, addr, bytes, w->tls_bytes);
    }
}

// ---- warp collectives ----

uint16_t smem_half(Worker* w, unsigned addr) {
    uint16_t h;
    std::memcpy(&h, w->tls + addr, 2);
    return h;
}

float bf16_to_float(unsigned bits) { return __uint_as_float((bits & 0xffffu) << 16); }

void compute(Worker* w, Warp& wp) {
    const Deposit* d = wp.dep;
    switch (wp.kind) {
        case kShfl:
            for (int l = 0; l < kWarp; ++l) wp.out_u[l][0] = d[l ^ d[l].imm].u[0];
            break;
        case kMatch:
            for (int l = 0; l < kWarp; ++l) {
                unsigned m = 0;
                for (int j = 0; j < kWarp; ++j) m |= (d[j].u[0] == d[l].u[0] ? 1u : 0u) << j;
                wp.out_u[l][0] = m;
            }
            break;
        case kBallot: {
            unsigned m = 0;
            for (int j = 0; j < kWarp; ++j) m |= d[j].u[0] << j;
            for (int l = 0; l < kWarp; ++l) wp.out_u[l][0] = m;
            break;
        }
        case kLdsm:
        case kLdsmTrans: {
            for (int l = 0; l < kWarp; ++l) check_smem(w, d[l].u[0], 16, 16, kind_name(wp.kind));
            const bool trans = wp.kind == kLdsmTrans;
            for (int l = 0; l < kWarp; ++l) {
                const int g = l >> 2, t = l & 3;
                for (int i = 0; i < 4; ++i) {
                    unsigned lo, hi;  // matrix i, row r = the row given by lane 8i+r, 8 halves of 16 bytes
                    if (!trans) {
                        lo = smem_half(w, d[8 * i + g].u[0] + 2 * (2 * t));
                        hi = smem_half(w, d[8 * i + g].u[0] + 2 * (2 * t + 1));
                    } else {
                        lo = smem_half(w, d[8 * i + 2 * t].u[0] + 2 * g);
                        hi = smem_half(w, d[8 * i + 2 * t + 1].u[0] + 2 * g);
                    }
                    wp.out_u[l][i] = lo | (hi << 16);
                }
            }
            break;
        }
        case kMma: {
            float A[16][16], B[16][8], C[16][8];
            for (int l = 0; l < kWarp; ++l) {
                const int g = l >> 2, t = l & 3;
                for (int e = 0; e < 2; ++e) {
                    const int sh = 16 * e;
                    A[g][2 * t + e] = bf16_to_float(d[l].u[0] >> sh);
                    A[g + 8][2 * t + e] = bf16_to_float(d[l].u[1] >> sh);
                    A[g][2 * t + 8 + e] = bf16_to_float(d[l].u[2] >> sh);
                    A[g + 8][2 * t + 8 + e] = bf16_to_float(d[l].u[3] >> sh);
                    B[2 * t + e][g] = bf16_to_float(d[l].b0 >> sh);
                    B[2 * t + 8 + e][g] = bf16_to_float(d[l].b1 >> sh);
                    C[g][2 * t + e] = d[l].f[e];
                    C[g + 8][2 * t + e] = d[l].f[2 + e];
                }
            }
            for (int l = 0; l < kWarp; ++l) {
                const int g = l >> 2, t = l & 3;
                for (int e = 0; e < 4; ++e) {
                    const int m = g + 8 * (e >> 1), n = 2 * t + (e & 1);
                    double acc = C[m][n];
                    for (int k = 0; k < 16; ++k) acc += (double)A[m][k] * (double)B[k][n];
                    wp.out_f[l][e] = (float)acc;
                }
            }
            break;
        }
        default:
            FAIL("internal: unknown warp collective %d", wp.kind);
    }
}

// Deposit this lane's operands; the 32nd lane computes for all; returns this lane's slot.
int rendezvous(int kind, const Deposit& dep) {
    Worker* w = worker();
    Fiber& f = current(w);
    if (dep.mask != 0xffffffffu) FAIL("%s with member mask %#x: only full-warp masks are modelled", kind_name(kind), dep.mask);
    Warp& wp = w->warps[f.warp];
    if (wp.arrived == 0) {
        wp.kind = kind;
    } else if (wp.kind != kind) {
        FAIL("warp %d: lane %d calls %s while other lanes wait in %s (divergent collective)", f.warp, f.lane,
             kind_name(kind), kind_name(wp.kind));
    }
    wp.dep[f.lane] = dep;
    if (++wp.arrived == kWarp) {
        compute(w, wp);
        wp.arrived = 0;
        for (int l = 0; l < kWarp; ++l) {
            Fiber& o = w->fibers[f.warp * kWarp + l];
            if (&o != &f) set_ready(w, o);
        }
    } else {
        f.state = kAtWarp;
        yield(w);
    }
    return f.lane;
}

}  // namespace

// ---- the device-side API of cuda_host.h ----

const uint3& thread_idx() { return current(worker()).tid; }
const uint3& block_idx() {
    current(worker());
    return worker()->block;
}
const dim3& block_dim() { return worker()->bdim; }
const dim3& grid_dim() { return worker()->gdim; }

void syncthreads() {
    Worker* w = worker();
    Fiber& f = current(w);
    f.state = kAtBarrier;
    if (++w->at_barrier == w->live) release_barrier(w);
    yield(w);
}

unsigned shfl_xor(unsigned mask, unsigned value, int lane_mask, int width) {
    if (width != kWarp || lane_mask < 0 || lane_mask >= kWarp) FAIL("shfl.xor: width %d lane mask %d not modelled", width, lane_mask);
    Deposit d{};
    d.mask = mask;
    d.u[0] = value;
    d.imm = lane_mask;
    const int l = rendezvous(kShfl, d);
    return worker()->warps[worker()->cur->warp].out_u[l][0];
}

unsigned match_any(unsigned mask, unsigned value) {
    Deposit d{};
    d.mask = mask;
    d.u[0] = value;
    const int l = rendezvous(kMatch, d);
    return worker()->warps[worker()->cur->warp].out_u[l][0];
}

unsigned ballot(unsigned mask, bool pred) {
    Deposit d{};
    d.mask = mask;
    d.u[0] = pred ? 1u : 0u;
    const int l = rendezvous(kBallot, d);
    return worker()->warps[worker()->cur->warp].out_u[l][0];
}

size_t cvta_to_shared(const void* p) {
    Worker* w = worker();
    current(w);
    const char* c = static_cast<const char*>(p);
    if (c < w->tls || c >= w->tls + w->tls_bytes) FAIL("cvta.to.shared of %p, which is not shared memory", p);
    return static_cast<size_t>(c - w->tls);
}

void cp_async16(unsigned dst, const void* src) {
    Worker* w = worker();
    Fiber& f = current(w);
    check_smem(w, dst, 16, 16, "cp.async");
    if (reinterpret_cast<uintptr_t>(src) % 16 != 0) FAIL("cp.async: global source %p is not 16-byte aligned", src);
    Copy c;
    c.dst = dst;
    std::memcpy(c.bytes, src, 16);
    const bool eager = w->land == kEager || (w->land == kMixed && (w->rng() & 1));
    if (eager) {
        land(w, c);
    } else {
        f.open.push_back(c);
    }
}

void cp_async_commit() {
    Worker* w = worker();
    Fiber& f = current(w);
    f.committed.push_back(std::move(f.open));
    f.open.clear();
}

void cp_async_wait(int pending) {
    Worker* w = worker();
    Fiber& f = current(w);
    while (f.committed.size() > static_cast<size_t>(pending)) {
        for (const Copy& c : f.committed.front()) land(w, c);
        f.committed.pop_front();
    }
}

void ldmatrix_x4(unsigned addr, bool trans, unsigned (&r)[4]) {
    Deposit d{};
    d.mask = 0xffffffffu;
    d.u[0] = addr;
    const int l = rendezvous(trans ? kLdsmTrans : kLdsm, d);
    const Warp& wp = worker()->warps[worker()->cur->warp];
    for (int i = 0; i < 4; ++i) r[i] = wp.out_u[l][i];
}

void mma_m16n8k16_bf16(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    Deposit d{};
    d.mask = 0xffffffffu;
    for (int i = 0; i < 4; ++i) {
        d.u[i] = a[i];
        d.f[i] = c[i];
    }
    d.b0 = b0;
    d.b1 = b1;
    const int l = rendezvous(kMma, d);
    const Warp& wp = worker()->warps[worker()->cur->warp];
    for (int i = 0; i < 4; ++i) c[i] = wp.out_f[l][i];
}

// ---- launching ----

namespace {

void run_block(Worker* w, unsigned linear) {
    const LaunchConfig* cfg = w->cfg;
    w->block = uint3{linear % cfg->grid[0], (linear / cfg->grid[0]) % cfg->grid[1],
                     linear / (cfg->grid[0] * cfg->grid[1])};
    const int mode = cfg->schedule >= 0 ? cfg->schedule % kModes : (int)((cfg->seed + linear) % kModes);
    const unsigned fill = kFillPatterns[mode % 2];
    w->sched = (mode / 2) % 2;
    w->land = mode / 4;
    w->rng.seed(cfg->seed * 0x9e3779b97f4a7c15ull + linear);

    for (size_t i = 0; i + 4 <= w->tls_bytes; i += 4) std::memcpy(w->tls + i, &fill, 4);

    const int n = (int)w->fibers.size();
    const int n_warps = n / kWarp;
    std::vector<int> warp_order(n_warps);
    for (int i = 0; i < n_warps; ++i) warp_order[i] = i;
    if (w->sched == kRunAhead) std::shuffle(warp_order.begin(), warp_order.end(), w->rng);
    std::fill(w->ready.begin(), w->ready.end(), 0);
    for (int pos = 0; pos < n_warps; ++pos) {
        for (int l = 0; l < kWarp; ++l) {
            Fiber& f = w->fibers[warp_order[pos] * kWarp + l];
            f.rank = pos * kWarp + l;
            w->by_rank[f.rank] = f.linear;
            f.open.clear();
            f.committed.clear();
            prepare_fiber(w, f);
            set_ready(w, f);
        }
    }
    for (Warp& wp : w->warps) {
        wp.arrived = 0;
        wp.kind = kNone;
    }
    w->live = n;
    w->at_barrier = 0;
    for (;;) {
        const int r = pick(w);
        if (r < 0) break;
        w->ready[r >> 6] &= ~(uint64_t{1} << (r & 63));
        Fiber& f = w->fibers[w->by_rank[r]];
        w->cur = &f;
        to_fiber(w, f);
        w->cur = nullptr;
    }
    if (w->live > 0) {
        int barrier = 0, warp = 0;
        for (const Fiber& f : w->fibers) {
            barrier += f.state == kAtBarrier;
            warp += f.state == kAtWarp;
        }
        FAIL("deadlock: %d threads live, %d wait at __syncthreads, %d in a warp collective", w->live, barrier, warp);
    }
}

struct Shared {
    std::atomic<unsigned> next{0};
    std::atomic<bool> failed{false};
    std::mutex lock;
    std::string error;
};

void work(Worker* w, Shared* sh, unsigned n_blocks) {
    pthread_setspecific(g_key, w);
#if defined(__x86_64__)
    _mm_setcsr(_mm_getcsr() | 0x8040);  // FTZ + DAZ: the kernels are built with -ftz=true
#endif
    std::vector<char> altstack(64 * 1024);
    stack_t ss{};
    ss.ss_sp = altstack.data();
    ss.ss_size = altstack.size();
    sigaltstack(&ss, nullptr);

    const unsigned threads = w->cfg->block[0] * w->cfg->block[1] * w->cfg->block[2];
    locate_tls(w);
    if (w->error.empty()) {
        w->stacks_bytes = threads * (kStackBytes + kGuardBytes);
        void* m = mmap(nullptr, w->stacks_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            w->error = std::string(w->name) + ": cannot map fiber stacks";
        } else {
            w->stacks = static_cast<char*>(m);
        }
    }
    if (w->error.empty()) {
        w->fibers.resize(threads);
        w->warps.resize(threads / kWarp);
        w->ready.assign((threads + 63) / 64, 0);
        w->by_rank.assign(threads, 0);
        for (unsigned i = 0; i < threads; ++i) {
            Fiber& f = w->fibers[i];
            char* base = w->stacks + i * (kStackBytes + kGuardBytes);
            mprotect(base, kGuardBytes, PROT_NONE);
            f.stack_lo = base + kGuardBytes;
            f.linear = (int)i;
            f.tid = uint3{i % w->cfg->block[0], (i / w->cfg->block[0]) % w->cfg->block[1],
                          i / (w->cfg->block[0] * w->cfg->block[1])};
            f.warp = (int)i / kWarp;
            f.lane = (int)i % kWarp;
        }
        for (;;) {
            if (sh->failed.load()) break;
            const unsigned b = sh->next.fetch_add(1);
            if (b >= n_blocks) break;
            w->in_block = true;
            if (sigsetjmp(w->jb, 1) == 0) {
                run_block(w, b);
                w->in_block = false;
            } else {
                w->in_block = false;
                w->cur = nullptr;
                break;
            }
        }
    }
    if (!w->error.empty()) {
        std::lock_guard<std::mutex> g(sh->lock);
        if (!sh->failed.exchange(true)) sh->error = w->error;
    }
    if (w->stacks != nullptr) munmap(w->stacks, w->stacks_bytes);
    ss.ss_flags = SS_DISABLE;
    sigaltstack(&ss, nullptr);
    pthread_setspecific(g_key, nullptr);
}

}  // namespace

int launch(const char* name, Body body, void* ctx, const LaunchConfig* cfg) {
    std::call_once(g_once, init_once);
    auto report = [&](const std::string& msg) {
        if (cfg->error != nullptr && cfg->error_len > 0) snprintf(cfg->error, cfg->error_len, "%s", msg.c_str());
        return 1;
    };
    const unsigned threads = cfg->block[0] * cfg->block[1] * cfg->block[2];
    if (threads == 0 || threads > 1024 || threads % kWarp != 0) {
        return report(std::string(name) + ": block of " + std::to_string(threads) +
                      " threads; the host model needs 32..1024 threads, whole warps");
    }
    if (cfg->shared_mem > LIVEVSR_DYNAMIC_SMEM_BYTES) {
        return report(std::string(name) + ": " + std::to_string(cfg->shared_mem) +
                      " bytes of dynamic shared memory, over the 227 KiB of sm_90");
    }
    const unsigned n_blocks = cfg->grid[0] * cfg->grid[1] * cfg->grid[2];
    if (n_blocks == 0) return report(std::string(name) + ": empty grid");
    const int n_workers = std::max(1, std::min<int>(cfg->workers, (int)n_blocks));
    Shared sh;
    std::vector<Worker> workers(n_workers);
    std::vector<std::thread> threads_;
    for (Worker& w : workers) {
        w.cfg = cfg;
        w.name = name;
        w.body = body;
        w.ctx = ctx;
        w.bdim = dim3{cfg->block[0], cfg->block[1], cfg->block[2]};
        w.gdim = dim3{cfg->grid[0], cfg->grid[1], cfg->grid[2]};
        threads_.emplace_back(work, &w, &sh, n_blocks);
    }
    for (std::thread& t : threads_) t.join();
    if (sh.failed.load()) return report(sh.error);
    return 0;
}

}  // namespace livevsr_host
