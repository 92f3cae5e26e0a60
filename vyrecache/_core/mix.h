/* A 64-bit mix whose every output bit depends on every input bit, shared by the core modules. */
#ifndef VYRECACHE_MIX_H
#define VYRECACHE_MIX_H

#include <stdint.h>

/* MurmurHash3's finalizer.  Tables indexed by a value's low bits need it for keys that are
   sequential or share their low bits (block numbers, object ids), and for the engine's
   multiplicative hash, which mixes only upwards. */
static inline uint64_t vc_mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xFF51AFD7ED558CCDULL;
    x ^= x >> 33;
    x *= 0xC4CEB9FE1A85EC53ULL;
    x ^= x >> 33;
    return x;
}

#endif
