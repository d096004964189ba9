/* saelab's native CPU kernels: plain C, no Python or torch headers, called through ctypes
 * (kernels/native.py builds this file with the system compiler at first use).
 *
 * Every entry point takes raw row-major float32 buffers and a thread count, splits its rows
 * (or latents) into contiguous ranges, one pthread each, and returns 0 on success. Rows are
 * independent, so the result does not depend on the thread count.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

typedef struct {
    const float *pre;
    int64_t rows, d, k;
    float *vals;
    int64_t *idx;
    int64_t start, stop;
    int status;
} topk_job_t;

static void *topk_rows_job(void *arg) {
    topk_job_t *job = (topk_job_t *)arg;
    const int64_t d = job->d, k = job->k;
    const int64_t n_chunks = (d + CHUNK - 1) / CHUNK;
    float *maxima = malloc(sizeof(float) * n_chunks);
    float *scratch = malloc(sizeof(float) * n_chunks);
    entry_t *cand = malloc(sizeof(entry_t) * d);
    if (!maxima || !scratch || !cand) {
        job->status = 1;
        goto done;
    }
    for (int64_t r = job->start; r < job->stop; r++) {
        const float *row = job->pre + r * d;
        /* chunk maxima; `poison` turns NaN if any entry is NaN (or infinite: then the
         * caller's fallback also runs, harmlessly) */
        const int64_t full = d / CHUNK;
        float poison = 0.0f;
        for (int64_t c = 0; c < full; c++) {
            /* eight lanes side by side so that the compiler emits vector max/add */
            const float *p = row + c * CHUNK;
            float m8[8], z8[8];
            for (int l = 0; l < 8; l++) {
                m8[l] = p[l];
                z8[l] = p[l] * 0.0f;
            }
            for (int j = 8; j < CHUNK; j += 8)
                for (int l = 0; l < 8; l++) {
                    m8[l] = p[j + l] > m8[l] ? p[j + l] : m8[l];
                    z8[l] += p[j + l] * 0.0f;
                }
            float m = m8[0], z = z8[0];
            for (int l = 1; l < 8; l++) {
                m = m8[l] > m ? m8[l] : m;
                z += z8[l];
            }
            maxima[c] = m;
            poison += z;
        }
        if (full < n_chunks) {
            const float *p = row + full * CHUNK;
            float m = p[0];
            for (int64_t j = 0; j < d - full * CHUNK; j++) {
                m = p[j] > m ? p[j] : m;
                poison += p[j] * 0.0f;
            }
            maxima[full] = m;
        }
        if (poison != 0.0f) { /* NaN (or inf): the caller uses torch's top-k instead */
            job->status = 2;
            goto done;
        }
        float t;
        if (n_chunks > k) {
            memcpy(scratch, maxima, sizeof(float) * n_chunks);
            t = kth_largest(scratch, n_chunks, k);
        } else {
            t = -INFINITY; /* every entry is a candidate */
        }
        /* Every top-k entry is >= t (the k chunk maxima >= t are k entries of the row), and
         * lies in a chunk whose maximum is >= t. */
        int64_t n = 0;
        for (int64_t c = 0; c < n_chunks; c++) {
            if (maxima[c] < t) continue;
            int64_t w = (c == n_chunks - 1) ? d - c * CHUNK : CHUNK;
            const float *p = row + c * CHUNK;
            for (int64_t j = 0; j < w; j++) {
                if (p[j] >= t) {
                    cand[n].v = p[j];
                    cand[n].i = c * CHUNK + j;
                    n++;
                }
            }
        }
        select_largest(cand, n, k);
        float *ov = job->vals + r * k;
        int64_t *oi = job->idx + r * k;
        for (int64_t j = 0; j < k; j++) {
            ov[j] = cand[j].v;
            oi[j] = cand[j].i;
        }
    }
done:
    free(maxima);
    free(scratch);
    free(cand);
    return NULL;
}

/* The k largest entries of each row of pre [rows, d]: vals [rows, k], idx [rows, k].
 * Returns 0, 1 (out of memory) or 2 (a NaN: nothing is promised about the outputs). */
int saelab_topk_rows(const float *pre, int64_t rows, int64_t d, int64_t k, float *vals,
                     int64_t *idx, int threads) {
    if (k < 1 || k > d) return 3;
    if (threads < 1) threads = 1;
    if (threads > rows) threads = rows > 0 ? (int)rows : 1;
    topk_job_t jobs[64];
    pthread_t tids[64];
    if (threads > 64) threads = 64;
    int64_t per = (rows + threads - 1) / threads;
    for (int t = 0; t < threads; t++) {
        int64_t start = t * per, stop = start + per < rows ? start + per : rows;
        jobs[t] = (topk_job_t){pre, rows, d, k, vals, idx, start, stop, 0};
    }
    int started[64] = {0};
    for (int t = 1; t < threads; t++)
        started[t] = pthread_create(&tids[t], NULL, topk_rows_job, &jobs[t]) == 0;
    topk_rows_job(&jobs[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t])
            pthread_join(tids[t], NULL);
        else
            topk_rows_job(&jobs[t]);
    }
    int status = 0;
    for (int t = 0; t < threads; t++)
        if (jobs[t].status > status) status = jobs[t].status;
    return status;
}
