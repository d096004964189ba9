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

/* Run fn(ctx, start, stop) over [0, n) split into `threads` contiguous ranges, one pthread
 * each (the calling thread takes the first). Returns the largest status any range returned. */
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
    pthread_t tids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    int64_t per = (n + threads - 1) / threads;
    for (int t = 0; t < threads; t++) {
        int64_t start = t * per < n ? t * per : n;
        int64_t stop = start + per < n ? start + per : n;
        jobs[t] = (range_job_t){fn, ctx, start, stop, 0};
    }
    for (int t = 1; t < threads; t++)
        started[t] = pthread_create(&tids[t], NULL, run_range, &jobs[t]) == 0;
    run_range(&jobs[0]);
    int status = 0;
    for (int t = 1; t < threads; t++) {
        if (started[t])
            pthread_join(tids[t], NULL);
        else
            run_range(&jobs[t]);
    }
    for (int t = 0; t < threads; t++)
        if (jobs[t].status > status) status = jobs[t].status;
    return status;
}

typedef struct {
    const float *pre, *bias;
    int64_t d, k;
    float *vals;
    int64_t *idx;
    const int64_t *cols; /* columns read out of every row (after the bias), or NULL */
    int64_t n_cols;
    float *extra; /* [rows, n_cols]: the columns copied (cols_k == 0) */
    int64_t cols_k; /* > 0: instead of copying, each row's cols_k largest positive entries */
    float *aux_vals; /* [rows, cols_k] */
    int64_t *aux_idx; /* [rows, cols_k], positions in cols */
    int64_t *aux_count; /* [rows]: how many of the row's slots are filled */
} topk_ctx_t;

