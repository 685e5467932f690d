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
 */
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

static inline uint16_t bf16_store(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even, as torch does */
    return (uint16_t)(u >> 16);
}

#define LOAD_F32(x) (x)
#define STORE_F32(x) (x)
#define LOAD_F64(x) (x)
#define STORE_F64(x) (x)
#define LOAD_BF16(x) bf16_load(x)
#define STORE_BF16(x) bf16_store(x)

/* One chunk [lo, hi) of one tensor. The method is tested outside the inner loops
 * so that each loop has no branches and vectorises. SQRT and ERF are the libm
 * functions of the accumulation type (sqrtf, erff for float). */
#define DEFINE_CHUNK(SUFFIX, T, ACC, LOAD, STORE, SQRT, ERF)                                   \
    static void chunk_##SUFFIX(int method, T *restrict p, const T *restrict g,                 \
                               T *restrict m, T *restrict v, int64_t lo, int64_t hi,           \
                               ACC beta, ACC lr_eff, ACC c, ACC lam) {                         \
        const ACC omb = (ACC)1 - beta;                                                         \
        int64_t i;                                                                             \
        if (method == METHOD_MSGD || method == METHOD_MSSD) {                                  \
            const int sign = method == METHOD_MSSD;                                            \
            for (i = lo; i < hi; ++i) {                                                        \
                ACC gi = LOAD(g[i]);                                                           \
                ACC mi = m ? beta * LOAD(m[i]) + omb * gi : gi;                                \
                ACC d = sign ? (mi > 0 ? (ACC)1 : (mi < 0 ? (ACC)-1 : (ACC)0)) : mi;           \
                p[i] = STORE(LOAD(p[i]) - lr_eff * d);                                         \
                if (m) m[i] = STORE(mi);                                                       \
            }                                                                                  \
            return;                                                                            \
        }                                                                                      \
        if (method == METHOD_MSSD_VA) { /* sqrt(gamma); a loop of its own vectorises */        \
            for (i = lo; i < hi; ++i) {                                                        \
                ACC gi = LOAD(g[i]);                                                           \
                ACC mi = beta * LOAD(m[i]) + omb * gi;                                         \
                ACC vi = beta * LOAD(v[i]) + omb * gi * gi;                                    \
                ACC a = c * mi * mi;                                                           \
                ACC den = a + lam * (vi - a);                                                  \
                ACC q = a / (den > a ? den : (ACC)1);                                          \
                ACC f = den > a ? SQRT(q) : (ACC)1;                                            \
                ACC d = mi > 0 ? (ACC)1 : (mi < 0 ? (ACC)-1 : (ACC)0);                         \
                p[i] = STORE(LOAD(p[i]) - lr_eff * d * f);                                     \
                m[i] = STORE(mi);                                                              \
                v[i] = STORE(vi);                                                              \
            }                                                                                  \
            return;                                                                            \
        }                                                                                      \
        if (method == METHOD_MSSD_ERF) { /* r <= 0: zero variance, factor erf(inf) = 1 */      \
            for (i = lo; i < hi; ++i) {                                                        \
                ACC gi = LOAD(g[i]);                                                           \
                ACC mi = beta * LOAD(m[i]) + omb * gi;                                         \
                ACC vi = beta * LOAD(v[i]) + omb * gi * gi;                                    \
                ACC a = c * mi * mi;                                                           \
                ACC r = lam * (vi - a);                                                        \
                ACC x2 = a / (r > 0 ? (ACC)2 * r : (ACC)1);                                    \
                ACC e = ERF(SQRT(x2)); /* unconditional, so that it vectorises */              \
                ACC f = r > 0 ? e : (ACC)1;                                                    \
                ACC d = mi > 0 ? (ACC)1 : (mi < 0 ? (ACC)-1 : (ACC)0);                         \
                p[i] = STORE(LOAD(p[i]) - lr_eff * d * f);                                     \
                m[i] = STORE(mi);                                                              \
                v[i] = STORE(vi);                                                              \
            }                                                                                  \
            return;                                                                            \
        }                                                                                      \
        {                                                                                      \
            const int use_m = method == METHOD_MSVAG;                                          \
            for (i = lo; i < hi; ++i) {                                                        \
                ACC gi = LOAD(g[i]);                                                           \
                ACC mi = beta * LOAD(m[i]) + omb * gi;                                         \
                ACC vi = beta * LOAD(v[i]) + omb * gi * gi;                                    \
                ACC a = c * mi * mi;                                                           \
                ACC den = a + lam * (vi - a);                                                  \
                ACC q = a / (den > a ? den : (ACC)1);                                          \
                ACC gam = den > a ? q : (ACC)1;                                                \
                ACC d = use_m ? mi : gi;                                                       \
                p[i] = STORE(LOAD(p[i]) - lr_eff * gam * d);                                   \
                m[i] = STORE(mi);                                                              \
                v[i] = STORE(vi);                                                              \
            }                                                                                  \
        }                                                                                      \
    }

DEFINE_CHUNK(f32, float, float, LOAD_F32, STORE_F32, sqrtf, erff)
DEFINE_CHUNK(f64, double, double, LOAD_F64, STORE_F64, sqrt, erf)
DEFINE_CHUNK(bf16, uint16_t, float, LOAD_BF16, STORE_BF16, sqrtf, erff)

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
