/* The engine map's groups of control bytes (engine_map.pxi): load a group, find the bytes that
   match a key's 7 hash bits, the EMPTY bytes, the free (EMPTY or DELETED) bytes.

   Two implementations of one interface.  With SSE2 (every x86-64 CPU) a group is 16 bytes and
   each test is one compare and one movemask; elsewhere a group is 8 bytes in a uint64 and the
   tests are word arithmetic.  Debug builds use the portable one on every machine, so the test
   suite runs both (make test, make test-debug).  A mask has one bit per matching bucket;
   vc_group_lane() gives the lowest one's index in the group, and mask & (mask - 1) drops it. */
#ifndef VYRECACHE_GROUPS_H
#define VYRECACHE_GROUPS_H

#include <stdint.h>
#include <string.h>

#define VC_CTRL_EMPTY 0x80
#define VC_CTRL_DELETED 0xFE

#if defined(__SSE2__) && !defined(VYRECACHE_DEBUG)
#include <emmintrin.h>

#define VC_GROUP_BITS 4
typedef __m128i vc_group_t;

static inline vc_group_t vc_group_load(const uint8_t *ctrl, uint64_t group) {
    return _mm_loadu_si128((const __m128i *)(ctrl + (group << VC_GROUP_BITS)));
}
static inline uint64_t vc_group_match(vc_group_t g, uint64_t h2) {
    return (uint64_t)(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(g, _mm_set1_epi8((char)h2)));
}
static inline uint64_t vc_group_empty(vc_group_t g) {
    return (uint64_t)(unsigned)_mm_movemask_epi8(
        _mm_cmpeq_epi8(g, _mm_set1_epi8((char)VC_CTRL_EMPTY)));
}
/* Free bytes are the ones with bit 7 set: EMPTY 0x80 and DELETED 0xFE; full ones are 0x00-0x7F. */
static inline uint64_t vc_group_free(vc_group_t g) {
    return (uint64_t)(unsigned)_mm_movemask_epi8(g);
}
static inline uint64_t vc_group_lane(uint64_t mask) {
    return (uint64_t)__builtin_ctzll(mask);
}

#else

#define VC_GROUP_BITS 3
#define VC_GROUP_LSBS 0x0101010101010101ull
#define VC_GROUP_MSBS 0x8080808080808080ull
typedef uint64_t vc_group_t;

/* The 8 control bytes as one word, bucket 0 in the low byte. */
static inline vc_group_t vc_group_load(const uint8_t *ctrl, uint64_t group) {
    uint64_t word;
    memcpy(&word, ctrl + (group << VC_GROUP_BITS), 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    word = __builtin_bswap64(word);
#endif
    return word;
}
/* The high bit of each byte equal to h2.  Borrows can add a false match next to a true one,
   never hide one: the key of every matching bucket is compared anyway. */
static inline uint64_t vc_group_match(vc_group_t word, uint64_t h2) {
    uint64_t x = word ^ (VC_GROUP_LSBS * h2);
    return (x - VC_GROUP_LSBS) & ~x & VC_GROUP_MSBS;
}
/* EMPTY bytes (0x80: bit 7 set, bit 1 clear; DELETED 0xFE has bit 1 set). */
static inline uint64_t vc_group_empty(vc_group_t word) {
    return word & (~word << 6) & VC_GROUP_MSBS;
}
/* EMPTY or DELETED bytes (bit 7 set, bit 0 clear). */
static inline uint64_t vc_group_free(vc_group_t word) {
    return word & ~(word << 7) & VC_GROUP_MSBS;
}
static inline uint64_t vc_group_lane(uint64_t mask) {
    return (uint64_t)__builtin_ctzll(mask) >> 3;
}

#endif

/* The smallest map: two groups (a one-group map would shift a hash by 64 bits for its group). */
#define VC_MIN_BUCKET_BITS (VC_GROUP_BITS + 1)

#endif
