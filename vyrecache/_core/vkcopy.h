/* Copy tables on a Vulkan queue, recorded and submitted from C.

   The storage layer runs an operation's copy rows here, with no Python code between the first
   change of the operation and its last: an interrupt cannot land half-way.  Only the handful of
   Vulkan entry points this needs are declared, with the ABI of vulkan_core.h: dispatchable
   handles are pointers, non-dispatchable ones 64-bit integers on 64-bit platforms.  The caller
   obtains the function pointers with vkGetDeviceProcAddr, so validation layers see every call. */
#ifndef VYRECACHE_VKCOPY_H
#define VYRECACHE_VKCOPY_H

#include <stdint.h>
#include <stdlib.h>

typedef int32_t vc_vk_result;
typedef struct { uint64_t src_offset, dst_offset, size; } vc_vk_region;     /* VkBufferCopy */
typedef struct {
    int32_t s_type; const void* next; uint32_t flags; const void* inheritance;
} vc_vk_begin_info;                                                          /* VkCommandBufferBeginInfo */
typedef struct {
    int32_t s_type; const void* next; uint32_t src_access; uint32_t dst_access;
} vc_vk_memory_barrier;                                                      /* VkMemoryBarrier */
typedef struct {
    int32_t s_type; const void* next; uint32_t wait_count; const void* waits; const void* stages;
    uint32_t command_buffer_count; void* const* command_buffers;
    uint32_t signal_count; const void* signals;
} vc_vk_submit_info;                                                         /* VkSubmitInfo */

typedef vc_vk_result (*vc_pfn_begin)(void*, const vc_vk_begin_info*);
typedef vc_vk_result (*vc_pfn_end)(void*);
typedef vc_vk_result (*vc_pfn_reset_buffer)(void*, uint32_t);
typedef void (*vc_pfn_copy)(void*, uint64_t, uint64_t, uint32_t, const vc_vk_region*);
typedef void (*vc_pfn_barrier)(void*, uint32_t, uint32_t, uint32_t, uint32_t,
                               const vc_vk_memory_barrier*, uint32_t, const void*, uint32_t, const void*);
typedef vc_vk_result (*vc_pfn_submit)(void*, uint32_t, const vc_vk_submit_info*, uint64_t);
typedef vc_vk_result (*vc_pfn_wait)(void*, uint32_t, const uint64_t*, uint32_t, uint64_t);
typedef vc_vk_result (*vc_pfn_reset_fences)(void*, uint32_t, const uint64_t*);
typedef vc_vk_result (*vc_pfn_fence_status)(void*, uint64_t);
typedef struct {
    int32_t s_type; const void* next; uint32_t wait_count; const uint64_t* waits;
    uint32_t signal_count; const uint64_t* signals;
} vc_vk_timeline_submit_info;                                                /* VkTimelineSemaphoreSubmitInfo */
typedef struct {
    int32_t s_type; const void* next; uint32_t flags; uint32_t count;
    const uint64_t* semaphores; const uint64_t* values;
} vc_vk_semaphore_wait_info;                                                 /* VkSemaphoreWaitInfo */
typedef vc_vk_result (*vc_pfn_counter)(void*, uint64_t, uint64_t*);
typedef vc_vk_result (*vc_pfn_wait_semaphores)(void*, const vc_vk_semaphore_wait_info*, uint64_t);

typedef struct {
    void* device;
    void* queue;
    void* command_buffer;
    uint64_t fence;
    vc_pfn_begin begin;
    vc_pfn_end end;
    vc_pfn_reset_buffer reset_buffer;
    vc_pfn_copy copy;
    vc_pfn_barrier barrier;
    vc_pfn_submit submit;
    vc_pfn_wait wait;
    vc_pfn_reset_fences reset_fences;
    vc_pfn_fence_status fence_status;
    /* The timeline semaphore asynchronous transfers signal (0: each has a fence instead). */
    uint64_t semaphore;
    vc_pfn_counter counter;
    vc_pfn_wait_semaphores wait_semaphores;
    uint64_t timeout_ns;
    /* which call failed, for the error message */
    const char* failed_call;
} vc_vk_queue;

