/* XXH64 (the 64-bit xxHash of the published xxHash specification), the remote tier's checksum.

   Four independent multiply-rotate lanes over 32-byte stripes keep a core's multipliers busy, so it
   checks a value several times faster than zlib's CRC-32, a difference a fetch of large entries
   feels against redis-py's own time per entry (BENCHMARKS.md has the figures).  Inputs are read
   as little-endian words on every host, so every machine computes the same value. */
#ifndef VYRECACHE_CHECKSUM_H
#define VYRECACHE_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define VC_XXH_P1 0x9E3779B185EBCA87ULL
#define VC_XXH_P2 0xC2B2AE3D27D4EB4FULL
#define VC_XXH_P3 0x165667B19E3779F9ULL
#define VC_XXH_P4 0x85EBCA77C2B2AE63ULL
#define VC_XXH_P5 0x27D4EB2F165667C5ULL

static inline uint64_t vc_rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

/* Little-endian loads: the hash is defined on little-endian words. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define VC_FROM_LE(bits, v) __builtin_bswap##bits(v)
#else
#define VC_FROM_LE(bits, v) (v)
#endif
static inline uint64_t vc_read64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return VC_FROM_LE(64, v); }
static inline uint32_t vc_read32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return VC_FROM_LE(32, v); }

static inline uint64_t vc_xxh_round(uint64_t acc, uint64_t lane) {
    acc += lane * VC_XXH_P2;
    acc = vc_rotl64(acc, 31);
    return acc * VC_XXH_P1;
}

static inline uint64_t vc_xxh_merge(uint64_t acc, uint64_t lane) {
    acc ^= vc_xxh_round(0, lane);
    return acc * VC_XXH_P1 + VC_XXH_P4;
}

static uint64_t vc_xxh64(const unsigned char *p, size_t n, uint64_t seed) {
    const unsigned char *end = p + n;
    uint64_t h;
    if (n >= 32) {
        uint64_t v1 = seed + VC_XXH_P1 + VC_XXH_P2, v2 = seed + VC_XXH_P2, v3 = seed, v4 = seed - VC_XXH_P1;
        const unsigned char *last_stripe = end - 32;
        do {
            v1 = vc_xxh_round(v1, vc_read64(p));
            v2 = vc_xxh_round(v2, vc_read64(p + 8));
            v3 = vc_xxh_round(v3, vc_read64(p + 16));
            v4 = vc_xxh_round(v4, vc_read64(p + 24));
            p += 32;
        } while (p <= last_stripe);
        h = vc_rotl64(v1, 1) + vc_rotl64(v2, 7) + vc_rotl64(v3, 12) + vc_rotl64(v4, 18);
        h = vc_xxh_merge(h, v1);
        h = vc_xxh_merge(h, v2);
        h = vc_xxh_merge(h, v3);
        h = vc_xxh_merge(h, v4);
    } else {
        h = seed + VC_XXH_P5;
    }
    h += (uint64_t)n;
    while (p + 8 <= end) {
        h ^= vc_xxh_round(0, vc_read64(p));
        h = vc_rotl64(h, 27) * VC_XXH_P1 + VC_XXH_P4;
        p += 8;
    }
    if (p + 4 <= end) {
        h ^= (uint64_t)vc_read32(p) * VC_XXH_P1;
        h = vc_rotl64(h, 23) * VC_XXH_P2 + VC_XXH_P3;
        p += 4;
    }
    while (p < end) {
        h ^= (uint64_t)(*p) * VC_XXH_P5;
        h = vc_rotl64(h, 11) * VC_XXH_P1;
        p++;
    }
    h ^= h >> 33;
    h *= VC_XXH_P2;
    h ^= h >> 29;
    h *= VC_XXH_P3;
    h ^= h >> 32;
    return h;
}

#endif
