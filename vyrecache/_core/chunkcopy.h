/* Running a compaction plan's chunk table on the CPU with streaming stores, on several threads.
 *
 * The table is sorted by wave; chunks of one wave never overlap each other, and a chunk may
 * read what an earlier wave wrote.  So the threads split each large wave by bytes and meet at a
 * barrier before the next one.  Small waves (a long chain of short overlapping slides) run on
 * the calling thread alone and need no barrier between them: waking threads for a few kilobytes
 * costs more than the copy.
 */
#ifndef VYRECACHE_CHUNKCOPY_H
#define VYRECACHE_CHUNKCOPY_H

#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "streamcopy.h"

/* The layout of compaction.pxd's Chunk and of CHUNK_DTYPE. */
typedef struct {
    uint32_t src_block, dst_block;
    uint64_t src_offset, dst_offset;
    uint32_t size, wave;
} vc_chunk;

/* A wave this large is split between the threads. */
#define VC_PARALLEL_WAVE_BYTES (1u << 20)
#define VC_MAX_COPY_THREADS 8

static int vc_disjoint(const char* src, const char* dst, size_t size) {
    return dst + size <= src || src + size <= dst;
}

/* Streaming stores when the ranges are disjoint; a chunk that overlaps itself (a slide shorter
   than its length) is a memmove, its lines are in the cache already. */
static void vc_stream_or_move(const char* src, char* dst, size_t size) {
    if (size == 0)
        return;
    if (vc_disjoint(src, dst, size))
        vc_stream_copy(dst, src, size);
    else
        memmove(dst, src, size);
}

/* Chunks [begin, end) in order.  Consecutive chunks that continue each other on both sides
   (neighbouring entries sliding by the same distance) become one copy while the merged source
   and destination stay disjoint: then copying them together or in turn is the same. */
static void vc_copy_chunks(char* const* bases, const vc_chunk* chunks, size_t begin, size_t end) {
    const char* run_src = NULL;
    char* run_dst = NULL;
    size_t run_len = 0;
    for (size_t i = begin; i < end; i++) {
        char* dst = bases[chunks[i].dst_block] + chunks[i].dst_offset;
        const char* src = bases[chunks[i].src_block] + chunks[i].src_offset;
        size_t size = chunks[i].size;
        if (i + 1 < end) {
            /* The hardware prefetcher stops at page boundaries: start the next chunk's first
               lines while this one copies (about 10% with 4 KiB entries, measured). */
            const char* ahead = bases[chunks[i + 1].src_block] + chunks[i + 1].src_offset;
            __builtin_prefetch(ahead, 0, 0);
            __builtin_prefetch(ahead + 64, 0, 0);
            __builtin_prefetch(ahead + 128, 0, 0);
            __builtin_prefetch(ahead + 192, 0, 0);
        }
        if (run_len && src == run_src + run_len && dst == run_dst + run_len
                && vc_disjoint(run_src, run_dst, run_len + size)) {
            run_len += size;
            continue;
        }
        vc_stream_or_move(run_src, run_dst, run_len);
        run_src = src;
        run_dst = dst;
        run_len = size;
    }
    vc_stream_or_move(run_src, run_dst, run_len);
}

typedef struct {
    char* const* bases;
    const vc_chunk* chunks;
    const int64_t* wave_starts;     /* waves + 1 entries */
    size_t waves;
    /* A barrier whose size is known only once the threads exist: workers wait for `started`,
       so a thread that could not be created never holds the others up. */
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int started;
    int threads;
    int arrived;
    unsigned long generation;
} vc_plan_job;

typedef struct {
    vc_plan_job* job;
    int index;
} vc_plan_worker;

static void vc_job_barrier(vc_plan_job* job) {
    pthread_mutex_lock(&job->lock);
    unsigned long generation = job->generation;
    if (++job->arrived == job->threads) {
        job->arrived = 0;
        job->generation++;
        pthread_cond_broadcast(&job->changed);
    } else {
        while (generation == job->generation)
            pthread_cond_wait(&job->changed, &job->lock);
    }
    pthread_mutex_unlock(&job->lock);
}

