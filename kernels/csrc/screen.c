/* Exact top-k of x @ W.T + b screened through a bf16 product (kernels/screen.py).
 *
 * The caller has the product a = bf16(x) @ bf16(W).T (fp32 accumulation, bf16 output) and, per
 * row t and latent j, a bound E[t, j] >= |v[t, j] - (a[t, j] + b[j])| on how far the fp32
 * pre-activation v = x[t] . W[j] + b[j] (as this file computes it) can lie from the screened
 * value:
 *     E = alpha[t] wn[j] + beta[t] rwn[j] + c1 |a[t, j]| + colc[j] + rowc[t].
 * Per row: L = the k-th largest chunk maximum of the lower bounds (at least k entries have
 * v >= L); the candidates are the entries whose upper bound reaches L, narrowed to those
 * reaching the k-th largest lower bound among them; every top-k entry of v is a candidate.
 * The candidates' v are then computed in fp32 (latent-major: each W row read once) and the
 * row's top-k taken among them. Same entries and values whatever the thread count.
 */
#include "common.h"

static inline float bf16_to_float(uint16_t h) {
    const uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

typedef struct {
    const uint16_t *a;
    const float *lbias, *hbias; /* b - colc and b + colc */
    const float *alpha, *beta, *rowc, *wn, *rwn;
    float c1;
    int64_t S, k;
    /* AuxK: the dead latents' columns, and each row's at most cols_k largest positive values
     * among them */
    const int64_t *cols;
    int64_t n_cols, cols_k;
    int32_t **lists; /* per row: its candidates' latents, then its AuxK candidates' positions */
    int64_t *counts, *aux_counts; /* per row */
} screen_ctx_t;

/* The lower and upper bounds of entries j..j+w of a row, into lo and hi (hi may be NULL). */
static inline void bounds(const screen_ctx_t *c, const uint16_t *row, float al, float be,
                          float rc, int64_t j, int64_t w, float *restrict lo,
                          float *restrict hi) {
    const float *restrict lb = c->lbias + j, *restrict hb = c->hbias + j;
    const float *restrict wn = c->wn + j, *restrict rwn = c->rwn + j;
    const uint16_t *restrict h = row + j;
    const float c1 = c->c1;
    if (hi)
        for (int64_t l = 0; l < w; l++) {
            const float av = bf16_to_float(h[l]);
            const float e = al * wn[l] + be * rwn[l] + c1 * fabsf(av) + rc;
            lo[l] = av + lb[l] - e;
            hi[l] = av + hb[l] + e;
        }
    else
        for (int64_t l = 0; l < w; l++) {
            const float av = bf16_to_float(h[l]);
            lo[l] = av + lb[l] - (al * wn[l] + be * rwn[l] + c1 * fabsf(av) + rc);
        }
}

/* AuxK's candidates in row r: positions q in cols whose upper bound (from the row's `upper`,
 * already computed for every latent) is positive (v <= 0 otherwise), narrowed to those
 * reaching the cols_k-th largest lower bound among them. */
static int64_t aux_candidates(const screen_ctx_t *c, const uint16_t *row, float al, float be,
                              float rc, const float *upper, entry_t *cand, float *scratch) {
    int64_t n = 0;
    for (int64_t q = 0; q < c->n_cols; q++) {
        const float h = upper[c->cols[q]];
        if (h > 0.0f) {
            cand[n].v = h;
            cand[n].i = q;
            n++;
        }
    }
    if (n > c->cols_k) {
        for (int64_t i = 0; i < n; i++)
            bounds(c, row, al, be, rc, c->cols[cand[i].i], 1, scratch + i, NULL);
        const float t = kth_largest(scratch, n, c->cols_k);
        int64_t m = 0;
        for (int64_t i = 0; i < n; i++)
            if (cand[i].v >= t) cand[m++] = cand[i];
        n = m;
    }
    return n;
}

static int screen_rows_range(void *arg, int64_t start, int64_t stop) {
    const screen_ctx_t *c = (const screen_ctx_t *)arg;
    const int64_t S = c->S, k = c->k, n_chunks = chunk_count(S);
    int status = 0;
    float *maxima = malloc(sizeof(float) * n_chunks), *poison = malloc(sizeof(float) * n_chunks);
    float *scratch = malloc(sizeof(float) * (S + 16)), *upper = malloc(sizeof(float) * (S + 16));
    entry_t *cand = malloc(sizeof(entry_t) * (S + 16));
    const int64_t nc = c->cols ? c->n_cols : 0;
    entry_t *acand = malloc(sizeof(entry_t) * (nc + 1));
    if (!maxima || !poison || !scratch || !upper || !cand || !acand) {
        status = 1;
        goto done;
    }
    for (int64_t r = start; r < stop; r++) {
        const uint16_t *row = c->a + r * S;
        const float al = c->alpha[r], be = c->beta[r], rc = c->rowc[r];
        /* pass 1: chunk maxima of the lower bounds (strided chunks, as chunk_maxima),
         * one S-wide slice at a time */
        for (int64_t off = 0; off < S; off += n_chunks) {
            const int64_t w = S - off < n_chunks ? S - off : n_chunks;
            bounds(c, row, al, be, rc, off, w, scratch, upper + off);
            if (off == 0) {
                for (int64_t i = 0; i < w; i++) {
                    maxima[i] = scratch[i];
                    poison[i] = scratch[i] * 0.0f;
                }
            } else {
                for (int64_t i = 0; i < w; i++) {
                    maxima[i] = scratch[i] > maxima[i] ? scratch[i] : maxima[i];
                    poison[i] += scratch[i] * 0.0f;
                }
            }
        }
        for (int64_t j = S; j < S + 16; j++) upper[j] = -INFINITY;
        float z = 0.0f;
        for (int64_t i = 0; i < n_chunks; i++) z += poison[i];
        /* a finite lower bound means a finite screened value and bound (an upper bound may
         * still overflow to +inf near FLT_MAX: the entry is then a candidate, harmlessly) */
        if (z != 0.0f) {
            status = 2; /* NaN or infinity: the caller computes the product in fp32 */
            goto done;
        }
        float t = -INFINITY;
        if (n_chunks > k) {
            memcpy(scratch, maxima, sizeof(float) * n_chunks);
            t = kth_largest(scratch, n_chunks, k);
        }
        /* pass 2: the entries whose upper bound reaches t (from cache; the next row is
         * prefetched meanwhile) */
        const uint16_t *next = r + 1 < stop ? row + S : NULL;
        int64_t n = 0;
        for (int64_t j = 0; j < S; j += 16) {
            if (next) __builtin_prefetch(next + j);
            unsigned mask = at_least16(upper + j, t);
            while (mask) {
                const int l = __builtin_ctz(mask);
                cand[n].v = upper[j + l];
                cand[n].i = j + l;
                n++;
                mask &= mask - 1;
            }
        }
        if (n > k) { /* narrow: the k-th largest lower bound among the candidates */
            for (int64_t i = 0; i < n; i++)
                bounds(c, row, al, be, rc, cand[i].i, 1, scratch + i, NULL);
            const float t2 = kth_largest(scratch, n, k);
            int64_t m = 0;
            for (int64_t i = 0; i < n; i++)
                if (cand[i].v >= t2) cand[m++] = cand[i];
            n = m;
        }
        const int64_t m = nc ? aux_candidates(c, row, al, be, rc, upper, acand, scratch) : 0;
        int32_t *list = malloc(sizeof(int32_t) * (n + m > 0 ? n + m : 1));
        if (!list) {
            status = 1;
            goto done;
        }
        for (int64_t i = 0; i < n; i++) list[i] = (int32_t)cand[i].i;
        for (int64_t i = 0; i < m; i++) list[n + i] = (int32_t)acand[i].i;
        c->lists[r] = list;
        c->counts[r] = n;
        c->aux_counts[r] = m;
    }
done:
    free(maxima);
    free(poison);
    free(scratch);
    free(upper);
    free(cand);
    free(acand);
    return status;
}

typedef struct {
    const int64_t *starts, *entries, *bounds; /* latent-major: entry ids per latent */
    const int64_t *owner; /* token row of each entry */
    const float *x, *W, *bias;
    int64_t d;
    float *v; /* per entry */
} exact_ctx_t;

#define PREFETCH_AHEAD 8 /* entries ahead whose x row is prefetched (rows are random) */

static int exact_range(void *arg, int64_t start, int64_t stop) {
    const exact_ctx_t *c = (const exact_ctx_t *)arg;
    for (int64_t t = start; t < stop; t++)
        for (int64_t j = c->bounds[t]; j < c->bounds[t + 1]; j++) {
            const float *w = c->W + j * c->d;
            for (int64_t e = c->starts[j]; e < c->starts[j + 1]; e++) {
                if (e + PREFETCH_AHEAD < c->starts[c->bounds[t + 1]]) {
                    const float *ahead = c->x + c->owner[c->entries[e + PREFETCH_AHEAD]] * c->d;
                    for (int64_t i = 0; i < c->d; i += 16) __builtin_prefetch(ahead + i);
                }
                const int64_t id = c->entries[e];
                c->v[id] = dot(c->x + c->owner[id] * c->d, w, c->d) + c->bias[j];
            }
        }
    return 0;
}

typedef struct {
    const int64_t *offsets, *counts; /* row r: main entries offsets[r] .. + counts[r], then AuxK's */
    const int32_t *latent, *pos;     /* per entry: its latent; an AuxK entry's position in cols */
    const float *v;
    int64_t k, cols_k;
    float *vals, *aux_vals;
    int64_t *idx, *aux_idx, *aux_count;
} pick_ctx_t;

static int pick_range(void *arg, int64_t start, int64_t stop) {
    const pick_ctx_t *c = (const pick_ctx_t *)arg;
    int64_t widest = 1;
    for (int64_t r = start; r < stop; r++)
        if (c->offsets[r + 1] - c->offsets[r] > widest) widest = c->offsets[r + 1] - c->offsets[r];
    entry_t *cand = malloc(sizeof(entry_t) * widest);
    if (!cand) return 1;
    for (int64_t r = start; r < stop; r++) {
        const int64_t first = c->offsets[r], n = c->counts[r];
        if (n < c->k) { /* cannot happen with finite bounds; declined all the same */
            free(cand);
            return 4;
        }
        for (int64_t i = 0; i < n; i++) {
            cand[i].v = c->v[first + i];
            cand[i].i = c->latent[first + i];
        }
        select_largest(cand, n, c->k);
        for (int64_t i = 0; i < c->k; i++) {
            c->vals[r * c->k + i] = cand[i].v;
            c->idx[r * c->k + i] = cand[i].i;
        }
        if (!c->aux_vals) continue;
        int64_t m = 0; /* AuxK: the positive values, at most cols_k of them */
        for (int64_t e = first + n; e < c->offsets[r + 1]; e++)
            if (c->v[e] > 0.0f) {
                cand[m].v = c->v[e];
                cand[m].i = c->pos[e];
                m++;
            }
        if (m > c->cols_k) {
            select_largest(cand, m, c->cols_k);
            m = c->cols_k;
        }
        for (int64_t i = 0; i < m; i++) {
            c->aux_vals[r * c->cols_k + i] = cand[i].v;
            c->aux_idx[r * c->cols_k + i] = cand[i].i;
        }
        c->aux_count[r] = m;
    }
    free(cand);
    return 0;
}

/* vals, idx [rows, k]: each row's k largest fp32 pre-activations x[t] . W[j] + b[j] (no
 * particular order), from a [rows, S] (bf16 bits), x [rows, d], W [S, d], the bounds' terms
 * (see the top of the file) and bias b (NULL: none). With cols (n_cols latents) and
 * cols_k > 0, also each row's at most cols_k largest positive pre-activations among those
 * latents: aux_vals, aux_idx [rows, cols_k] (positions in cols; a row's slots from
 * aux_count[r] on are unwritten) and aux_count [rows]. candidates_out (may be NULL) gets the
 * number of entries computed in fp32. Returns 0, 1 (out of memory), 2 (a NaN or infinity in
 * the screened values: nothing is promised) or 3 (bad k). */
int saelab_screened_topk(const uint16_t *a, const float *x, const float *W, const float *bias,
                         const float *alpha, const float *beta, const float *rowc,
                         const float *wn, const float *rwn, const float *colc, float c1,
                         int64_t rows, int64_t S, int64_t d, int64_t k, float *vals,
                         int64_t *idx, const int64_t *cols, int64_t n_cols, int64_t cols_k,
                         float *aux_vals, int64_t *aux_idx, int64_t *aux_count,
                         int64_t *candidates_out, int threads) {
    if (k < 1 || k > S || cols_k < 0) return 3;
    if (cols_k == 0) cols = NULL;
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    int status = 0;
    const int64_t nc = cols ? n_cols : 0;
    float *zeros = bias ? NULL : calloc(S, sizeof(float));
    int32_t **lists = calloc(rows > 0 ? rows : 1, sizeof(int32_t *));
    int64_t *counts = calloc(rows + 1, sizeof(int64_t));
    int64_t *aux_counts = calloc(rows + 1, sizeof(int64_t));
    float *lbias = malloc(sizeof(float) * S), *hbias = malloc(sizeof(float) * S);
    int64_t *offsets = NULL, *owner = NULL, *starts = NULL, *entries = NULL, *fill = NULL;
    int32_t *latent = NULL, *pos = NULL;
    float *v = NULL;
    if ((!bias && !zeros) || !lists || !counts || !aux_counts || !lbias || !hbias) {
        status = 1;
        goto done;
    }
    if (!bias) bias = zeros;
    for (int64_t j = 0; j < S; j++) {
        lbias[j] = bias[j] - colc[j];
        hbias[j] = bias[j] + colc[j];
    }
    screen_ctx_t sc = {a, lbias, hbias, alpha, beta, rowc, wn, rwn, c1, S, k, cols, nc, cols_k,
                       lists, counts, aux_counts};
    status = parallel_for(screen_rows_range, &sc, rows, threads);
    if (status) goto done;

    /* the candidates, row after row (each row's main ones, then its AuxK ones), and the same
     * entries grouped by latent for the fp32 dot products */
    offsets = malloc(sizeof(int64_t) * (rows + 1));
    if (!offsets) {
        status = 1;
        goto done;
    }
    offsets[0] = 0;
    for (int64_t r = 0; r < rows; r++) offsets[r + 1] = offsets[r] + counts[r] + aux_counts[r];
    const int64_t total = offsets[rows];
    if (candidates_out) *candidates_out = total;
    latent = malloc(sizeof(int32_t) * (total + 1));
    pos = malloc(sizeof(int32_t) * (total + 1));
    owner = malloc(sizeof(int64_t) * (total + 1));
    v = malloc(sizeof(float) * (total + 1));
    starts = calloc(S + 1, sizeof(int64_t));
    fill = calloc(S, sizeof(int64_t));
    entries = malloc(sizeof(int64_t) * (total + 1));
    if (!latent || !pos || !owner || !v || !starts || !fill || !entries) {
        status = 1;
        goto done;
    }
    for (int64_t r = 0; r < rows; r++) {
        const int64_t o = offsets[r], n = counts[r];
        for (int64_t i = 0; i < n; i++) {
            latent[o + i] = lists[r][i];
            pos[o + i] = -1;
        }
        for (int64_t i = 0; i < aux_counts[r]; i++) {
            pos[o + n + i] = lists[r][n + i];
            latent[o + n + i] = (int32_t)cols[lists[r][n + i]];
        }
        for (int64_t e = o; e < offsets[r + 1]; e++) owner[e] = r;
    }
    for (int64_t e = 0; e < total; e++) starts[latent[e] + 1]++;
    for (int64_t j = 0; j < S; j++) starts[j + 1] += starts[j];
    for (int64_t e = 0; e < total; e++) entries[starts[latent[e]] + fill[latent[e]]++] = e;

    int64_t bounds[MAX_THREADS + 1];
    split_by_entries(starts, S, threads, bounds);
    exact_ctx_t ec = {starts, entries, bounds, owner, x, W, bias, d, v};
    parallel_for(exact_range, &ec, threads, threads);

    pick_ctx_t pc = {offsets, counts, latent, pos, v, k, cols_k,
                     vals, cols ? aux_vals : NULL, idx, aux_idx, aux_count};
    status = parallel_for(pick_range, &pc, rows, threads);
done:
    if (lists)
        for (int64_t r = 0; r < rows; r++) free(lists[r]);
    free(lists);
    free(counts);
    free(aux_counts);
    free(offsets);
    free(latent);
    free(pos);
    free(owner);
    free(v);
    free(starts);
    free(fill);
    free(entries);
    free(zeros);
    free(lbias);
    free(hbias);
    return status;
}

/* dst [rows, d] = bf16(src) (round to nearest even), norm[r] = ||src[r]||,
 * rnorm[r] = ||src[r] - dst[r]|| (the rounding's residual). Returns 0, or 2 when a value is
 * NaN or infinite (dst then unspecified). */
typedef struct {
    const float *src;
    uint16_t *dst;
    float *norm, *rnorm;
    int64_t d;
} bf16_ctx_t;

static int bf16_range(void *arg, int64_t start, int64_t stop) {
    const bf16_ctx_t *c = (const bf16_ctx_t *)arg;
    int status = 0;
    for (int64_t r = start; r < stop; r++) {
        const float *s = c->src + r * c->d;
        uint16_t *o = c->dst + r * c->d;
        float sq[16] = {0}, rq[16] = {0}, pz[16] = {0};
        int64_t j = 0;
        for (; j + 16 <= c->d; j += 16)
            for (int l = 0; l < 16; l++) { /* 16 lanes side by side: vector code */
                const float f = s[j + l];
                uint32_t bits;
                memcpy(&bits, &f, sizeof bits);
                const uint16_t h = (uint16_t)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
                o[j + l] = h;
                const float res = f - bf16_to_float(h);
                sq[l] += f * f;
                rq[l] += res * res;
                pz[l] += f * 0.0f;
            }
        for (; j < c->d; j++) {
            const float f = s[j];
            uint32_t bits;
            memcpy(&bits, &f, sizeof bits);
            const uint16_t h = (uint16_t)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
            o[j] = h;
            const float res = f - bf16_to_float(h);
            sq[0] += f * f;
            rq[0] += res * res;
            pz[0] += f * 0.0f;
        }
        float a = 0.0f, b = 0.0f, poison = 0.0f;
        for (int l = 0; l < 16; l++) {
            a += sq[l];
            b += rq[l];
            poison += pz[l];
        }
        c->norm[r] = sqrtf(a);
        c->rnorm[r] = sqrtf(b);
        if (poison != 0.0f) status = 2;
    }
    return status;
}

int saelab_bf16_rows(const float *src, uint16_t *dst, float *norm, float *rnorm, int64_t rows,
                     int64_t d, int threads) {
    bf16_ctx_t ctx = {src, dst, norm, rnorm, d};
    return parallel_for(bf16_range, &ctx, rows, threads);
}
