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
#ifndef COUPLINGS_TYPE_GENERIC /* first pass: what every type shares */

#include <math.h>
#include <stddef.h>

#define LANES 16      /* independent partial sums of a row product */
#define ROW_BLOCK 64  /* rows per task of a row product */
#define COL_MIN 64    /* fewest columns per task of a column product */
#define PARALLEL_FROM 32768L /* entries of work from which a loop runs on several threads */

/* e^r - 1 by its degree-7 Taylor polynomial r (1 + r (1/2! + ... + r 1/7!)) in Horner form:
 * below 3e-8 relative truncation for |r| <= ln 2 / 2, the range exp_f32 reduces to */
static inline float expm1_taylor_f32(float r) {
    float p = 1.98412698e-4f; /* 1/7! ... 1/2!, 1 */
    p = p * r + 1.38888889e-3f;
    p = p * r + 8.33333333e-3f;
    p = p * r + 4.16666667e-2f;
    p = p * r + 1.66666667e-1f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    return p * r;
}

/* exp(x) in float32 for the kernel's entries and weights, written so that the compiler
 * vectorizes the loops that call it (glibc's expf is a scalar call): x = k ln 2 + r with
 * |r| <= ln 2 / 2 (ln 2 split in two parts, exact products), e^r by its degree-7 Taylor
 * polynomial in Horner form (truncation below 3e-8 relative), times 2^k from the exponent
 * bits. Against float64 exp on 2 million points of [-87, 88]: within 0.91 units in the last
 * place.
 * Below -87.3 (where 2^k would be subnormal) it gives 0, above 88.7 +inf, and NaN for NaN. */
static inline float exp_f32(float x) {
    const float hi_limit = 88.72283f, lo_limit = -87.33654f;
    float c = x > hi_limit ? hi_limit : (x < lo_limit ? lo_limit : x);
    float k = __builtin_rintf(c * 1.44269504088896341f);
    float r = c - k * 0.693145751953125f; /* ln 2 = 0.693145751953125 + 1.428606820e-6 */
    r = r - k * 1.428606820309417e-6f;
    float p = expm1_taylor_f32(r) + 1.0f;
    union { int i; float f; } two_k = {.i = ((int)k + 127) << 23};
    float e = p * two_k.f;
    e = x > hi_limit ? INFINITY : e;
    e = x < lo_limit ? 0.0f : e;
    return x != x ? x : e;
}

/* log(x) in float32, vectorizable like exp_f32: x = 2^e m with m in [sqrt(1/2), sqrt(2))
 * (subnormal x scaled by 2^23 first), log m = 2 atanh(s) with s = (m - 1) / (m + 1),
 * |s| <= 0.172, by its series to s^9 (truncation below 1e-9 relative), plus e ln 2.
 * 0 gives -inf, +inf gives +inf, a negative x or NaN gives NaN. */
static inline float log_f32(float x) {
    int tiny = x < 1.17549435e-38f;
    float y = tiny ? x * 8388608.0f : x; /* 2^23 */
    union { float f; int i; } bits = {.f = y};
    int e = ((bits.i >> 23) & 0xff) - 127;
    bits.i = (bits.i & 0x007fffff) | 0x3f800000; /* m in [1, 2) */
    float m = bits.f;
    int high = m > 1.41421356f;
    m = high ? 0.5f * m : m;
    float k = (float)(e + high - (tiny ? 23 : 0));
    float s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
    float p = 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    float l = k * 0.693145751953125f + (2.0f * s * p + k * 1.428606820309417e-6f);
    l = x == 0.0f ? -INFINITY : l;
    l = x == INFINITY ? INFINITY : l;
    return x < 0.0f || x != x ? NAN : l;
}

/* exp(x) - 1 in float32 without the cancellation of exp_f32(x) - 1 near 0: the Taylor
 * polynomial of exp_f32 where |x| <= 0.34 (within ln 2 / 2; truncation below 2e-8 relative),
 * else exp_f32(x) - 1 (within 3e-7 relative there, as e^x - 1 is at least 0.28 in size). */
static inline float expm1_f32(float x) {
    return x <= 0.34f && x >= -0.34f ? expm1_taylor_f32(x) : exp_f32(x) - 1.0f;
}

