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
#if defined(__GNUC__) && defined(__x86_64__)
__attribute__((target("avx2")))
static void vc_stream_copy_avx2(char* dst, const char* src, size_t n) {
    while (n && ((size_t)dst & 31)) { *dst++ = *src++; n--; }
    __m256i* d = (__m256i*)dst;
    const __m256i* s = (const __m256i*)src;
    size_t blocks = n / 128;
    for (size_t i = 0; i < blocks; i++) {
        __m256i a = _mm256_loadu_si256(s), b = _mm256_loadu_si256(s + 1);
        __m256i c = _mm256_loadu_si256(s + 2), e = _mm256_loadu_si256(s + 3);
        _mm256_stream_si256(d, a); _mm256_stream_si256(d + 1, b);
        _mm256_stream_si256(d + 2, c); _mm256_stream_si256(d + 3, e);
        d += 4; s += 4;
    }
    memcpy(d, s, n % 128);
}
#endif
static void vc_stream_copy(char* dst, const char* src, size_t n) {
#if defined(__GNUC__) && defined(__x86_64__)
    if (__builtin_cpu_supports("avx2")) { vc_stream_copy_avx2(dst, src, n); return; }
#endif
    while (n && ((size_t)dst & 15)) { *dst++ = *src++; n--; }
    __m128i* d = (__m128i*)dst;
    const __m128i* s = (const __m128i*)src;
    size_t blocks = n / 64;
    for (size_t i = 0; i < blocks; i++) {
        __m128i a = _mm_loadu_si128(s), b = _mm_loadu_si128(s + 1);
        __m128i c = _mm_loadu_si128(s + 2), e = _mm_loadu_si128(s + 3);
        _mm_stream_si128(d, a); _mm_stream_si128(d + 1, b);
        _mm_stream_si128(d + 2, c); _mm_stream_si128(d + 3, e);
        d += 4; s += 4;
    }
    memcpy(d, s, n % 64);
}
static void vc_stream_fence(void) { _mm_sfence(); }
#else
static void vc_stream_copy(char* dst, const char* src, size_t n) { memcpy(dst, src, n); }
static void vc_stream_fence(void) { }
#endif

#endif
