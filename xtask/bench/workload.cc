// The benchmark's target: allocator churn, timed by itself.
//
//   workload churn|mix|soak|sites THREADS PAIRS_PER_THREAD
//
// Prints "malloc PATH", the object its calls to malloc bind to (glibc's libc.so.6, or the
// allocator it was linked with), and "ready"; waits for a line on stdin (a tracer attaches
// meanwhile), runs, and prints "ns_per_pair X": wall time times threads over all pairs, the
// time one thread spends on one allocation and its free.
//   churn: malloc of a mixed size, freed at once.
//   mix:   a working set of 64 blocks per thread; each step replaces one, made by malloc,
//          calloc, realloc, new or new[], and frees the one it replaces.
//   soak:  churn, plus a leak of 64 bytes every 10,000 pairs from its own call site; runs
//          until killed, PAIRS_PER_THREAD ignored (cargo xtask soak).
//   sites: allocations from 2^SITE_BITS distinct stacks (a path of SITE_BITS calls, each
//          through one of two functions), each freed at once but one in 1,024, kept: a
//          leak spread over every site; runs until killed (cargo xtask soak --serve).
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static long pairs;
static enum { CHURN, MIX, SOAK, SITES } scenario;

static uint64_t next(uint64_t *state) {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return *state;
}

// Mostly small, now and then up to 4 KiB, as programs allocate.
static size_t size_of_step(uint64_t *state) {
    uint64_t r = next(state);
    return (r & 7) ? 16 + (r >> 8) % 240 : 256 + (r >> 8) % 3840;
}

static void churn(uint64_t *state) {
    for (long i = 0; i < pairs; i++) {
        char *volatile p = (char *)malloc(size_of_step(state));
        p[0] = 1;
        free(p);
    }
}

struct Slot {
    void *block;
    int kind;  // 0 malloc-family, 1 new, 2 new[]
};

static void release(Slot *slot) {
    switch (slot->kind) {
    case 1: delete (uint64_t *)slot->block; break;
    case 2: delete[] (char *)slot->block; break;
    default: free(slot->block);
    }
}

static void working_set(uint64_t *state) {
    enum { SLOTS = 64 };
    Slot slots[SLOTS];
    for (int i = 0; i < SLOTS; i++) slots[i] = {malloc(16), 0};
    for (long i = 0; i < pairs; i++) {
        Slot *slot = &slots[next(state) % SLOTS];
        size_t size = size_of_step(state);
        switch (next(state) % 5) {
        case 0: release(slot); *slot = {malloc(size), 0}; break;
        case 1: release(slot); *slot = {calloc(1, size), 0}; break;
        case 2:
            if (slot->kind == 0) {  // grows the block: one allocation, one free
                slot->block = realloc(slot->block, size + 4096);
                break;
            }
            release(slot); *slot = {malloc(size), 0}; break;
        case 3: release(slot); *slot = {new uint64_t(i), 1}; break;
        default: release(slot); *slot = {new char[size], 2}; break;
        }
        *(volatile char *)slot->block = 1;
    }
    for (int i = 0; i < SLOTS; i++) release(&slots[i]);
}

static void *volatile leaked;

__attribute__((noinline)) static void leak_a_little(void) { leaked = malloc(64); }

static void soak(uint64_t *state) {
    for (;;) {
        churn(state);
        leak_a_little();
    }
}

enum { SITE_BITS = 15 };
static volatile int took;

template <int Level> void *descend(unsigned path, size_t size);

// Two functions per level, told apart by what they store, so that no pass folds them: the
// path's bit at each level picks one, and the stack is one of 2^SITE_BITS.
template <int Level> __attribute__((noinline)) void *left(unsigned path, size_t size) {
    void *block = descend<Level + 1>(path, size);
    took = 2 * Level;
    return block;
}

template <int Level> __attribute__((noinline)) void *right(unsigned path, size_t size) {
    void *block = descend<Level + 1>(path, size);
    took = 2 * Level + 1;
    return block;
}

template <int Level> __attribute__((noinline)) void *descend(unsigned path, size_t size) {
    if constexpr (Level == SITE_BITS) {
        return malloc(size);
    } else {
        return (path >> Level) & 1 ? right<Level>(path, size) : left<Level>(path, size);
    }
}

static void sites(uint64_t *state) {
    for (uint64_t i = 0;; i++) {
        void *block = descend<0>(next(state) & ((1u << SITE_BITS) - 1), size_of_step(state));
        if (i % 1024 == 0)
            leaked = block;
        else
            free(block);
    }
}

static pthread_barrier_t start;

static void *run(void *arg) {
    uint64_t state = 0x9e3779b97f4a7c15ULL + (uintptr_t)arg;
    pthread_barrier_wait(&start);
    switch (scenario) {
    case MIX: working_set(&state); break;
    case SOAK: soak(&state); break;
    case SITES: sites(&state); break;
    default: churn(&state);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: workload churn|mix|soak THREADS PAIRS_PER_THREAD\n");
        return 2;
    }
    scenario = strcmp(argv[1], "mix") == 0    ? MIX
               : strcmp(argv[1], "soak") == 0 ? SOAK
               : strcmp(argv[1], "sites") == 0 ? SITES
                                               : CHURN;
    int threads = atoi(argv[2]);
    pairs = scenario == SOAK ? 10000 : atol(argv[3]);
    setvbuf(stdout, NULL, _IOLBF, 0);
    Dl_info where;
    void *(*volatile bound)(size_t) = malloc;
    printf("malloc %s\n", dladdr((void *)bound, &where) ? where.dli_fname : "?");
    printf("ready\n");
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 1;
    pthread_t ids[64];
    pthread_barrier_init(&start, NULL, threads + 1);
    for (int t = 0; t < threads; t++) pthread_create(&ids[t], NULL, run, (void *)(uintptr_t)t);
    struct timespec t0, t1;
    pthread_barrier_wait(&start);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int t = 0; t < threads; t++) pthread_join(ids[t], NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ns = (t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec);
    printf("ns_per_pair %.1f\n", ns / (double)pairs);
    return 0;
}