/* the columns per task of a column pass over B matrices of m columns on nt threads: as few
 * slices as keep every thread busy (each slice reads every row), at least COL_MIN, in whole
 * vectors. The slices never change a result: every column adds its rows in order. */
static inline long column_width(long B, int nt, long m) {
    long split = B >= nt ? 1 : (nt + B - 1) / B;
    long width = (m + split - 1) / split;
    return width < COL_MIN ? COL_MIN : (width + 15) / 16 * 16;
}

#define COUPLINGS_TYPE_GENERIC
#define CAT2(a, b) a##_##b
#define CAT(a, b) CAT2(a, b)
#define NAME(fn) CAT(fn, SUFFIX)

#define T float
#define SUFFIX f32
#define EXP exp_f32
#define LOG log_f32
#define EXPM1 expm1_f32
#include "_native_kernels.c" /* this file again, for the next type */
#undef T
#undef SUFFIX
#undef EXP
#undef LOG
#undef EXPM1

#define T double
#define SUFFIX f64
#define EXP exp
#define LOG log
#define EXPM1 expm1
#include "_native_kernels.c" /* this file again, for the next type */

/* the version the loader checks, bumped with every change of a signature */
int couplings_native_version(void) { return 7; }

#else /* the kernels, once per type T: NAME(fn) is fn_f32 or fn_f64 */

/* sum_j r[j] w[j] in a fixed order: LANES interleaved partial sums, then the tail */
static inline T NAME(dot)(const T *restrict r, const T *restrict w, long m) {
    T acc[LANES] = {0};
    long j = 0;
    for (; j + LANES <= m; j += LANES)
        for (int l = 0; l < LANES; ++l) acc[l] += r[j + l] * w[j + l];
    T s = 0;
    for (int l = 0; l < LANES; ++l) s += acc[l];
    for (; j < m; ++j) s += r[j] * w[j];
    return s;
}

/* out (B, n) = K (B, n, m) w (B, m) if rows, else out (B, m) = K^T w (w (B, n)) */
void NAME(batched_mv)(const T *restrict K, const T *restrict w, T *restrict out, long B,
                      long n, long m, int rows, int threads) {
    int nt = B * n * m >= PARALLEL_FROM ? threads : 1;
    long width = column_width(B, nt, m);
    long blocks = rows ? (n + ROW_BLOCK - 1) / ROW_BLOCK : (m + width - 1) / width;
    long tasks = B * blocks;
    #pragma omp parallel for schedule(static) num_threads(nt)
    for (long task = 0; task < tasks; ++task) {
        long b = task / blocks, blk = task % blocks;
        const T *Kb = K + b * n * m;
        if (rows) {
            const T *wb = w + b * m;
            long hi = (blk + 1) * ROW_BLOCK < n ? (blk + 1) * ROW_BLOCK : n;
            for (long i = blk * ROW_BLOCK; i < hi; ++i)
                out[b * n + i] = NAME(dot)(Kb + i * m, wb, m);
        } else {
            /* columns lo..hi of every row, rows added in order: axpy on an L1 slice */
            const T *wb = w + b * n;
            long lo = blk * width;
            long hi = lo + width < m ? lo + width : m;
            T *restrict o = out + b * m;
            for (long j = lo; j < hi; ++j) o[j] = 0;
            long i = 0;
            for (; i + 4 <= n; i += 4) { /* four rows per pass over the slice */
                const T *restrict r0 = Kb + i * m, *restrict r1 = r0 + m;
                const T *restrict r2 = r1 + m, *restrict r3 = r2 + m;
                T w0 = wb[i], w1 = wb[i + 1], w2 = wb[i + 2], w3 = wb[i + 3];
                for (long j = lo; j < hi; ++j)
                    o[j] += (w0 * r0[j] + w1 * r1[j]) + (w2 * r2[j] + w3 * r3[j]);
            }
            for (; i < n; ++i) {
                const T *restrict r = Kb + i * m;
                T wi = wb[i];
                for (long j = lo; j < hi; ++j) o[j] += wi * r[j];
            }
        }
    }
}

/* c-transforms: out (B, n) = min_j (scale C_ij - h_j) if rows, else
 * out (B, m) = min_i (scale C_ij - h_i); h = -inf leaves an index out */
