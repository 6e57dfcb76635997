/* x86_avx512_attention.c - causal attention of one head over a block of queries, for the avx512
 * and avx512vnni tables (built with the avx512 flags; reached only through those tables).
 *
 * Composed from dot_f32 and axpy, attention costs a kernel call, a horizontal sum and a load and
 * store of the output per (query, key); with a 512-token prompt that is as much time as all the
 * weight products. Here:
 *   - scores: tiles of 4 queries x 4 keys, 16 f32 accumulators over the head's dimensions (each
 *     q and k chunk loaded once per tile), then one transposing reduction turns the 16
 *     accumulators into the 16 scores at once; divided by sqrt(head_dim) as run.c does;
 *   - softmax over each query's keys 0 .. its position, with a vectorised exp (Cephes' expf
 *     polynomial on the reduced argument, scaled by 2^n with vscalefps: within 2 ulp, where the
 *     table's softmax calls libm's expf per element to equal generic's bit for bit);
 *   - output: the weighted sum of value rows in registers, the tile's 4 queries at a time over
 *     64 dimensions (each value chunk loaded once for the 4), FMA, keys in ascending order.
 * Every (query, key) score and every output is computed by the same operations in the same order
 * whatever the block size and the query's place in a tile (tiles repeat a row to fill up, and the
 * extra results are dropped), so a token's attention is the same bit for bit evaluated alone
 * (decode) or in a batch (prefill); test_kernels.c checks that, and the result against generic's
 * within a tolerance (FMA and the summation tree differ from run.c's sequential sums). */
#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__) && \
    defined(__AVX512VL__) && defined(__FMA__)

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))

#define TILE_Q 4  /* queries per score tile (LMOE_ATTENTION_BLOCK) */
#define TILE_K 4  /* keys per score tile */
#define PV_CHUNKS 4 /* 16-float chunks of the output held in registers per query */

_Static_assert(TILE_Q == LMOE_ATTENTION_BLOCK, "kernels.h sizes the scores scratch by this");

static ALWAYS_INLINE __mmask16 chunk_mask(size_t head_dim, size_t chunk) {
    size_t left = head_dim - chunk * 16;
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

/* Lane j = the sum of the 16 lanes of a[j], the same addition tree for every j. */
static ALWAYS_INLINE __m512 reduce16(const __m512 a[16]) {
    __m512 t[8], u[4];
    for (int m = 0; m < 8; m++) /* per 128 bits: (a0+a2, b0+b2, a1+a3, b1+b3) */
        t[m] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * m], a[2 * m + 1]),
                             _mm512_unpackhi_ps(a[2 * m], a[2 * m + 1]));
    for (int m = 0; m < 4; m++) { /* per 128 bits: the 4 accumulators' sums of that chunk */
        __m512d x = _mm512_castps_pd(t[2 * m]), y = _mm512_castps_pd(t[2 * m + 1]);
        u[m] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), /* moves, f32 adds */
                             _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    /* fold the 4 chunks: chunk m of the result is u[m]'s c0 + c1 + c2 + c3 */
    __m512 v0 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
    __m512 v1 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(v0, v1, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(v0, v1, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* e^x for x <= 0 (softmax's x - max), NaN in -> NaN out: x = n ln2 + r with |r| <= ln2 / 2 (ln2
 * split in two for an exact n ln2), e^r by Cephes' degree-7 expf polynomial, times 2^n by
 * vscalefps (which goes to 0 when e^x underflows). */
static ALWAYS_INLINE __m512 exp_ps(__m512 x) {
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

/* x (n > 0) <- exp(x - max) / sum, in place. */
static void softmax(float *x, size_t n) {
    __m512 vmax = _mm512_set1_ps(x[0]);
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        vmax = _mm512_mask_max_ps(vmax, m, _mm512_maskz_loadu_ps(m, x + i), vmax);
    }
    __m512 max = _mm512_set1_ps(_mm512_reduce_max_ps(vmax)), vsum = _mm512_setzero_ps();
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), max));
        vsum = _mm512_mask_add_ps(vsum, m, vsum, e);
        _mm512_mask_storeu_ps(x + i, m, e);
    }
    const __m512 sum = _mm512_set1_ps(_mm512_reduce_add_ps(vsum));
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(x + i, m, _mm512_div_ps(_mm512_maskz_loadu_ps(m, x + i), sum));
    }
}

/* scores[r * ld + p] = q_r . k_p / scale for r < n_rows, p < n_keys. */
static void tile_scores(const float *const q[TILE_Q], size_t n_rows, const float *k,
                        size_t kv_stride, size_t n_keys, size_t head_dim, float scale,
                        float *scores, size_t ld) {
    size_t n_chunks = (head_dim + 15) / 16;
    const __m512 divisor = _mm512_set1_ps(scale);
    for (size_t p0 = 0; p0 < n_keys; p0 += TILE_K) {
        const float *kr[TILE_K];
        for (size_t c = 0; c < TILE_K; c++)
            kr[c] = k + (p0 + c < n_keys ? p0 + c : n_keys - 1) * kv_stride;
        __m512 acc[TILE_Q * TILE_K];
        for (int j = 0; j < TILE_Q * TILE_K; j++) acc[j] = _mm512_setzero_ps();
        for (size_t ch = 0; ch < n_chunks; ch++) {
            __mmask16 m = chunk_mask(head_dim, ch);
            __m512 qv[TILE_Q], kv[TILE_K];
            for (int r = 0; r < TILE_Q; r++) qv[r] = _mm512_maskz_loadu_ps(m, q[r] + ch * 16);
            for (int c = 0; c < TILE_K; c++) kv[c] = _mm512_maskz_loadu_ps(m, kr[c] + ch * 16);
            for (int r = 0; r < TILE_Q; r++)
                for (int c = 0; c < TILE_K; c++)
                    acc[r * TILE_K + c] = _mm512_fmadd_ps(qv[r], kv[c], acc[r * TILE_K + c]);
        }
        float s[TILE_Q * TILE_K];
        _mm512_storeu_ps(s, _mm512_div_ps(reduce16(acc), divisor));
        size_t n_cols = n_keys - p0 < TILE_K ? n_keys - p0 : TILE_K;
        for (size_t r = 0; r < n_rows; r++)
            memcpy(scores + r * ld + p0, s + r * TILE_K, n_cols * sizeof(float));
    }
}