/* One row of the storage layer's copy table, with buffer handles instead of block ids. */
typedef struct { uint64_t src, dst, src_offset, dst_offset, size; } vc_vk_copy;

#define VC_VK_TRANSFER_STAGE 0x1000u
#define VC_VK_HOST_STAGE 0x4000u
#define VC_VK_TRANSFER_WRITE 0x1000u
#define VC_VK_TRANSFER_READ 0x800u
#define VC_VK_HOST_READ 0x2000u
#define VC_VK_TIMEOUT 2

static void vc_vk_barrier(vc_vk_queue* q, uint32_t dst_stage, uint32_t dst_access) {
    vc_vk_memory_barrier barrier = {46, NULL, VC_VK_TRANSFER_WRITE, dst_access};
    q->barrier(q->command_buffer, VC_VK_TRANSFER_STAGE, dst_stage, 0, 1, &barrier, 0, NULL, 0, NULL);
}

/* Record the rows into command buffer cb (a barrier before each index in wave_starts).  The first
   barrier orders the rows after every copy submitted earlier on the queue (a transfer still in
   flight may write what these rows read, or read what they overwrite); the last one makes the
   bytes visible to the host. */
static vc_vk_result vc_vk_record(vc_vk_queue* q, void* cb, const vc_vk_copy* rows, size_t n,
                                 const int64_t* wave_starts, size_t n_waves) {
    vc_vk_begin_info begin = {42, NULL, 1 /* ONE_TIME_SUBMIT */, NULL};
    vc_vk_region* regions = (vc_vk_region*)malloc((n ? n : 1) * sizeof(vc_vk_region));
    vc_vk_result result;
    void* saved = q->command_buffer;
    size_t i = 0, wave = 0;
    if (regions == NULL) { q->failed_call = "malloc"; return -1; }
    for (size_t k = 0; k < n; k++) {
        regions[k].src_offset = rows[k].src_offset;
        regions[k].dst_offset = rows[k].dst_offset;
        regions[k].size = rows[k].size;
    }
    q->command_buffer = cb;        /* vc_vk_barrier records into q->command_buffer */
    result = q->reset_buffer(cb, 0);
    if (result < 0) { q->failed_call = "vkResetCommandBuffer"; goto done; }
    result = q->begin(cb, &begin);
    if (result < 0) { q->failed_call = "vkBeginCommandBuffer"; goto done; }
    vc_vk_barrier(q, VC_VK_TRANSFER_STAGE, VC_VK_TRANSFER_READ | VC_VK_TRANSFER_WRITE);
    while (i < n) {
        size_t end = n, j;
        while (wave < n_waves && (size_t)wave_starts[wave] <= i) wave++;
        if (wave < n_waves) end = (size_t)wave_starts[wave];
        /* One vkCmdCopyBuffer per run of rows with the same pair of buffers. */
        for (j = i; j < end;) {
            size_t k = j + 1;
            while (k < end && rows[k].src == rows[j].src && rows[k].dst == rows[j].dst) k++;
            q->copy(cb, rows[j].src, rows[j].dst, (uint32_t)(k - j), regions + j);
            j = k;
        }
        i = end;
        if (i < n) vc_vk_barrier(q, VC_VK_TRANSFER_STAGE, VC_VK_TRANSFER_READ | VC_VK_TRANSFER_WRITE);
    }
    vc_vk_barrier(q, VC_VK_HOST_STAGE, VC_VK_HOST_READ);   /* the host reads what was copied */
    result = q->end(cb);
    if (result < 0) q->failed_call = "vkEndCommandBuffer";
done:
    q->command_buffer = saved;
    free(regions);
    return result;
}

