/* couplings: the CPU kernels of the kernel-domain Sinkhorn update (see _native.py).
 *
 * Every function works on B independent problems stored contiguously: a kernel K (B, n, m),
 * row-major, and vectors (B, k). Each output entry is computed in an order fixed by the
 * matrix size alone (never by B, the thread count or the alignment of the data), so a
 * problem's results are bit for bit the same in any batch.
 *
 * Parallel loops use OpenMP with the thread count passed in by the caller (torch's), and
 * link the OpenMP runtime that torch has already loaded (libgomp.so.1), so torch's and these
 * loops share one thread pool.
 */
#include <math.h>
#include <stddef.h>

#define LANES 16      /* independent partial sums of a row product */
#define ROW_BLOCK 64  /* rows per task of a row product */
#define COL_MIN 64    /* fewest columns per task of a column product */
#define PARALLEL_FROM 32768L /* entries of work from which a loop runs on several threads */

#define DEFINE_KERNELS(T, SUF, EXP, LOG)                                                      \
                                                                                              \
/* sum_j r[j] w[j] in a fixed order: LANES interleaved partial sums, then the tail */         \
static inline T dot_##SUF(const T *restrict r, const T *restrict w, long m) {                 \
    T acc[LANES] = {0};                                                                       \
    long j = 0;                                                                               \
    for (; j + LANES <= m; j += LANES)                                                        \
        for (int l = 0; l < LANES; ++l) acc[l] += r[j + l] * w[j + l];                        \
    T s = 0;                                                                                  \
    for (int l = 0; l < LANES; ++l) s += acc[l];                                              \
    for (; j < m; ++j) s += r[j] * w[j];                                                      \
    return s;                                                                                 \
}                                                                                             \
                                                                                              \
/* out (B, n) = K (B, n, m) w (B, m) if rows, else out (B, m) = K^T w (w (B, n)) */           \
void batched_mv_##SUF(const T *restrict K, const T *restrict w, T *restrict out, long B,      \
                      long n, long m, int rows, int threads) {                                \
    int nt = B * n * m >= PARALLEL_FROM ? threads : 1;                                        \
    /* column slices: as few as keep every thread busy (each slice reads every row) */        \
    long split = B >= nt ? 1 : (nt + B - 1) / B;                                              \
    long width = (m + split - 1) / split;                                                     \
    width = width < COL_MIN ? COL_MIN : (width + 15) / 16 * 16;                               \
    long blocks = rows ? (n + ROW_BLOCK - 1) / ROW_BLOCK : (m + width - 1) / width;           \
    long tasks = B * blocks;                                                                  \
    _Pragma("omp parallel for schedule(static) num_threads(nt)")                              \
    for (long task = 0; task < tasks; ++task) {                                               \
        long b = task / blocks, blk = task % blocks;                                          \
        const T *Kb = K + b * n * m;                                                          \
        if (rows) {                                                                           \
            const T *wb = w + b * m;                                                          \
            long hi = (blk + 1) * ROW_BLOCK < n ? (blk + 1) * ROW_BLOCK : n;                  \
            for (long i = blk * ROW_BLOCK; i < hi; ++i)                                       \
                out[b * n + i] = dot_##SUF(Kb + i * m, wb, m);                                \
        } else {                                                                              \
            /* columns lo..hi of every row, rows added in order: axpy on an L1 slice */       \
            const T *wb = w + b * n;                                                          \
            long lo = blk * width;                                                            \
            long hi = lo + width < m ? lo + width : m;                                        \
            T *restrict o = out + b * m;                                                      \
            for (long j = lo; j < hi; ++j) o[j] = 0;                                          \
            long i = 0;                                                                       \
            for (; i + 4 <= n; i += 4) { /* four rows per pass over the slice */              \
                const T *restrict r0 = Kb + i * m, *restrict r1 = r0 + m;                     \
                const T *restrict r2 = r1 + m, *restrict r3 = r2 + m;                         \
                T w0 = wb[i], w1 = wb[i + 1], w2 = wb[i + 2], w3 = wb[i + 3];                 \
                for (long j = lo; j < hi; ++j)                                                \
                    o[j] += (w0 * r0[j] + w1 * r1[j]) + (w2 * r2[j] + w3 * r3[j]);            \
            }                                                                                 \
            for (; i < n; ++i) {                                                              \
                const T *restrict r = Kb + i * m;                                             \
                T wi = wb[i];                                                                 \
                for (long j = lo; j < hi; ++j) o[j] += wi * r[j];                             \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
}                                                                                             \
                                                                                              \
/* One kernel-domain update (KernelSoftmin._matvec): with d = pot - anchor (0 where the       \
 * weight is 0 unless every weight is positive), w = weights e^d (written to `scaled`),        \
 * S = K w (rows) or K^T w, out = other - log S. stats (doubles) = [min d, min log S,          \
 * max log S, sum w] over the whole batch; NaN when any of them met a NaN. pot, anchor and    \
 * weights are (B, k), other and out (B, l), with (k, l) = (m, n) for rows, else (n, m). */   \
void kernel_update_##SUF(const T *restrict K, const T *restrict pot,                          \
                         const T *restrict anchor, const T *restrict weights,                 \
                         const T *restrict other, T *restrict out, T *restrict scaled,        \
                         double *restrict stats, long B, long n, long m, int rows,            \
                         int positive, int threads) {                                         \
    long k = rows ? m : n, l = rows ? n : m;                                                  \
    double lo_dev = INFINITY, mass = 0.0;                                                     \
    int nan_seen = 0;                                                                         \
    for (long p = 0; p < B * k; ++p) {                                                        \
        T d = pot[p] - anchor[p];                                                             \
        if (!positive && !(weights[p] > 0)) d = 0;                                            \
        T s = EXP(d) * weights[p];                                                            \
        scaled[p] = s;                                                                        \
        if (d != d || s != s) nan_seen = 1;                                                   \
        if (d < lo_dev) lo_dev = d;                                                           \
        mass += s;                                                                            \
    }                                                                                         \
    batched_mv_##SUF(K, scaled, out, B, n, m, rows, threads);                                 \
    double lo_sum = INFINITY, hi_sum = -INFINITY;                                             \
    for (long p = 0; p < B * l; ++p) {                                                        \
        T ls = LOG(out[p]);                                                                   \
        if (ls != ls) nan_seen = 1;                                                           \
        if (ls < lo_sum) lo_sum = ls;                                                         \
        if (ls > hi_sum) hi_sum = ls;                                                         \
        out[p] = other[p] - ls;                                                               \
    }                                                                                         \
    if (nan_seen) lo_dev = lo_sum = hi_sum = mass = NAN;                                      \
    stats[0] = lo_dev;                                                                        \
    stats[1] = lo_sum;                                                                        \
    stats[2] = hi_sum;                                                                        \
    stats[3] = mass;                                                                          \
}

DEFINE_KERNELS(float, f32, expf, logf)
DEFINE_KERNELS(double, f64, exp, log)

/* the version the loader checks, bumped with every change of a signature */
int couplings_native_version(void) { return 1; }
