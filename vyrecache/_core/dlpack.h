/* The DLPack ABI (https://dmlc.github.io/dlpack, version 1.0): the structs a zero-copy view of a
   leased entry hands to numpy, torch or CuPy.  Only what a one-dimensional uint8 tensor of CPU
   memory needs is declared. */
#ifndef VYRECACHE_DLPACK_H
#define VYRECACHE_DLPACK_H

#include <stdint.h>

#define VC_DLPACK_MAJOR 1
#define VC_DLPACK_MINOR 0
#define VC_DL_CPU 1
#define VC_DL_UINT 1
#define VC_DLPACK_FLAG_READ_ONLY 1

typedef struct { int32_t device_type; int32_t device_id; } vc_dl_device;
typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } vc_dl_dtype;
typedef struct {
    void* data;
    vc_dl_device device;
    int32_t ndim;
    vc_dl_dtype dtype;
    int64_t* shape;
    int64_t* strides;
    uint64_t byte_offset;
} vc_dl_tensor;

/* DLPack before 1.0: what a consumer that asks for no version gets. */
typedef struct vc_dl_managed {
    vc_dl_tensor dl_tensor;
    void* manager_ctx;
    void (*deleter)(struct vc_dl_managed*);
} vc_dl_managed;

typedef struct { uint32_t major; uint32_t minor; } vc_dl_version;
typedef struct vc_dl_managed_versioned {
    vc_dl_version version;
    void* manager_ctx;
    void (*deleter)(struct vc_dl_managed_versioned*);
    uint64_t flags;
    vc_dl_tensor dl_tensor;
} vc_dl_managed_versioned;

#endif
