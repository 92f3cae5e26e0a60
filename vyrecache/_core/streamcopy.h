/* Streaming (non-temporal) copies for the storage layer's batch moves. */
#ifndef VYRECACHE_STREAMCOPY_H
#define VYRECACHE_STREAMCOPY_H

#include <stddef.h>
#include <string.h>
#if defined(__SSE2__)
#include <immintrin.h>
/* Copy with non-temporal stores: a batch move of many megabytes is not read back soon, and
   streaming stores skip the read-for-ownership of every destination line that a plain
   memcpy of a small entry pays (glibc streams only single copies above its threshold).
   32-byte AVX2 stores where the CPU has them, the faster of the two (BENCHMARKS.md, "Buffer
   cache"). */

/* The loop of both widths: align the destination to the vector, then four unaligned loads and
   four streaming stores a step, then the tail with memcpy. */
#define VC_STREAM_LOOP(VEC, LOAD, STREAM)                                           \
    while (n && ((size_t)dst & (sizeof(VEC) - 1))) { *dst++ = *src++; n--; }        \
    VEC* d = (VEC*)dst;                                                             \
    const VEC* s = (const VEC*)src;                                                 \
    size_t blocks = n / (4 * sizeof(VEC));                                          \
    for (size_t i = 0; i < blocks; i++) {                                           \
        VEC a = LOAD(s), b = LOAD(s + 1), c = LOAD(s + 2), e = LOAD(s + 3);         \
        STREAM(d, a); STREAM(d + 1, b); STREAM(d + 2, c); STREAM(d + 3, e);         \
        d += 4; s += 4;                                                             \
    }                                                                               \
    memcpy(d, s, n % (4 * sizeof(VEC)));

#if defined(__GNUC__) && defined(__x86_64__)
__attribute__((target("avx2")))
static void vc_stream_copy_avx2(char* dst, const char* src, size_t n) {
    VC_STREAM_LOOP(__m256i, _mm256_loadu_si256, _mm256_stream_si256)
}
#endif
static void vc_stream_copy(char* dst, const char* src, size_t n) {
#if defined(__GNUC__) && defined(__x86_64__)
    if (__builtin_cpu_supports("avx2")) { vc_stream_copy_avx2(dst, src, n); return; }
#endif
    VC_STREAM_LOOP(__m128i, _mm_loadu_si128, _mm_stream_si128)
}
static void vc_stream_fence(void) { _mm_sfence(); }
#else
static void vc_stream_copy(char* dst, const char* src, size_t n) { memcpy(dst, src, n); }
static void vc_stream_fence(void) { }
#endif

#endif