/* Submit cb, signalling the fence (may be 0) and, when signal_value is not 0, the timeline
   semaphore with that value. */
static vc_vk_result vc_vk_submit(vc_vk_queue* q, void* cb, uint64_t fence, uint64_t signal_value) {
    vc_vk_timeline_submit_info timeline = {1000207003, NULL, 0, NULL, 1, &signal_value};
    vc_vk_submit_info submit = {4, NULL, 0, NULL, NULL, 1, &cb, 0, NULL};
    vc_vk_result result;
    if (signal_value != 0) {
        submit.next = &timeline;
        submit.signal_count = 1;
        submit.signals = &q->semaphore;
    }
    result = q->submit(q->queue, 1, &submit, fence);
    if (result < 0) q->failed_call = "vkQueueSubmit";
    return result;
}

/* Record the rows, submit once and wait. Returns a VkResult: 0, VC_VK_TIMEOUT, or the failing
   call's error code (q->failed_call names it). */
static vc_vk_result vc_vk_run(vc_vk_queue* q, const vc_vk_copy* rows, size_t n,
                              const int64_t* wave_starts, size_t n_waves) {
    vc_vk_result result = vc_vk_record(q, q->command_buffer, rows, n, wave_starts, n_waves);
    if (result < 0) return result;
    result = vc_vk_submit(q, q->command_buffer, q->fence, 0);
    if (result < 0) return result;
    result = q->wait(q->device, 1, &q->fence, 1, q->timeout_ns);
    if (result != 0) { q->failed_call = "vkWaitForFences"; return result; }
    result = q->reset_fences(q->device, 1, &q->fence);
    if (result < 0) q->failed_call = "vkResetFences";
    return result;
}

/* Record the rows into cb and submit them without waiting: the semaphore reaches `value` (or,
   without one, `fence` signals) when they are done. */
static vc_vk_result vc_vk_start(vc_vk_queue* q, void* cb, uint64_t fence, uint64_t value,
                                const vc_vk_copy* rows, size_t n, const int64_t* wave_starts,
                                size_t n_waves) {
    vc_vk_result result;
    if (fence != 0) {
        result = q->reset_fences(q->device, 1, &fence);
        if (result < 0) { q->failed_call = "vkResetFences"; return result; }
    }
    result = vc_vk_record(q, cb, rows, n, wave_starts, n_waves);
    if (result < 0) return result;
    return vc_vk_submit(q, cb, fence, q->semaphore ? value : 0);
}

/* The semaphore's value now, or (without a semaphore) 1 when `fence` signalled, 0 when not. */
static vc_vk_result vc_vk_reached(vc_vk_queue* q, uint64_t fence, uint64_t* value) {
    vc_vk_result result;
    if (q->semaphore) {
        result = q->counter(q->device, q->semaphore, value);
        if (result < 0) q->failed_call = "vkGetSemaphoreCounterValue";
        return result;
    }
    result = q->fence_status(q->device, fence);
    if (result < 0) { q->failed_call = "vkGetFenceStatus"; return result; }
    *value = result == 0;
    return 0;
}

/* Wait up to timeout_ns until the semaphore reaches value (or every fence of `fences` signals):
   0, VC_VK_TIMEOUT, or an error. */
static vc_vk_result vc_vk_wait_for(vc_vk_queue* q, uint64_t value, const uint64_t* fences,
                                   uint32_t n_fences, uint64_t timeout_ns) {
    vc_vk_result result;
    if (q->semaphore) {
        vc_vk_semaphore_wait_info info = {1000207004, NULL, 0, 1, &q->semaphore, &value};
        result = q->wait_semaphores(q->device, &info, timeout_ns);
        if (result < 0) q->failed_call = "vkWaitSemaphores";
        return result;
    }
    result = q->wait(q->device, n_fences, fences, 1, timeout_ns);
    if (result < 0) q->failed_call = "vkWaitForFences";
    return result;
}

#endif