void NAME(ctransform)(const T *restrict C, const T *restrict h, T scale, T *restrict out,
                      long B, long n, long m, int rows, int threads) {
    int nt = B * n * m >= PARALLEL_FROM ? threads : 1;
    long width = column_width(B, nt, m);
    long blocks = rows ? (n + ROW_BLOCK - 1) / ROW_BLOCK : (m + width - 1) / width;
    #pragma omp parallel for schedule(static) num_threads(nt)
    for (long task = 0; task < B * blocks; ++task) {
        long b = task / blocks, blk = task % blocks;
        const T *Cb = C + b * n * m;
        if (rows) {
            const T *hb = h + b * m;
            long hi = (blk + 1) * ROW_BLOCK < n ? (blk + 1) * ROW_BLOCK : n;
            for (long i = blk * ROW_BLOCK; i < hi; ++i) {
                const T *restrict r = Cb + i * m;
                T best = INFINITY; /* a min is exact: any order gives the same value */
                #pragma omp simd reduction(min:best)
                for (long j = 0; j < m; ++j) {
                    T z = scale * r[j] - hb[j];
                    best = z < best ? z : best;
                }
                out[b * n + i] = best;
            }
        } else {
            const T *hb = h + b * n;
            long lo = blk * width, hi = lo + width < m ? lo + width : m;
            T *restrict o = out + b * m;
            for (long j = lo; j < hi; ++j) o[j] = INFINITY;
            for (long i = 0; i < n; ++i) {
                const T *restrict r = Cb + i * m;
                T hi_ = hb[i];
                for (long j = lo; j < hi; ++j) {
                    T z = scale * r[j] - hi_;
                    o[j] = z < o[j] ? z : o[j];
                }
            }
        }
    }
}

/* one row of the squared Euclidean cost, for a dimension d known at the call (inlined with a
 * constant d, the coordinates unroll into a single pass over the row) */
static inline void NAME(sqeuclidean_row)(const T *restrict xi, const T *restrict yb,
                                         const T *restrict y2b, T xx, T *restrict o, long m,
                                         long d, T *restrict bounds) {
    T lo = INFINITY, hi = -INFINITY;
    int nan_seen = 0;
    #pragma omp simd reduction(min:lo) reduction(max:hi) reduction(|:nan_seen)
    for (long j = 0; j < m; ++j) {
        T dot = 0;
        for (long k = 0; k < d; ++k) dot += xi[k] * yb[k * m + j];
        T c = (xx + y2b[j]) - 2 * dot;
        nan_seen |= c != c;
        c = c > 0 ? c : 0;
        o[j] = c;
        lo = c < lo ? c : lo;
        hi = c > hi ? c : hi;
    }
    bounds[0] = lo;
    bounds[1] = nan_seen ? NAN : hi;
}

/* the squared Euclidean cost out_ij = max(0, (x2_i + y2_j) - 2 <x_i, y_j>) (B, n, m) from
 * x (B, n, d), yt (B, d, m) (the points y transposed) and the squared norms x2 (B, n),
 * y2 (B, m); one pass per row, vectorized over j. bounds (B, n, 2) gets each row's smallest
 * and largest entry, the largest NaN where a NaN arose (a NaN point, or inf - inf from
 * overflowing norms: the max(0, .) alone would have turned it into 0). */
void NAME(sqeuclidean)(const T *restrict x, const T *restrict yt, const T *restrict x2,
                       const T *restrict y2, T *restrict out, long B, long n, long m, long d,
                       T *restrict bounds, int threads) {
    int nt = B * n * m >= PARALLEL_FROM ? threads : 1;
    #pragma omp parallel for schedule(static) num_threads(nt)
    for (long row = 0; row < B * n; ++row) {
        long b = row / n;
        const T *xi = x + row * d, *yb = yt + b * d * m, *y2b = y2 + b * m;
        T *o = out + row * m;
        T *bd = bounds + 2 * row;
        switch (d) { /* the usual dimensions, unrolled */
        case 1: NAME(sqeuclidean_row)(xi, yb, y2b, x2[row], o, m, 1, bd); break;
        case 2: NAME(sqeuclidean_row)(xi, yb, y2b, x2[row], o, m, 2, bd); break;
        case 3: NAME(sqeuclidean_row)(xi, yb, y2b, x2[row], o, m, 3, bd); break;
        default: NAME(sqeuclidean_row)(xi, yb, y2b, x2[row], o, m, d, bd);
        }
    }
}