/* out_r[d] = sum over p < n_common + r of w_r[p] * v_p[d] for NQ (1..TILE_Q) consecutive queries
 * and the chunks [ch0, ch0 + PV_CHUNKS) of the head: each value chunk loaded once for all NQ
 * queries (with fewer, the loop is bound by reading the values). Keys in ascending order for every
 * query, so a query's result does not depend on NQ. */
static ALWAYS_INLINE void weighted_values(int NQ, const float *const w[TILE_Q], size_t n_common,
                                          const float *v, size_t kv_stride, size_t head_dim,
                                          size_t ch0, float *const out[TILE_Q]) {
    __m512 acc[TILE_Q][PV_CHUNKS];
    __mmask16 m[PV_CHUNKS];
    size_t n_chunks = (head_dim + 15) / 16 - ch0;
    if (n_chunks > PV_CHUNKS) n_chunks = PV_CHUNKS;
    for (int c = 0; c < PV_CHUNKS; c++) {
        m[c] = (size_t)c < n_chunks ? chunk_mask(head_dim, ch0 + c) : 0;
        for (int r = 0; r < NQ; r++) acc[r][c] = _mm512_setzero_ps();
    }
    const float *vp = v + ch0 * 16;
    for (size_t p = 0; p < n_common; p++, vp += kv_stride) {
        __m512 wr[TILE_Q];
        for (int r = 0; r < NQ; r++) wr[r] = _mm512_set1_ps(w[r][p]);
        for (int c = 0; c < PV_CHUNKS; c++) {
            __m512 vv = _mm512_maskz_loadu_ps(m[c], vp + c * 16);
            for (int r = 0; r < NQ; r++) acc[r][c] = _mm512_fmadd_ps(wr[r], vv, acc[r][c]);
        }
    }
    /* the later queries' last keys: query r has r more than the first */
    for (int j = 0; j + 1 < NQ; j++, vp += kv_stride)
        for (int c = 0; c < PV_CHUNKS; c++) {
            __m512 vv = _mm512_maskz_loadu_ps(m[c], vp + c * 16);
            for (int r = j + 1; r < NQ; r++)
                acc[r][c] = _mm512_fmadd_ps(_mm512_set1_ps(w[r][n_common + j]), vv, acc[r][c]);
        }
    for (int r = 0; r < NQ; r++)
        for (int c = 0; c < PV_CHUNKS; c++)
            _mm512_mask_storeu_ps(out[r] + (ch0 + c) * 16, m[c], acc[r][c]);
}

void lmoe_avx512_attention(const float *q, size_t q_stride, const float *k, const float *v,
                           size_t kv_stride, float *out, size_t out_stride, size_t head_dim,
                           size_t pos0, size_t n_q, float *scores) {
    const float scale = sqrtf((float)head_dim);
    size_t ld = pos0 + n_q; /* keys of the block's last query: the scores rows' stride */
    for (size_t i0 = 0; i0 < n_q; i0 += TILE_Q) {
        size_t n_rows = n_q - i0 < TILE_Q ? n_q - i0 : TILE_Q;
        const float *qr[TILE_Q];
        for (size_t r = 0; r < TILE_Q; r++) qr[r] = q + (i0 + (r < n_rows ? r : n_rows - 1)) * q_stride;
        tile_scores(qr, n_rows, k, kv_stride, pos0 + i0 + n_rows, head_dim, scale, scores, ld);
        for (size_t r = 0; r < n_rows; r++) softmax(scores + r * ld, pos0 + i0 + r + 1);
        const float *w[TILE_Q];
        float *o[TILE_Q];
        for (size_t r = 0; r < TILE_Q; r++) {
            size_t rr = r < n_rows ? r : n_rows - 1;
            w[r] = scores + rr * ld;
            o[r] = out + (i0 + rr) * out_stride;
        }
        size_t n_common = pos0 + i0 + 1; /* keys of the tile's first query */
        for (size_t ch0 = 0; ch0 * 16 < head_dim; ch0 += PV_CHUNKS) {
            switch (n_rows) {
            case 1: weighted_values(1, w, n_common, v, kv_stride, head_dim, ch0, o); break;
            case 2: weighted_values(2, w, n_common, v, kv_stride, head_dim, ch0, o); break;
            case 3: weighted_values(3, w, n_common, v, kv_stride, head_dim, ch0, o); break;
            default: weighted_values(TILE_Q, w, n_common, v, kv_stride, head_dim, ch0, o); break;
            }
        }
    }
}

#else
/* Not an x86-64 target with AVX-512 flags: nothing to compile (ISO C wants a declaration). */
typedef int lmoe_x86_avx512_attention_unavailable;
#endif
