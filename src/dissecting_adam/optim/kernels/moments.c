/*
 * Single-pass multi-tensor update for M-SGD, M-SSD, M-SVAG, SVAG, M-SSD-VA and
 * M-SSD-erf on the CPU.
 *
 * One call updates every tensor of one parameter group (one dtype): the work
 * is cut into fixed-size chunks across all tensors and the chunks are shared
 * out to OpenMP threads, as torch's fused Adam does. Each element is touched
 * once: read p, g, m, v; write p, m, v. Every element is independent, so the
 * result does not depend on the number of threads.
 *
 * Plain C with no torch headers, so that it compiles in about a second with
 * the system compiler (see _native.py). Arithmetic is done in float for
 * float32 and bfloat16 tensors and in double for float64 tensors.
 *
 * The caller groups tensors by step t and passes lr_eff, c = 1 / (1 - beta^(t+1))
 * and lam (SVAG: 1 / (1 - rho); the others: rho / (1 - rho); 0 at t = 0):
 *   m    <- beta m + (1 - beta) g          (m == NULL: beta = 0, m is g)
 *   v    <- beta v + (1 - beta) g^2
 *   a     = c m^2                          (= (1 - beta^(t+1)) * m_hat^2)
 *   den   = a + lam (v - a)                (gamma = a / den, the paper's
 *   gamma = den > a ? a / den : 1           m^2 / (m^2 + rho s) rescaled)
 *   M-SGD:  p -= lr_eff m          (lr_eff = lr c)
 *   M-SSD:  p -= lr_eff sign(m)    (lr_eff = lr)
 *   M-SVAG: p -= lr_eff gamma m    (lr_eff = lr c)
 *   SVAG:   p -= lr_eff gamma g    (lr_eff = lr)
 *   M-SSD-VA:  p -= lr_eff sign(m) sqrt(gamma)            (lr_eff = lr)
 *   M-SSD-erf: p -= lr_eff sign(m) erf(sqrt(a / (2 r))),  r = lam (v - a),
 *              with factor 1 where r <= 0 (zero variance)  (lr_eff = lr)
 *
 * Vectorisation. Every inner loop is straight-line code, so that the compiler
 * vectorises it with AVX2 (x86-64-v3) as well as with AVX-512. AVX-512 can mask
 * its way around a branch in a loop; AVX2 cannot, and such a loop stays scalar
 * (up to 7x slower, the cause of issue "vectorise on every x86-64 CPU"):
 *   - one loop per case (method, with or without m): nothing loop-invariant is
 *     tested inside a loop, and nothing is stored conditionally;
 *   - data-dependent choices are bit blends of two values that are both computed
 *     (BLEND below): written as cond ? x : y, gcc moves the work of one side into
 *     a branch; s sign(x) is copysign(s, x) masked where x is 0 or NaN;
 *   - the bfloat16 rounding picks its NaN case with an integer mask.
 * The values are those of the plain branches, bit for bit. Each hot loop is
 * marked with a "hot:" comment on the line before it; tests/test_native_kernel.py
 * compiles this file for x86-64-v3 and x86-64-v4 and checks in gcc's
 * vectoriser report that every marked loop is vectorised in every dtype.
 *
 * The per-dtype chunk functions are written once, below the #else, and this
 * file includes itself once per dtype to instantiate them (a macro would give
 * every loop the same line number in the compiler's report).
 */
#ifndef DA_CHUNK_BODY

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef DA_USE_MVEC
/* glibc's vector math library (libmvec, glibc >= 2.35) has SIMD variants of erf and
 * erff accurate to ~1 ulp; declaring them lets the compiler vectorise the M-SSD-erf loop
 * (~6x faster than one scalar erff per value). _native.py builds without this where
 * libmvec is missing. */
#pragma omp declare simd notinbranch
float erff(float);
#pragma omp declare simd notinbranch
double erf(double);
#endif

enum {
    METHOD_MSGD = 0,
    METHOD_MSSD = 1,
    METHOD_MSVAG = 2,
    METHOD_SVAG = 3,
    METHOD_MSSD_VA = 4,
    METHOD_MSSD_ERF = 5
};
enum { DTYPE_F32 = 0, DTYPE_F64 = 1, DTYPE_BF16 = 2 };

