/* Dependent-load latency of this machine, for reading bench_core's scaling figures.
 *
 * One cache line in each 64 bytes of an N MiB block points to the next line of a random cycle
 * through all of them (Sattolo's shuffle), so every load waits for the one before: the time per
 * step is the latency of whichever level of the memory hierarchy N MiB spills into.  The block
 * is advised for transparent huge pages, as the engine's large arrays are.
 *
 * Usage: pointer_chase MIB [MIB ...]   prints "MIB ns" per size.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#define LINE 64

static double seconds_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

static uint64_t next_random(uint64_t *state) {     /* xorshift64* */
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return *state * 0x2545F4914F6CDD1DULL;
}

static double chase(size_t mib) {
    size_t bytes = mib << 20, lines = bytes / LINE, steps = 20u * 1000 * 1000;
    char *block = aligned_alloc((size_t)2 << 20, bytes);
    size_t *order = malloc(lines * sizeof(size_t));
    uint64_t state = 0x9E3779B97F4A7C15ULL;
    if (block == NULL || order == NULL) {
        fprintf(stderr, "pointer_chase: cannot allocate %zu MiB\n", mib);
        exit(1);
    }
#ifdef MADV_HUGEPAGE
    madvise(block, bytes, MADV_HUGEPAGE);
#endif
    for (size_t i = 0; i < lines; i++)
        order[i] = i;
    for (size_t i = lines - 1; i > 0; i--) {        /* Sattolo: one cycle through every line */
        size_t j = next_random(&state) % i, held = order[i];
        order[i] = order[j];
        order[j] = held;
    }
    for (size_t i = 0; i < lines; i++)
        *(char **)(block + order[i] * LINE) = block + order[(i + 1) % lines] * LINE;
    char *at = block;
    for (size_t i = 0; i < lines; i++)              /* one lap to fault the pages in */
        at = *(char **)at;
    double start = seconds_now();
    for (size_t i = 0; i < steps; i++)
        at = *(char **)at;
    double elapsed = seconds_now() - start;
    if (at == NULL)                                 /* keeps the loop from being optimised out */
        puts("unreachable");
    free(order);
    free(block);
    return elapsed / (double)steps * 1e9;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MIB [MIB ...]\n", argv[0]);
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        size_t mib = strtoul(argv[i], NULL, 10);
        printf("%zu %.1f\n", mib, chase(mib));
    }
    return 0;
}
