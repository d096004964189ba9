/* saelab's native CPU kernels: plain C, no Python or torch headers, called through ctypes
 * (kernels/native.py builds the csrc/ files with the system compiler at first use).
 *
 * Every entry point takes raw row-major float32 buffers and a thread count, splits its rows
 * (or latents) into contiguous ranges, one thread each, and returns 0 on success. Rows are
 * independent, so the result does not depend on the thread count.
 */
#include "common.h"

/* maxima[c] = max over chunk c of row + bias (strided chunks, see chunk_count); returns 0 if
 * every entry is finite, else NaN or infinity. */
static float chunk_maxima(const float *row, const float *bias, int64_t d, int64_t S,
                          float *restrict maxima, float *restrict poison) {
    for (int64_t c = 0; c < S; c++) {
        const float v = row[c] + bias[c];
        maxima[c] = v;
        poison[c] = v * 0.0f;
    }
    for (int64_t off = S; off < d; off += S) {
        const int64_t w = d - off < S ? d - off : S;
        const float *p = row + off, *q = bias + off;
        for (int64_t c = 0; c < w; c++) {
            const float v = p[c] + q[c];
            maxima[c] = v > maxima[c] ? v : maxima[c];
            poison[c] += v * 0.0f;
        }
    }
    float z = 0.0f;
    for (int64_t c = 0; c < S; c++) z += poison[c];
    return z;
}

/* The entries of row + bias that are >= t, appended to cand; returns how many. `next` (the
 * next row to be read, or NULL) is prefetched meanwhile: this pass reads from cache, so the
 * next row's memory traffic overlaps with its work. */
static int64_t collect_at_least(const float *row, const float *bias, int64_t d, float t,
                                entry_t *cand, const float *next) {
    int64_t n = 0, j = 0;
    for (; j + 16 <= d; j += 16) {
        if (next) __builtin_prefetch(next + j);
        float v[16];
        for (int l = 0; l < 16; l++) v[l] = row[j + l] + bias[j + l];
        unsigned mask = at_least16(v, t);
        while (mask) {
            const int l = __builtin_ctz(mask);
            cand[n].v = v[l];
            cand[n].i = j + l;
            n++;
            mask &= mask - 1;
        }
    }
    for (; j < d; j++) {
        const float v = row[j] + bias[j];
        if (v >= t) {
            cand[n].v = v;
            cand[n].i = j;
            n++;
        }
    }
    return n;
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
    const int64_t n_chunks = chunk_count(d);
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
        /* the row is read from memory once (the first pass); pre + bias is formed on the fly
         * in each pass, the row and the bias staying in cache */
        const float *row = job->pre + r * d;
        if (chunk_maxima(row, bias, d, n_chunks, maxima, scratch) != 0.0f) {
            status = 2; /* NaN (or inf): the caller uses torch's top-k instead */
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
        /* Every top-k entry is >= t, the k-th largest chunk maximum (those k maxima are k
         * entries of the row); with no more chunks than k, every entry is a candidate. */
        float t = -INFINITY;
        if (n_chunks > k) {
            memcpy(scratch, maxima, sizeof(float) * n_chunks);
            t = kth_largest(scratch, n_chunks, k);
        }
        const float *next = r + 1 < stop ? row + d : NULL;
        const int64_t n = collect_at_least(row, bias, d, t, cand, next);
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

/* ---- latent-major segment sums (the sparse backward) --------------------------------- */

typedef struct {
    const int64_t *starts, *order, *bounds;
    int64_t k, d;
    const float *w, *a, *table;
    float *out, *dots;
} segment_ctx_t;

/* Thread t's latents bounds[t]..bounds[t+1]: for each latent r, its entries e in
 * starts[r]..starts[r+1] (flat positions p = order[e] of an [N, k] selection, token p / k):
 * out[r] = sum_e w[p] a[p / k] in entry order, and, with a table, dots[p] = a[p / k] . table[r].
 * One thread owns each latent, so the sums' order, hence the result, does not depend on the
 * thread count; a[token] rows are read once per entry for both. */
/* acc += w g, returning g . t, in one pass over g (64 independent partial sums for the dot:
 * no serial add chain). */
static float axpy_dot(float *restrict acc, float w, const float *restrict g,
                      const float *restrict t, int64_t d) {
    float part[64] = {0};
    int64_t j = 0;
    for (; j + 64 <= d; j += 64)
        for (int l = 0; l < 64; l++) {
            const float gv = g[j + l];
            acc[j + l] += w * gv;
            part[l] += gv * t[j + l];
        }
    float total = 0.0f;
    for (; j < d; j++) {
        acc[j] += w * g[j];
        total += g[j] * t[j];
    }
    for (int l = 0; l < 64; l++) total += part[l];
    return total;
}

#define PREFETCH_ENTRIES 8 /* entries ahead whose a row is prefetched (rows are random) */

static int segment_range(void *arg, int64_t start, int64_t stop) {
    const segment_ctx_t *c = (const segment_ctx_t *)arg;
    const int64_t d = c->d, k = c->k;
    for (int64_t t = start; t < stop; t++) {
        const int64_t last = c->starts[c->bounds[t + 1]];
        for (int64_t r = c->bounds[t]; r < c->bounds[t + 1]; r++) {
            float *restrict acc = c->out + r * d;
            memset(acc, 0, sizeof(float) * d);
            const float *trow = c->table ? c->table + r * d : NULL;
            for (int64_t e = c->starts[r]; e < c->starts[r + 1]; e++) {
                if (e + PREFETCH_ENTRIES < last) {
                    const float *ahead = c->a + (c->order[e + PREFETCH_ENTRIES] / k) * d;
                    for (int64_t j = 0; j < d; j += 16) __builtin_prefetch(ahead + j);
                }
                const int64_t p = c->order[e];
                const float *restrict g = c->a + (p / k) * d;
                const float wv = c->w[p];
                if (trow)
                    c->dots[p] = axpy_dot(acc, wv, g, trow, d);
                else
                    for (int64_t j = 0; j < d; j++) acc[j] += wv * g[j];
            }
        }
    }
    return 0;
}

/* out [n_rows, d] (every row written) and, when table is not NULL, dots [N * k]; see
 * segment_range. The latents are split between threads by entry count. Returns 0. */
int saelab_segment_rows(const int64_t *starts, const int64_t *order, int64_t n_rows, int64_t k,
                        const float *w, const float *a, int64_t d, float *out,
                        const float *table, float *dots, int threads) {
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    int64_t bounds[MAX_THREADS + 1];
    split_by_entries(starts, n_rows, threads, bounds);
    segment_ctx_t ctx = {starts, order, bounds, k, d, w, a, table, out, dots};
    return parallel_for(segment_range, &ctx, threads, threads);
}

/* ---- unit-norm decoder rows ---------------------------------------------------------- */

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
