/* Helpers shared by saelab's native CPU kernels (each .c file includes this header; the
 * functions are static, one copy per file). */
#ifndef SAELAB_COMMON_H
#define SAELAB_COMMON_H

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#define CHUNK 32

typedef struct {
    float v;
    int64_t i;
} entry_t;

/* Rearrange a[0..n) so that its k largest values come first (in no particular order):
 * quickselect with a median-of-three pivot, deterministic. */
static void select_largest(entry_t *a, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        float x = a[lo].v, y = a[mid].v, z = a[hi].v;
        float pivot = (x < y) ? ((y < z) ? y : ((x < z) ? z : x)) : ((x < z) ? x : ((y < z) ? z : y));
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (a[i].v > pivot) i++;
            while (a[j].v < pivot) j--;
            if (i <= j) {
                entry_t t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        }
        /* now a[lo..j] >= pivot >= a[i..hi] */
        if (k - 1 <= j)
            hi = j;
        else if (k - 1 >= i)
            lo = i;
        else
            return;
    }
}

/* The k-th largest of m[0..n) (m is reordered). */
static float kth_largest(float *m, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        float x = m[lo], y = m[mid], z = m[hi];
        float pivot = (x < y) ? ((y < z) ? y : ((x < z) ? z : x)) : ((x < z) ? x : ((y < z) ? z : y));
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (m[i] > pivot) i++;
            while (m[j] < pivot) j--;
            if (i <= j) {
                float t = m[i];
                m[i] = m[j];
                m[j] = t;
                i++;
                j--;
            }
        }
        if (want <= j)
            hi = j;
        else if (want >= i)
            lo = i;
        else
            return m[want];
    }
    return m[want];
}

/* Run fn(ctx, start, stop) over [0, n) split into `threads` contiguous ranges. Built with
 * OpenMP (the default), the ranges run on the OpenMP runtime torch itself uses (the same
 * libgomp.so.1, already loaded), so its team, not a second set of threads competing with
 * torch's still-spinning workers, does the work: with pthreads, a kernel right after a torch
 * op ran ~1.8x slower on 2 cores. Without OpenMP, one pthread per range (the calling thread
 * takes the first). Returns the largest status any range returned. */
typedef int (*range_fn)(void *ctx, int64_t start, int64_t stop);

typedef struct {
    range_fn fn;
    void *ctx;
    int64_t start, stop;
    int status;
} range_job_t;

static void *run_range(void *arg) {
    range_job_t *job = (range_job_t *)arg;
    job->status = job->fn(job->ctx, job->start, job->stop);
    return NULL;
}

#define MAX_THREADS 64

static int parallel_for(range_fn fn, void *ctx, int64_t n, int threads) {
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > n) threads = n > 0 ? (int)n : 1;
    range_job_t jobs[MAX_THREADS];
    int64_t per = (n + threads - 1) / threads;
    for (int t = 0; t < threads; t++) {
        int64_t start = t * per < n ? t * per : n;
        int64_t stop = start + per < n ? start + per : n;
        jobs[t] = (range_job_t){fn, ctx, start, stop, 0};
    }
#if defined(_OPENMP)
    if (threads == 1) {
        run_range(&jobs[0]);
    } else {
#pragma omp parallel for num_threads(threads) schedule(static, 1)
        for (int t = 0; t < threads; t++) run_range(&jobs[t]);
    }
#else
    pthread_t tids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int t = 1; t < threads; t++)
        started[t] = pthread_create(&tids[t], NULL, run_range, &jobs[t]) == 0;
    run_range(&jobs[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t])
            pthread_join(tids[t], NULL);
        else
            run_range(&jobs[t]);
    }
#endif
    int status = 0;
    for (int t = 0; t < threads; t++)
        if (jobs[t].status > status) status = jobs[t].status;
    return status;
}

/* a . b with 16 independent partial sums (vector registers, no serial add chain). */
static inline float dot(const float *a, const float *b, int64_t d) {
    float acc[16] = {0};
    int64_t j = 0;
    for (; j + 16 <= d; j += 16)
        for (int l = 0; l < 16; l++) acc[l] += a[j + l] * b[j + l];
    float total = 0.0f;
    for (int l = 0; l < 16; l++) total += acc[l];
    for (; j < d; j++) total += a[j] * b[j];
    return total;
}

/* bounds[0..threads]: latent ranges with about equal entry counts (latent r's entries are
 * starts[r]..starts[r+1]). */
static void split_by_entries(const int64_t *starts, int64_t n_rows, int threads,
                             int64_t *bounds) {
    const int64_t total = starts[n_rows] - starts[0];
    bounds[0] = 0;
    for (int t = 1; t < threads; t++) { /* first latent whose entries start past t/threads */
        const int64_t want = starts[0] + total * t / threads;
        int64_t lo = bounds[t - 1], hi = n_rows;
        while (lo < hi) {
            const int64_t mid = lo + (hi - lo) / 2;
            if (starts[mid] < want)
                lo = mid + 1;
            else
                hi = mid;
        }
        bounds[t] = lo;
    }
    bounds[threads] = n_rows;
}

/* Chunk c of a row of width d holds the entries c, c + S, c + 2S, ... (S = n_chunks, a
 * multiple of 16): the chunk maxima are then an element-wise max over the row's S-wide
 * slices, which vectorises with no horizontal reductions. */
static int64_t chunk_count(int64_t d) {
    int64_t s = (d + CHUNK - 1) / CHUNK;
    s = (s + 15) / 16 * 16;
    return s < d ? s : d;
}

/* Bit l set where h[l] >= t (l < 16). */
static inline unsigned at_least16(const float *h, float t) {
#if defined(__AVX512F__)
    return (unsigned)_mm512_cmp_ps_mask(_mm512_loadu_ps(h), _mm512_set1_ps(t), _CMP_GE_OQ);
#elif defined(__AVX2__)
    const __m256 tv = _mm256_set1_ps(t);
    const unsigned lo = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(h), tv, _CMP_GE_OQ));
    const unsigned hi = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(h + 8), tv, _CMP_GE_OQ));
    return lo | (hi << 8);
#else
    unsigned m = 0;
    for (int l = 0; l < 16; l++) m |= (unsigned)(h[l] >= t) << l;
    return m;
#endif
}

#endif