/* the gradient of sum_ij G_ij |x_i - y_j|^2 in the points: with rows, gx (B, n, d) =
 * 2 (x_i sum_j G_ij - sum_j G_ij y_j); else gy (B, m, d) = 2 (y_j sum_i G_ij - sum_i G_ij x_i).
 * G (B, n, m) contiguous, x (B, n, d), yt (B, d, m), y (B, m, d). One pass over
 * G: rows in blocks, or columns in slices with every row added in order. */
void NAME(sqeuclidean_pull)(const T *restrict G, const T *restrict x, const T *restrict yt,
                            const T *restrict y, T *restrict out, T *restrict acc, long B,
                            long n, long m, long d, int rows, int threads) {
    int nt = B * n * m >= PARALLEL_FROM ? threads : 1;
    if (rows) {
        #pragma omp parallel for schedule(static) num_threads(nt)
        for (long row = 0; row < B * n; ++row) {
            long b = row / n;
            const T *restrict g = G + row * m, *restrict yb = yt + b * d * m;
            T total = 0;
            for (long j = 0; j < m; ++j) total += g[j];
            for (long k = 0; k < d; ++k) {
                const T *restrict yk = yb + k * m;
                T moved = 0;
                for (long j = 0; j < m; ++j) moved += g[j] * yk[j];
                out[row * d + k] = 2 * (x[row * d + k] * total - moved);
            }
        }
        return;
    }
    /* columns: acc (B, d + 1, m) holds the column sums and the weighted sums of x */
    long width = column_width(B, nt, m);
    long blocks = (m + width - 1) / width;
    #pragma omp parallel for schedule(static) num_threads(nt)
    for (long task = 0; task < B * blocks; ++task) {
        long b = task / blocks, blk = task % blocks;
        long lo = blk * width, hi = lo + width < m ? lo + width : m;
        const T *Gb = G + b * n * m, *xb = x + b * n * d;
        T *restrict total = acc + b * (d + 1) * m;
        for (long k = 0; k <= d; ++k)
            for (long j = lo; j < hi; ++j) total[k * m + j] = 0;
        for (long i = 0; i < n; ++i) {
            const T *restrict g = Gb + i * m;
            for (long j = lo; j < hi; ++j) total[j] += g[j];
            for (long k = 0; k < d; ++k) {
                T xk = xb[i * d + k];
                T *restrict moved = total + (k + 1) * m;
                for (long j = lo; j < hi; ++j) moved[j] += g[j] * xk;
            }
        }
        for (long j = lo; j < hi; ++j)
            for (long k = 0; k < d; ++k) {
                long at = (b * m + j) * d + k;
                out[at] = 2 * (y[at] * total[j] - total[(k + 1) * m + j]);
            }
    }
}

/* the stabilized kernel: out_ij = exp(min(z, upper)) where z = alpha_i + beta_j - scale C_ij is
 * at least cutoff, else 0 (also for a NaN z) */
void NAME(absorb)(T *restrict out, const T *restrict alpha, const T *restrict beta,
                  const T *restrict C, T scale, T cutoff, T upper, long B, long n, long m,
                  int threads) {
    int nt = B * n * m >= PARALLEL_FROM ? threads : 1;
    #pragma omp parallel for schedule(static) num_threads(nt)
    for (long row = 0; row < B * n; ++row) {
        const T *restrict r = C + row * m, *restrict bb = beta + row / n * m;
        T *restrict o = out + row * m;
        T ai = alpha[row];
        for (long j = 0; j < m; ++j) {
            T z = (ai + bb[j]) - scale * r[j];
            T e = EXP(z > upper ? upper : z);
            o[j] = z >= cutoff ? e : 0;
        }
    }
}

/* entry p of kernel_update's epilogue: writes the over-relaxed result
 * out + clamp((out - old) ex, -cap, cap) (relax) and returns the entry's share of the
 * marginal error, w |expm1(ref - out)| for a positive weight w, where ref is the relaxed
 * result (err_of_relaxed) or old (0 without err_weights) */