static int topk_rows_range(void *arg, int64_t start, int64_t stop) {
    const topk_ctx_t *job = (const topk_ctx_t *)arg;
    const int64_t d = job->d, k = job->k;
    int status = 0;
    const int64_t n_chunks = (d + CHUNK - 1) / CHUNK;
    float *maxima = malloc(sizeof(float) * n_chunks);
    float *scratch = malloc(sizeof(float) * n_chunks);
    entry_t *cand = malloc(sizeof(entry_t) * d);
    entry_t *pos = job->cols_k > 0 ? malloc(sizeof(entry_t) * (job->n_cols + 1)) : NULL;
    /* no bias: add zeros (x + 0 is x), so that one loop serves both */
    float *zeros = job->bias ? NULL : calloc(d, sizeof(float));
    const float *bias = job->bias ? job->bias : zeros;
    if (!maxima || !scratch || !cand || !bias || (job->cols_k > 0 && !pos)) {
        status = 1;
        goto done;
    }
    for (int64_t r = start; r < stop; r++) {
        /* the row is read from memory once; pre + bias is formed on the fly in each pass
         * (the bias and the row's chunks stay in cache) */
        const float *row = job->pre + r * d;
        /* chunk maxima; `poison` turns NaN if any entry is NaN (or infinite: then the
         * caller's fallback also runs, harmlessly) */
        const int64_t full = d / CHUNK;
        float poison = 0.0f;
        for (int64_t c = 0; c < full; c++) {
            /* eight lanes side by side so that the compiler emits vector max/add */
            const float *p = row + c * CHUNK, *q = bias + c * CHUNK;
            float m8[8], z8[8];
            for (int l = 0; l < 8; l++) {
                const float v = p[l] + q[l];
                m8[l] = v;
                z8[l] = v * 0.0f;
            }
            for (int j = 8; j < CHUNK; j += 8)
                for (int l = 0; l < 8; l++) {
                    const float v = p[j + l] + q[j + l];
                    m8[l] = v > m8[l] ? v : m8[l];
                    z8[l] += v * 0.0f;
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
            const float *p = row + full * CHUNK, *q = bias + full * CHUNK;
            float m = p[0] + q[0];
            for (int64_t j = 0; j < d - full * CHUNK; j++) {
                const float v = p[j] + q[j];
                m = v > m ? v : m;
                poison += v * 0.0f;
            }
            maxima[full] = m;
        }
        if (poison != 0.0f) { /* NaN (or inf): the caller uses torch's top-k instead */
            status = 2;
            goto done;
        }
        if (job->cols && job->cols_k > 0) {
            /* AuxK: only the dead latents' positive entries can matter after its ReLU, and
             * there are few of them; keep the cols_k largest */
            int64_t m = 0;
            for (int64_t c = 0; c < job->n_cols; c++) {
                const int64_t j = job->cols[c];
                const float v = row[j] + bias[j];
                if (v > 0.0f) {
                    pos[m].v = v;
                    pos[m].i = c;
                    m++;
                }
            }
            if (m > job->cols_k) {
                select_largest(pos, m, job->cols_k);
                m = job->cols_k;
            }
            float *av = job->aux_vals + r * job->cols_k;
            int64_t *ai = job->aux_idx + r * job->cols_k;
            for (int64_t j = 0; j < m; j++) {
                av[j] = pos[j].v;
                ai[j] = pos[j].i;
            }
            job->aux_count[r] = m;
        } else if (job->cols) { /* the dead latents' columns, now that the row is in cache */
            float *out = job->extra + r * job->n_cols;
            for (int64_t c = 0; c < job->n_cols; c++) {
                const int64_t j = job->cols[c];
                out[c] = row[j] + bias[j];
            }
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
            const int64_t w = (c == n_chunks - 1) ? d - c * CHUNK : CHUNK;
            const float *p = row + c * CHUNK, *q = bias + c * CHUNK;
            for (int64_t j = 0; j < w; j++) {
                const float v = p[j] + q[j];
                if (v >= t) {
                    cand[n].v = v;
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
    free(pos);
    free(zeros);
    return status;
}

/* The k largest entries of each row of pre [rows, d] (plus bias [d] when not NULL):
 * vals [rows, k], idx [rows, k]; with `cols` (n_cols column indices) and cols_k == 0, also
 * extra[r, c] = (pre + bias)[r, cols[c]]; with cols_k > 0 instead, the row's (at most) cols_k
 * largest positive entries among those columns: aux_vals[r, :m], aux_idx[r, :m] (positions
 * in cols, no particular order), aux_count[r] = m. Returns 0, 1 (out of memory), 2 (a NaN or
 * infinity: nothing is promised about the outputs) or 3 (bad k). */
int saelab_topk_rows(const float *pre, const float *bias, int64_t rows, int64_t d, int64_t k,
                     float *vals, int64_t *idx, const int64_t *cols, int64_t n_cols,
                     float *extra, int64_t cols_k, float *aux_vals, int64_t *aux_idx,
                     int64_t *aux_count, int threads) {
    if (k < 1 || k > d || cols_k < 0) return 3;
    topk_ctx_t ctx = {pre, bias, d, k, vals, idx, cols, n_cols, extra,
                      cols_k, aux_vals, aux_idx, aux_count};
    return parallel_for(topk_rows_range, &ctx, rows, threads);
}

/* ---- unit-norm decoder rows ---------------------------------------------------------- */

/* a . b with 16 independent partial sums (vector registers, no serial add chain). */
static float dot(const float *a, const float *b, int64_t d) {
    float acc[16] = {0};
    int64_t j = 0;
    for (; j + 16 <= d; j += 16)
        for (int l = 0; l < 16; l++) acc[l] += a[j + l] * b[j + l];
    float total = 0.0f;
    for (int l = 0; l < 16; l++) total += acc[l];
    for (; j < d; j++) total += a[j] * b[j];
    return total;
}

typedef struct {
    float *grad;
    const float *w;
    float *rows;
    int64_t d;
    float eps;
} rows_ctx_t;

static int project_range(void *arg, int64_t start, int64_t stop) {
    const rows_ctx_t *c = (const rows_ctx_t *)arg;
    for (int64_t r = start; r < stop; r++) {
        float *g = c->grad + r * c->d;
        const float *w = c->w + r * c->d;
        const float gw = dot(g, w, c->d);
        for (int64_t j = 0; j < c->d; j++) g[j] -= gw * w[j];
    }
    return 0;
}

/* grad[r] -= (grad[r] . w[r]) w[r] for every row r of grad, w [rows, d]. */
int saelab_project_rows(float *grad, const float *w, int64_t rows, int64_t d, int threads) {
    rows_ctx_t ctx = {grad, w, NULL, d, 0.0f};
    return parallel_for(project_range, &ctx, rows, threads);
}

static int normalize_range(void *arg, int64_t start, int64_t stop) {
    const rows_ctx_t *c = (const rows_ctx_t *)arg;
    for (int64_t r = start; r < stop; r++) {
        float *w = c->rows + r * c->d;
        float norm = sqrtf(dot(w, w, c->d));
        norm = norm > c->eps ? norm : c->eps;
        for (int64_t j = 0; j < c->d; j++) w[j] /= norm;
    }
    return 0;
}

/* w[r] /= max(||w[r]||, eps) for every row r of w [rows, d]. */
int saelab_normalize_rows(float *w, int64_t rows, int64_t d, float eps, int threads) {
    rows_ctx_t ctx = {NULL, NULL, w, d, eps};
    return parallel_for(normalize_range, &ctx, rows, threads);
}