#define CHUNK 16384
#define GRAIN 65536

static inline float bf16_load(uint16_t x) {
    uint32_t u = ((uint32_t)x) << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Round to nearest even, as torch does; a NaN stays a (quiet) NaN. Branch-free. */
static inline uint16_t bf16_store(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    const uint32_t nan = -(uint32_t)((u & 0x7fffffffu) > 0x7f800000u); /* all ones if NaN */
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const uint32_t quiet = (u >> 16) | 0x40u;
    return (uint16_t)((quiet & nan) | (rounded & ~nan));
}

#define DA_CAT_(a, b) a##b
#define DA_CAT(a, b) DA_CAT_(a, b)

/* Instantiate the chunk functions: SUFFIX names them, T is the storage type, ACC the
 * accumulation type and UACC the unsigned integer of its size, LOAD / STORE convert
 * between T and ACC, SQRT, ERF, COPYSIGN and FABS are the libm functions of ACC. */
#define DA_CHUNK_BODY
#define SUFFIX f32
#define T float
#define ACC float
#define UACC uint32_t
#define LOAD(x) (x)
#define STORE(x) (x)
#define SQRT sqrtf
#define COPYSIGN copysignf
#define FABS fabsf
#define ERF erff
#include "moments.c"
#undef SUFFIX
#undef T
#undef ACC
#undef UACC
#undef LOAD
#undef STORE
#undef SQRT
#undef COPYSIGN
#undef FABS
#undef ERF

#define SUFFIX f64
#define T double
#define ACC double
#define UACC uint64_t
#define LOAD(x) (x)
#define STORE(x) (x)
#define SQRT sqrt
#define COPYSIGN copysign
#define FABS fabs
#define ERF erf
#include "moments.c"
#undef SUFFIX
#undef T
#undef ACC
#undef UACC
#undef LOAD
#undef STORE
#undef SQRT
#undef COPYSIGN
#undef FABS
#undef ERF

#define SUFFIX bf16
#define T uint16_t
#define ACC float
#define UACC uint32_t
#define LOAD(x) bf16_load(x)
#define STORE(x) bf16_store(x)
#define SQRT sqrtf
#define COPYSIGN copysignf
#define FABS fabsf
#define ERF erff
#include "moments.c"
#undef SUFFIX
#undef T
#undef ACC
#undef UACC
#undef LOAD
#undef STORE
#undef SQRT
#undef COPYSIGN
#undef FABS
#undef ERF
#undef DA_CHUNK_BODY

/* What this library was built for (printed by scripts/bench_optim.py). */
const char *moments_build_info(void) {
    return "simd="
#if defined(__AVX512F__)
           "avx512f"
#elif defined(__AVX2__)
           "avx2"
#elif defined(__AVX__)
           "avx"
#elif defined(__SSE2__)
           "sse2"
#elif defined(__ARM_NEON) || defined(__ARM_NEON__)
           "neon"
#else
           "none"
#endif
#ifdef DA_USE_MVEC
           " erf=libmvec"
#else
           " erf=scalar"
#endif
#ifdef DA_MARCH
           " march=" DA_MARCH
#endif
        ;
}

/* Returns 0 on success, 1 on bad arguments, 2 when out of memory. */
int moments_step(int method, int dtype, int64_t n_tensors, void **p, void **g, void **m, void **v,
                 const int64_t *numel, double lr_eff, double c, double lam, double beta,
                 int n_threads) {
    if (method < METHOD_MSGD || method > METHOD_MSSD_ERF || dtype < DTYPE_F32 || dtype > DTYPE_BF16)
        return 1;
    int64_t n_chunks = 0;
    for (int64_t k = 0; k < n_tensors; ++k) n_chunks += (numel[k] + CHUNK - 1) / CHUNK;
    if (n_chunks == 0) return 0;
    int64_t *owner = (int64_t *)malloc(sizeof(int64_t) * (size_t)n_chunks);
    int64_t *start = (int64_t *)malloc(sizeof(int64_t) * (size_t)n_chunks);
    if (!owner || !start) {
        free(owner);
        free(start);
        return 2;
    }
    int64_t j = 0;
    for (int64_t k = 0; k < n_tensors; ++k)
        for (int64_t s = 0; s < numel[k]; s += CHUNK) {
            owner[j] = k;
            start[j] = s;
            ++j;
        }
    /* A parallel region costs microseconds (far more when the machine is busy and a
     * worker waits for a core): give each thread at least GRAIN elements, as torch's
     * parallel_for does, so that small updates stay on the calling thread. */
    int64_t total = 0;
    for (int64_t k = 0; k < n_tensors; ++k) total += numel[k];
    if ((int64_t)n_threads > total / GRAIN) n_threads = (int)(total / GRAIN);
    if (n_threads < 1) n_threads = 1;
#pragma omp parallel for schedule(static) num_threads(n_threads)
    for (int64_t q = 0; q < n_chunks; ++q) {
        const int64_t k = owner[q];
        const int64_t lo = start[q];
        const int64_t hi = lo + CHUNK < numel[k] ? lo + CHUNK : numel[k];
        void *mk = m ? m[k] : NULL;
        void *vk = v ? v[k] : NULL;
        switch (dtype) {
        case DTYPE_F32:
            chunk_f32(method, (float *)p[k], (const float *)g[k], (float *)mk, (float *)vk, lo, hi,
                      (float)beta, (float)lr_eff, (float)c, (float)lam);
            break;
        case DTYPE_F64:
            chunk_f64(method, (double *)p[k], (const double *)g[k], (double *)mk, (double *)vk, lo,
                      hi, beta, lr_eff, c, lam);
            break;
        default:
            chunk_bf16(method, (uint16_t *)p[k], (const uint16_t *)g[k], (uint16_t *)mk,
                       (uint16_t *)vk, lo, hi, (float)beta, (float)lr_eff, (float)c,
                       (float)lam);
        }
    }
    free(owner);
    free(start);
    return 0;
}

#else /* DA_CHUNK_BODY: the update of one chunk [lo, hi) of one tensor, for one dtype */

/* cond ? x : y (cond is 0 or 1) as a blend of bits, so that x and y are both computed.
 * Written as a plain select, gcc moves whatever is computed for one side only (a / den,
 * and even lr * gamma where the other side makes gamma 1) into a branch, since a
 * division or multiplication may trap; AVX-512 vectorises that branch with masks, but
 * with AVX2 or SSE2 the whole loop is left scalar. The blend is three bit operations. */
static inline ACC DA_CAT(blend_, SUFFIX)(int cond, ACC x, ACC y) {
    UACC ux, uy, r;
    ACC out;
    memcpy(&ux, &x, sizeof ux);
    memcpy(&uy, &y, sizeof uy);
    const UACC mask = (UACC)0 - (UACC)cond; /* all ones where cond */
    r = (ux & mask) | (uy & ~mask);
    memcpy(&out, &r, sizeof out);
    return out;
}

#define BLEND DA_CAT(blend_, SUFFIX)

/* s sign(x) for s > 0: s, -s, or 0 where x is 0 or NaN; no branch and no multiplication
 * (bit operations: a little faster than (x > 0) - (x < 0) times s, and the same values). */
static inline ACC DA_CAT(signed_, SUFFIX)(ACC s, ACC x) {
    return BLEND(FABS(x) > 0, COPYSIGN(s, x), (ACC)0);
}

#define SIGNED DA_CAT(signed_, SUFFIX)

static void DA_CAT(chunk_, SUFFIX)(int method, T *restrict p, const T *restrict g,
                                   T *restrict m, T *restrict v, int64_t lo, int64_t hi,
                                   ACC beta, ACC lr_eff, ACC c, ACC lam) {
    const ACC omb = (ACC)1 - beta;
    int64_t i;
    switch (method) {
    case METHOD_MSGD:
        if (!m) {
            /* hot: M-SGD without momentum */
            for (i = lo; i < hi; ++i) p[i] = STORE(LOAD(p[i]) - lr_eff * LOAD(g[i]));
            return;
        }
        /* hot: M-SGD */
        for (i = lo; i < hi; ++i) {
            const ACC mi = beta * LOAD(m[i]) + omb * LOAD(g[i]);
            p[i] = STORE(LOAD(p[i]) - lr_eff * mi);
            m[i] = STORE(mi);
        }
        return;
    case METHOD_MSSD:
        if (!m) {
            /* hot: M-SSD without momentum */
            for (i = lo; i < hi; ++i)
                p[i] = STORE(LOAD(p[i]) - SIGNED(lr_eff, LOAD(g[i])));
            return;
        }
        /* hot: M-SSD */
        for (i = lo; i < hi; ++i) {
            const ACC mi = beta * LOAD(m[i]) + omb * LOAD(g[i]);
            p[i] = STORE(LOAD(p[i]) - SIGNED(lr_eff, mi));
            m[i] = STORE(mi);
        }
        return;
    case METHOD_MSVAG:
        /* hot: M-SVAG */
        for (i = lo; i < hi; ++i) {
            const ACC gi = LOAD(g[i]);
            const ACC mi = beta * LOAD(m[i]) + omb * gi;
            const ACC vi = beta * LOAD(v[i]) + omb * gi * gi;
            const ACC a = c * mi * mi;
            const ACC den = a + lam * (vi - a);
            const int ok = den > a; /* else gamma = 1: zero variance, round-off, t = 0, NaN */
            const ACC gam = BLEND(ok, a / BLEND(ok, den, (ACC)1), (ACC)1);
            p[i] = STORE(LOAD(p[i]) - lr_eff * gam * mi);
            m[i] = STORE(mi);
            v[i] = STORE(vi);
        }
        return;
    case METHOD_SVAG:
        /* hot: SVAG */
        for (i = lo; i < hi; ++i) {
            const ACC gi = LOAD(g[i]);
            const ACC mi = beta * LOAD(m[i]) + omb * gi;
            const ACC vi = beta * LOAD(v[i]) + omb * gi * gi;
            const ACC a = c * mi * mi;
            const ACC den = a + lam * (vi - a);
            const int ok = den > a; /* else gamma = 1: zero variance, round-off, t = 0, NaN */
            const ACC gam = BLEND(ok, a / BLEND(ok, den, (ACC)1), (ACC)1);
            p[i] = STORE(LOAD(p[i]) - lr_eff * gam * gi);
            m[i] = STORE(mi);
            v[i] = STORE(vi);
        }
        return;
    case METHOD_MSSD_VA:
        /* hot: M-SSD-VA, factor sqrt(gamma) */
        for (i = lo; i < hi; ++i) {
            const ACC gi = LOAD(g[i]);
            const ACC mi = beta * LOAD(m[i]) + omb * gi;
            const ACC vi = beta * LOAD(v[i]) + omb * gi * gi;
            const ACC a = c * mi * mi;
            const ACC den = a + lam * (vi - a);
            const int ok = den > a;
            const ACC f = BLEND(ok, SQRT(a / BLEND(ok, den, (ACC)1)), (ACC)1);
            p[i] = STORE(LOAD(p[i]) - SIGNED(lr_eff, mi) * f);
            m[i] = STORE(mi);
            v[i] = STORE(vi);
        }
        return;
    default: /* METHOD_MSSD_ERF; r <= 0 (zero variance) or NaN: factor erf(inf) = 1 */
        /* hot: M-SSD-erf */
        for (i = lo; i < hi; ++i) {
            const ACC gi = LOAD(g[i]);
            const ACC mi = beta * LOAD(m[i]) + omb * gi;
            const ACC vi = beta * LOAD(v[i]) + omb * gi * gi;
            const ACC a = c * mi * mi;
            const ACC r = lam * (vi - a);
            const int pos = r > 0;
            const ACC e = ERF(SQRT(a / BLEND(pos, (ACC)2 * r, (ACC)1))); /* for every value */
            const ACC f = BLEND(pos, e, (ACC)1);
            p[i] = STORE(LOAD(p[i]) - SIGNED(lr_eff, mi) * f);
            m[i] = STORE(mi);
            v[i] = STORE(vi);
        }
        return;
    }
}

#undef SIGNED
#undef BLEND

#endif /* DA_CHUNK_BODY */