static inline double NAME(epilogue)(long p, const T *restrict out, const T *restrict old, T ex,
                                    int relax, T cap, T *restrict relaxed,
                                    const T *restrict err_weights, int err_of_relaxed) {
    T o = out[p], r = o;
    if (relax) {
        T step = (o - old[p]) * ex;
        step = step > cap ? cap : (step < -cap ? -cap : step);
        r = o + step;
        relaxed[p] = r;
    }
    if (!err_weights) return 0.0;
    T w = err_weights[p];
    T dev = EXPM1((err_of_relaxed ? r : old[p]) - o);
    return w > 0 ? (double)w * (double)(dev < 0 ? -dev : dev) : 0.0;
}

/* One kernel-domain update (KernelSoftmin._matvec): with d = pot - anchor (0 where the
 * weight is 0 unless every weight is positive), w = weights e^d (written to `scaled`),
 * S = K w (rows) or K^T w, out = other - log S. stats (doubles) = [min d, min log S,
 * max log S, sum w] over the whole batch; NaN when any of them met a NaN. pot, anchor and
 * weights are (B, k), other and out (B, l), with (k, l) = (m, n) for rows, else (n, m).
 * With old (B, l) given, an epilogue follows (the loop's over-relaxation and error checks,
 * fused): with excess (B,) given, relaxed (B, l) = out + clamp((out - old) excess, -cap,
 * cap); with err_weights (B, l) given, err[b] = sum_p w_p |expm1(ref_p - out_p)| over
 * problem b's positive weights (summed in double), ref = relaxed (err_of_relaxed) or old. */
void NAME(kernel_update)(const T *restrict K, const T *restrict pot,
                         const T *restrict anchor, const T *restrict weights,
                         const T *restrict other, T *restrict out, T *restrict scaled,
                         double *restrict stats, long B, long n, long m, int rows,
                         int positive, int threads, const T *restrict old,
                         const T *restrict excess, T cap, T *restrict relaxed,
                         const T *restrict err_weights, T *restrict err,
                         int err_of_relaxed) {
    long k = rows ? m : n, l = rows ? n : m;
    double lo_dev = INFINITY, mass = 0.0;
    int nan_seen = 0;
    #pragma omp simd reduction(min:lo_dev) reduction(+:mass) reduction(|:nan_seen)
    for (long p = 0; p < B * k; ++p) {
        T d = pot[p] - anchor[p];
        d = positive || weights[p] > 0 ? d : 0;
        T s = EXP(d) * weights[p];
        scaled[p] = s;
        nan_seen |= (d != d) | (s != s);
        lo_dev = d < lo_dev ? d : lo_dev;
        mass += s;
    }
    NAME(batched_mv)(K, scaled, out, B, n, m, rows, threads);
    double lo_sum = INFINITY, hi_sum = -INFINITY;
    #pragma omp simd reduction(min:lo_sum) reduction(max:hi_sum) reduction(|:nan_seen)
    for (long p = 0; p < B * l; ++p) {
        T ls = LOG(out[p]);
        nan_seen |= ls != ls;
        lo_sum = ls < lo_sum ? ls : lo_sum;
        hi_sum = ls > hi_sum ? ls : hi_sum;
        out[p] = other[p] - ls;
    }
    if (nan_seen) lo_dev = lo_sum = hi_sum = mass = NAN;
    if (old) { /* the epilogue, problem by problem, each summed in fixed lanes */
        for (long b = 0; b < B; ++b) {
            const long lo = b * l, hi = lo + l;
            const T ex = excess ? excess[b] : 0;
            double acc[LANES] = {0}, total = 0.0;
            long p = lo;
            for (; p + LANES <= hi; p += LANES)
                for (int q = 0; q < LANES; ++q)
                    acc[q] += NAME(epilogue)(p + q, out, old, ex, excess != 0, cap, relaxed,
                                             err_weights, err_of_relaxed);
            for (int q = 0; q < LANES; ++q) total += acc[q];
            for (; p < hi; ++p)
                total += NAME(epilogue)(p, out, old, ex, excess != 0, cap, relaxed, err_weights,
                                        err_of_relaxed);
            if (err_weights) err[b] = (T)total;
        }
    }
    stats[0] = lo_dev;
    stats[1] = lo_sum;
    stats[2] = hi_sum;
    stats[3] = mass;
}

#endif