static uint64_t vc_wave_bytes(const vc_plan_job* job, size_t wave) {
    uint64_t bytes = 0;
    for (int64_t i = job->wave_starts[wave]; i < job->wave_starts[wave + 1]; i++)
        bytes += job->chunks[i].size;
    return bytes;
}

/* Thread `index` of `threads`: its share of every large wave, all of every small one if 0. */
static void vc_run_share(vc_plan_job* job, int index) {
    int threads = job->threads;
    int previous_parallel = 0;
    for (size_t wave = 0; wave < job->waves; wave++) {
        size_t begin = (size_t)job->wave_starts[wave], end = (size_t)job->wave_starts[wave + 1];
        uint64_t bytes = vc_wave_bytes(job, wave);
        int parallel = threads > 1 && bytes >= VC_PARALLEL_WAVE_BYTES;
        if (wave && (parallel || previous_parallel)) {
            /* The threads' shares meet: the next wave may read them.  Streaming stores are
               weakly ordered, so each thread fences its own before it arrives. */
            vc_stream_fence();
            vc_job_barrier(job);
        }
        previous_parallel = parallel;
        if (!parallel) {
            if (index == 0)
                vc_copy_chunks(job->bases, job->chunks, begin, end);
            continue;
        }
        /* Share by bytes: chunks whose first byte falls in [index, index + 1) * bytes / threads. */
        uint64_t low = bytes * index / threads, high = bytes * (index + 1) / threads, seen = 0;
        size_t first = end, last = end;
        for (size_t i = begin; i < end; i++) {
            if (first == end && seen >= low)
                first = i;
            if (seen >= high) {
                last = i;
                break;
            }
            seen += job->chunks[i].size;
        }
        if (first < last)
            vc_copy_chunks(job->bases, job->chunks, first, last);
    }
    vc_stream_fence();      /* streaming stores are weakly ordered: publish them before joining */
}

static void* vc_plan_worker_main(void* arg) {
    vc_plan_worker* worker = (vc_plan_worker*)arg;
    vc_plan_job* job = worker->job;
    pthread_mutex_lock(&job->lock);
    while (!job->started)
        pthread_cond_wait(&job->changed, &job->lock);
    pthread_mutex_unlock(&job->lock);
    vc_run_share(job, worker->index);
    return NULL;
}

/* Run the whole table with up to `threads` threads (the caller's included). */
static void vc_copy_plan(char* const* bases, const vc_chunk* chunks, const int64_t* wave_starts,
                         size_t waves, int threads) {
    vc_plan_job job;
    vc_plan_worker workers[VC_MAX_COPY_THREADS];
    pthread_t handles[VC_MAX_COPY_THREADS];
    int created = 0;
    if (threads > VC_MAX_COPY_THREADS)
        threads = VC_MAX_COPY_THREADS;
    job.bases = bases;
    job.chunks = chunks;
    job.wave_starts = wave_starts;
    job.waves = waves;
    job.started = 0;
    job.threads = 1;
    job.arrived = 0;
    job.generation = 0;
    pthread_mutex_init(&job.lock, NULL);
    pthread_cond_init(&job.changed, NULL);
    for (int t = 1; t < threads; t++) {
        workers[created].job = &job;
        workers[created].index = created + 1;
        if (pthread_create(&handles[created], NULL, vc_plan_worker_main, &workers[created]) != 0)
            break;          /* fewer threads, same result */
        created++;
    }
    pthread_mutex_lock(&job.lock);
    job.threads = created + 1;
    job.started = 1;
    pthread_cond_broadcast(&job.changed);
    pthread_mutex_unlock(&job.lock);
    vc_run_share(&job, 0);
    for (int t = 0; t < created; t++)
        pthread_join(handles[t], NULL);
    pthread_cond_destroy(&job.changed);
    pthread_mutex_destroy(&job.lock);
}

#endif
