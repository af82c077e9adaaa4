// The kernels: GEMM with register tiles, convolution (im2col + GEMM) and its transpose (GEMM +
// col2im), 2x2 pooling and unpooling, dense layers. Free functions with explicit buffers.
//
// Every multiply-add of the GEMM and the dense layers is fused (one rounding, IEEE fma): the vector
// tiles by contraction (this file is compiled with fp-contract fast, below; the rest of the runtime
// with -ffp-contract=off), the scalar loops by std::fma. With the sums in one fixed order that gives
// the same bits on every core with a fused multiply-add: x86-64 with FMA3 (AVX2 or AVX-512), aarch64,
// Cortex-M4 / M7 (VFMA.F32). An x86-64 CPU without FMA3 takes the scalar loop (libm's fmaf: the same
// bits, slowly); a core without any FPU gets the C library's fmaf.
#include <algorithm>
#include <cmath>
#include <cstring>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "ep_runtime.h"

#if defined(__clang__)
#pragma clang fp contract(fast)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=fast")
#endif

#if !defined(EP_SCALAR_GEMM) && (!defined(__GNUC__) || !(defined(__SSE2__) || defined(__ARM_NEON) || defined(__AVX__)))
#define EP_SCALAR_GEMM 1  // no vector unit (a Cortex-M) or no GNU vector extensions: the plain GEMM loop
#endif
#if defined(__x86_64__) && !defined(__FMA__)
#define EP_NO_NATIVE_FMA 1  // this build's baseline vectors would multiply and add apart: not used
#endif

namespace ep {

namespace {

// C (m x n) = A (m x kk) . B (kk x n), B and C row-major with leading dimension n; A[i][k] is
// a[i * ai + k * ak] (a plain or a transposed weight matrix). Every output is summed over k in
// ascending order from 0 in its own vector lane, acc = fma(a, b, acc), as a plain triple loop with
// std::fma would: tile shapes and vector widths change the speed, never the bits, so every build and
// every CPU with FMA (AVX2, AVX-512, NEON, Cortex-M4/M7) gives the same result. Register tiles use GCC/Clang vector
// extensions, which each target lowers to its own registers (scalar code where it has none).

// The reference loop: an mr x nr block of C (leading dimension n), every output over k in order
// (from the partial sums already in c when accumulating: a later block of k). It is the whole GEMM on
// a core without vectors, and the edges the register tiles leave elsewhere.
void gemm_ref(float* c, const float* a, std::size_t ai, std::size_t ak, const float* b, std::size_t n, int kk, int mr,
              int nr, bool accumulate = false) {
  for (int i = 0; i < mr; ++i)
    for (int j = 0; j < nr; ++j) {
      float acc = accumulate ? c[i * n + j] : 0.0f;
      for (int k = 0; k < kk; ++k) acc = std::fma(a[i * ai + std::size_t(k) * ak], b[std::size_t(k) * n + j], acc);
      c[i * n + j] = acc;
    }
}

#define EP_INLINE inline __attribute__((always_inline))
#ifndef EP_SCALAR_GEMM

template <int VB, int ROWS, int COLS>  // vector bytes; tile rows (columns in vectors) / columns (rows in vectors)
struct Gemm {
  static constexpr int W = VB / 4;  // floats per vector
  static constexpr int KC = 256;    // rows of B per block
  typedef float vec __attribute__((vector_size(VB)));
  typedef float vec4 __attribute__((vector_size(16)));

  // Columns in vectors: R rows x NV vectors of V; A broadcast, B rows loaded.
  // With more, the tile goes on from the partial sums in c (a later block of k): the same additions.
  template <typename V, int R, int NV>
  static EP_INLINE void tile_n(float* c, const float* a, std::size_t ai, std::size_t ak, const float* b, std::size_t n,
                               int kk, bool more) {
    constexpr int VW = int(sizeof(V) / 4);
    V acc[R][NV] = {};
    if (more)
      for (int i = 0; i < R; ++i) std::memcpy(acc[i], c + i * n, sizeof acc[i]);
    for (int k = 0; k < kk; ++k) {
      const float* bk = b + std::size_t(k) * n;
      V bv[NV];
      for (int v = 0; v < NV; ++v) std::memcpy(&bv[v], bk + v * VW, sizeof(V));
      for (int i = 0; i < R; ++i) {
        const float av = a[i * ai + std::size_t(k) * ak];
        for (int v = 0; v < NV; ++v) acc[i][v] += av * bv[v];
      }
    }
    for (int i = 0; i < R; ++i) std::memcpy(c + i * n, acc[i], sizeof acc[i]);
  }

  // Rows in vectors (A contiguous along rows, ai == 1): MV vectors of rows x C columns; B broadcast.
  template <int MV, int C>
  static EP_INLINE void tile_m(float* c, const float* a, std::size_t ak, const float* b, std::size_t n, int kk) {
    vec acc[C][MV] = {};
    for (int k = 0; k < kk; ++k) {
      const float* ar = a + std::size_t(k) * ak;
      vec av[MV];
      for (int v = 0; v < MV; ++v) std::memcpy(&av[v], ar + v * W, VB);
      const float* bk = b + std::size_t(k) * n;
      for (int j = 0; j < C; ++j) {
        const float bv = bk[j];
        for (int v = 0; v < MV; ++v) acc[j][v] += bv * av[v];
      }
    }
    for (int j = 0; j < C; ++j)
      for (int v = 0; v < MV; ++v)
        for (int l = 0; l < W; ++l) c[std::size_t(v * W + l) * n + j] = acc[j][v][l];
  }

  template <int MV, int C = COLS>
  static EP_INLINE void tile_m_cols(int cols, float* c, const float* a, std::size_t ak, const float* b, std::size_t n,
                                    int kk) {
    if constexpr (C > 0) {
      if (cols == C)
        tile_m<MV, C>(c, a, ak, b, n, kk);
      else
        tile_m_cols<MV, C - 1>(cols, c, a, ak, b, n, kk);
    }
  }

  static EP_INLINE void run(float* c, const float* a, std::size_t ai, std::size_t ak, const float* b, int m, int n,
                            int kk, bool accumulate) {
    const std::size_t ld = std::size_t(n);
    if (ai == 1 && m >= W && !accumulate) {  // a transposed weight: vectors along the rows of C
      int i0 = 0;
      for (; i0 + 2 * W <= m; i0 += 2 * W)
        for (int j0 = 0; j0 < n; j0 += COLS)
          tile_m_cols<2>(std::min(COLS, n - j0), c + i0 * ld + j0, a + i0, ak, b + j0, ld, kk);
      for (; i0 + W <= m; i0 += W)
        for (int j0 = 0; j0 < n; j0 += COLS)
          tile_m_cols<1>(std::min(COLS, n - j0), c + i0 * ld + j0, a + i0, ak, b + j0, ld, kk);
      if (i0 < m) gemm_ref(c + i0 * ld, a + i0, ai, ak, b, ld, kk, m - i0, n);
      return;
    }
    // Vectors along the columns of C, in blocks of KC rows of B: a block of A stays in L2 while every
    // panel of B passes, and B's panel of 2 vectors stays in L1 across the rows of A.
    int j0 = 0;
    for (int k0 = 0; k0 < kk; k0 += KC) {
      const int kc = std::min(KC, kk - k0);
      const bool more = accumulate || k0 > 0;
      const float* ab = a + std::size_t(k0) * ak;
      const float* bb = b + std::size_t(k0) * ld;
      for (j0 = 0; j0 + 2 * W <= n; j0 += 2 * W) {
        int i0 = 0;
        for (; i0 + ROWS <= m; i0 += ROWS)
          tile_n<vec, ROWS, 2>(c + i0 * ld + j0, ab + i0 * ai, ai, ak, bb + j0, ld, kc, more);
        for (; i0 < m; ++i0) tile_n<vec, 1, 2>(c + i0 * ld + j0, ab + i0 * ai, ai, ak, bb + j0, ld, kc, more);
      }
      for (; j0 + W <= n; j0 += W) {
        int i0 = 0;
        for (; i0 + ROWS <= m; i0 += ROWS)
          tile_n<vec, ROWS, 1>(c + i0 * ld + j0, ab + i0 * ai, ai, ak, bb + j0, ld, kc, more);
        for (; i0 < m; ++i0) tile_n<vec, 1, 1>(c + i0 * ld + j0, ab + i0 * ai, ai, ak, bb + j0, ld, kc, more);
      }
      for (; j0 + 4 <= n; j0 += 4) {  // narrow: many rows of 4 columns (the 2x2 maps of the last conv)
        int i0 = 0;
        for (; i0 + 12 <= m; i0 += 12)
          tile_n<vec4, 12, 1>(c + i0 * ld + j0, ab + i0 * ai, ai, ak, bb + j0, ld, kc, more);
        for (; i0 < m; ++i0) tile_n<vec4, 1, 1>(c + i0 * ld + j0, ab + i0 * ai, ai, ak, bb + j0, ld, kc, more);
      }
    }
    if (j0 < n) gemm_ref(c + j0, a, ai, ak, b + j0, ld, kk, m, n - j0, accumulate);
  }
};

// The build's own vectors (-march=native in EP_FAST builds, the target's baseline otherwise) ...
#if defined(__AVX512F__)
using Native = Gemm<64, 8, 8>;  // 16 of 32 zmm registers accumulate
#elif defined(__AVX__)
using Native = Gemm<32, 6, 6>;  // 12 of 16 ymm
#else
using Native = Gemm<16, 4, 4>;  // 8 of 16 xmm / 32 q registers
#endif
#endif  // EP_SCALAR_GEMM

// ... and on x86-64, wider ones chosen at run time when the CPU has them (the same bits: see above).
#if defined(__x86_64__) && !defined(EP_SCALAR_GEMM) && !defined(__AVX512F__)
#define EP_DISPATCH 1  // AVX2 with FMA3, or AVX-512 (whose F subset has FMA)
__attribute__((target("avx512f,fma"))) void gemm_avx512(float* c, const float* a, std::size_t ai, std::size_t ak,
                                                        const float* b, int m, int n, int kk, bool accumulate) {
  Gemm<64, 8, 8>::run(c, a, ai, ak, b, m, n, kk, accumulate);
}
__attribute__((target("avx2,fma"))) void gemm_avx2(float* c, const float* a, std::size_t ai, std::size_t ak,
                                                   const float* b, int m, int n, int kk, bool accumulate) {
  Gemm<32, 6, 6>::run(c, a, ai, ak, b, m, n, kk, accumulate);
}
#endif

// accumulate: add to the partial sums in c (the next block of k), in the same fused order.
void gemm(float* c, const float* a, std::size_t ai, std::size_t ak, const float* b, int m, int n, int kk,
          bool accumulate = false) {
#ifdef EP_DISPATCH
  if (__builtin_cpu_supports("avx512f")) return gemm_avx512(c, a, ai, ak, b, m, n, kk, accumulate);
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return gemm_avx2(c, a, ai, ak, b, m, n, kk, accumulate);
#endif
#if defined(EP_SCALAR_GEMM) || defined(EP_NO_NATIVE_FMA)
  gemm_ref(c, a, ai, ak, b, std::size_t(n), kk, m, n, accumulate);
#else
  Native::run(c, a, ai, ak, b, m, n, kk, accumulate);
#endif
}

// int8 weights: A is dequantized DEQ_ROWS x DEQ_K (transposed: DEQ_ROWS_T rows) at a time into deq (float(q) * scale,
// one rounding, as DequantizeLinear) and multiplied by the float GEMM, which sums every output in the same order
// whatever the tile: the same bits as the float path on the dequantized weights. Not transposed: A[i][k] = q[i * kk +
// k] * s[i] (a conv's weight, one scale per row); transposed: A[i][k] = q[k * m + i] * s[k] (its transpose: the scale
// follows k, the conv's output channel).
// d[k] = float(q[k]) * s for k < n (float(q) is exact: one rounding, the product's), 16 at a time
// where there are vectors (inlined into each ISA's GEMM below: one sign extension, one conversion,
// one multiply per 16 weights with AVX-512).
EP_INLINE void dequantize(float* d, const std::int8_t* q, float s, int n) {
  int k = 0;
#ifndef EP_SCALAR_GEMM
  typedef std::int8_t q16 __attribute__((vector_size(16)));
  typedef float f16 __attribute__((vector_size(64)));
  for (; k + 16 <= n; k += 16) {
    q16 v;
    std::memcpy(&v, q + k, sizeof v);
    const f16 f = __builtin_convertvector(v, f16) * s;
    std::memcpy(d + k, &f, sizeof f);
  }
#endif
  for (; k < n; ++k) d[k] = float(q[k]) * s;
}

#if defined(__x86_64__) && !defined(EP_SCALAR_GEMM)  // the same products, 16 (AVX-512) or 8 (AVX2) per instruction
#if !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 on _mm512_undefined_* inside the intrinsics
#endif
[[maybe_unused]] __attribute__((target("avx512f"))) void dequantize_avx512(float* d, const std::int8_t* q, float s,
                                                                           int n) {
  int k = 0;
  const __m512 vs = _mm512_set1_ps(s);
  for (; k + 16 <= n; k += 16) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + k));
    _mm512_storeu_ps(d + k, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v)), vs));
  }
  for (; k < n; ++k) d[k] = float(q[k]) * s;
}
[[maybe_unused]] __attribute__((target("avx2"))) void dequantize_avx2(float* d, const std::int8_t* q, float s, int n) {
  int k = 0;
  const __m256 vs = _mm256_set1_ps(s);
  for (; k + 8 <= n; k += 8) {
    const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + k));
    _mm256_storeu_ps(d + k, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)), vs));
  }
  for (; k < n; ++k) d[k] = float(q[k]) * s;
}
#if !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

// The GEMM of a core without usable vectors, in the shape of Gemm<>::run.
struct Ref {
  static EP_INLINE void run(float* c, const float* a, std::size_t ai, std::size_t ak, const float* b, int m, int n,
                            int kk, bool accumulate) {
    gemm_ref(c, a, ai, ak, b, std::size_t(n), kk, m, n, accumulate);
  }
};

template <typename G, void (*Deq)(float*, const std::int8_t*, float, int) = dequantize>
EP_INLINE void gemm_int8_with(float* c, const std::int8_t* q, const float* s, bool transposed, const float* b, int m,
                              int n, int kk, float* deq) {
  if (!transposed) {  // blocks of DEQ_K columns, panels of DEQ_ROWS rows: the block of B stays in cache
    for (int k0 = 0; k0 < kk; k0 += DEQ_K) {
      const int kc = std::min(DEQ_K, kk - k0);
      for (int i0 = 0; i0 < m; i0 += DEQ_ROWS) {
        const int r = std::min(DEQ_ROWS, m - i0);
        for (int i = 0; i < r; ++i) Deq(deq + std::size_t(i) * kc, q + std::size_t(i0 + i) * kk + k0, s[i0 + i], kc);
        G::run(c + std::size_t(i0) * n, deq, std::size_t(kc), 1, b + std::size_t(k0) * n, r, n, kc, k0 > 0);
      }
    }
    return;
  }
  for (int i0 = 0; i0 < m; i0 += DEQ_ROWS_T) {
    const int r = std::min(DEQ_ROWS_T, m - i0);
    for (int k = 0; k < kk; ++k) Deq(deq + std::size_t(k) * r, q + std::size_t(k) * m + i0, s[k], r);
    G::run(c + std::size_t(i0) * n, deq, 1, std::size_t(r), b, r, n, kk, false);
  }
}

#ifdef EP_DISPATCH
__attribute__((target("avx512f,fma"))) void gemm_int8_avx512(float* c, const std::int8_t* q, const float* s, bool t,
                                                             const float* b, int m, int n, int kk, float* deq) {
  gemm_int8_with<Gemm<64, 8, 8>, dequantize_avx512>(c, q, s, t, b, m, n, kk, deq);
}
__attribute__((target("avx2,fma"))) void gemm_int8_avx2(float* c, const std::int8_t* q, const float* s, bool t,
                                                        const float* b, int m, int n, int kk, float* deq) {
  gemm_int8_with<Gemm<32, 6, 6>, dequantize_avx2>(c, q, s, t, b, m, n, kk, deq);
}
#endif

void gemm_int8(float* c, const std::int8_t* q, const float* s, bool transposed, const float* b, int m, int n, int kk,
               float* deq) {
#ifdef EP_DISPATCH
  if (__builtin_cpu_supports("avx512f")) return gemm_int8_avx512(c, q, s, transposed, b, m, n, kk, deq);
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return gemm_int8_avx2(c, q, s, transposed, b, m, n, kk, deq);
#endif
#if defined(EP_SCALAR_GEMM) || defined(EP_NO_NATIVE_FMA)
  gemm_int8_with<Ref>(c, q, s, transposed, b, m, n, kk, deq);
#elif defined(__AVX512F__)
  gemm_int8_with<Native, dequantize_avx512>(c, q, s, transposed, b, m, n, kk, deq);
#elif defined(__AVX2__)
  gemm_int8_with<Native, dequantize_avx2>(c, q, s, transposed, b, m, n, kk, deq);
#else
  gemm_int8_with<Native>(c, q, s, transposed, b, m, n, kk, deq);
#endif
}

// C (m x n) = W (m x kk) . B, or W^T . B with W (kk x m) when transposed: float32 or int8 W.
void gemm_w(float* c, const Weights& w, bool transposed, const float* b, int m, int n, int kk, float* deq) {
  if (w.q != nullptr) return gemm_int8(c, w.q, w.scale, transposed, b, m, n, kk, deq);
  if (transposed) return gemm(c, w.f, 1, std::size_t(m), b, m, n, kk);
  gemm(c, w.f, std::size_t(kk), 1, b, m, n, kk);
}

// Element i of row o of a dense weight (out x in), float32 or dequantized int8.
inline float weight_at(const Weights& w, int o, std::size_t i, int n_in) {
  const std::size_t at = std::size_t(o) * n_in + i;
  return w.q != nullptr ? float(w.q[at]) * w.scale[o] : w.f[at];
}

}  // namespace

// The output columns ow whose input column ow * s + kw - pad lies inside [0, wd): [*lo, *hi).
void valid_cols(int wc, int wd, int kw, int pad, int s, int* lo, int* hi) {
  *lo = std::min(wc, std::max(0, (pad - kw + s - 1) / s));  // ceil((pad - kw) / s) where it is > 0
  *hi = std::max(*lo, std::min(wc, (wd + pad - kw + s - 1) / s));
}

void conv2d(float* out, const float* in, Weights w, const float* b, int cin, int h, int wd, int cout, int k, int pad,
            float* col, float* deq, int s) {
  const int hc = (h + 2 * pad - k) / s + 1, wc = (wd + 2 * pad - k) / s + 1, npix = hc * wc, rows = cin * k * k;
  for (int ci = 0; ci < cin; ++ci)  // im2col: col (cin*k*k, hc*wc), rows of contiguous (or strided) copies
    for (int kh = 0; kh < k; ++kh)
      for (int kw = 0; kw < k; ++kw) {
        float* c = col + std::size_t((ci * k + kh) * k + kw) * npix;
        int lo, hi;
        valid_cols(wc, wd, kw, pad, s, &lo, &hi);
        for (int oh = 0; oh < hc; ++oh) {
          float* cr = c + oh * wc;
          const int ih = oh * s + kh - pad;
          if (ih < 0 || ih >= h) {
            std::fill(cr, cr + wc, 0.0f);
            continue;
          }
          const float* src = in + (std::size_t(ci) * h + ih) * wd + (lo * s + kw - pad);  // input column of ow = lo
          std::fill(cr, cr + lo, 0.0f);
          if (s == 1)
            std::copy(src, src + (hi - lo), cr + lo);
          else
            for (int j = 0; j < hi - lo; ++j) cr[lo + j] = src[std::size_t(j) * s];
          std::fill(cr + hi, cr + wc, 0.0f);
        }
      }
  gemm_w(out, w, false, col, cout, npix, rows, deq);  // out (cout, npix) = w (cout, rows) . col
  if (b != nullptr)
    for (int co = 0; co < cout; ++co)
      for (int j = 0; j < npix; ++j) out[std::size_t(co) * npix + j] += b[co];
}

void conv2d_transpose(float* out, const float* in, Weights w, int cout, int hc, int wc, int cin, int h, int wd, int k,
                      int pad, float* col, float* deq, int s) {
  const int npix = hc * wc, rows = cin * k * k;
  gemm_w(col, w, true, in, rows, npix, cout, deq);  // col (rows, npix) = w^T (rows, cout) . in
  std::fill(out, out + std::size_t(cin) * h * wd, 0.0f);
  for (int ci = 0; ci < cin; ++ci)  // col2im: scatter-add into (cin, h, wd), each element in (kh, kw) order
    for (int kh = 0; kh < k; ++kh)
      for (int kw = 0; kw < k; ++kw) {
        const float* c = col + std::size_t((ci * k + kh) * k + kw) * npix;
        int lo, hi;
        valid_cols(wc, wd, kw, pad, s, &lo, &hi);
        for (int oh = 0; oh < hc; ++oh) {
          const int ih = oh * s + kh - pad;
          if (ih < 0 || ih >= h) continue;
          float* dst = out + (std::size_t(ci) * h + ih) * wd + (lo * s + kw - pad);  // input column of ow = lo
          const float* cr = c + oh * wc + lo;
          for (int j = 0; j < hi - lo; ++j) dst[std::size_t(j) * s] += cr[j];
        }
      }
}

void maxpool(float* out, std::int32_t* idx, const float* in, int c, int h, int w, int f) {
  const int ph = h / f, pw = w / f;
  for (int ch = 0; ch < c; ++ch)
    for (int oh = 0; oh < ph; ++oh) {
      const float* plane = in + std::size_t(ch) * h * w;
      float* o = out + (std::size_t(ch) * ph + oh) * pw;
      std::int32_t* ix = idx + (std::size_t(ch) * ph + oh) * pw;
      if (f == 2) {  // the common window, unrolled
        const float* r0 = plane + std::size_t(2 * oh) * w;
        const float* r1 = r0 + w;
        const std::int32_t p0 = 2 * oh * w;
        for (int ow = 0; ow < pw; ++ow) {  // the first maximum in row-major order wins ties, as in torch
          float best = r0[2 * ow];
          std::int32_t at = p0 + 2 * ow;
          const float v1 = r0[2 * ow + 1], v2 = r1[2 * ow], v3 = r1[2 * ow + 1];
          at = v1 > best ? p0 + 2 * ow + 1 : at;
          best = v1 > best ? v1 : best;
          at = v2 > best ? p0 + w + 2 * ow : at;
          best = v2 > best ? v2 : best;
          at = v3 > best ? p0 + w + 2 * ow + 1 : at;
          best = v3 > best ? v3 : best;
          o[ow] = best;
          ix[ow] = at;
        }
        continue;
      }
      for (int ow = 0; ow < pw; ++ow) {
        std::int32_t at = std::int32_t(f * oh) * w + f * ow;
        float best = plane[at];
        for (int dy = 0; dy < f; ++dy)
          for (int dx = 0; dx < f; ++dx) {
            const std::int32_t p = std::int32_t(f * oh + dy) * w + f * ow + dx;
            at = plane[p] > best ? p : at;
            best = plane[p] > best ? plane[p] : best;
          }
        o[ow] = best;
        ix[ow] = at;
      }
    }
}

void maxunpool(float* out, const float* in, const std::int32_t* idx, int c, int h, int w, int f) {
  const int ph = h / f, pw = w / f;
  for (std::size_t i = 0; i < std::size_t(c) * h * w; ++i) out[i] = 0.0f;
  for (int ch = 0; ch < c; ++ch)
    for (int p = 0; p < ph * pw; ++p)
      out[std::size_t(ch) * h * w + idx[std::size_t(ch) * ph * pw + p]] = in[std::size_t(ch) * ph * pw + p];
}

void avgpool(float* out, const float* in, int c, int h, int w, int f) {
  const int ph = h / f, pw = w / f;
  const float n = float(f * f);
  for (int ch = 0; ch < c; ++ch)
    for (int oh = 0; oh < ph; ++oh)
      for (int ow = 0; ow < pw; ++ow) {
        const float* q = in + (std::size_t(ch) * h + f * oh) * w + f * ow;
        float sum = 0.0f;  // the window in row-major order
        for (int dy = 0; dy < f; ++dy)
          for (int dx = 0; dx < f; ++dx) sum += q[std::size_t(dy) * w + dx];
        out[(std::size_t(ch) * ph + oh) * pw + ow] = sum / n;
      }
}

void avgunpool(float* out, const float* in, int c, int h, int w, int f) {
  const int ph = h / f, pw = w / f;
  const float share = 1.0f / float(f * f);  // the export's adjoint kernel: 1 / f^2 in float32
  for (std::size_t i = 0; i < std::size_t(c) * h * w; ++i) out[i] = 0.0f;
  for (int ch = 0; ch < c; ++ch)
    for (int oh = 0; oh < ph; ++oh)
      for (int ow = 0; ow < pw; ++ow) {
        const float v = in[(std::size_t(ch) * ph + oh) * pw + ow] * share;
        float* q = out + (std::size_t(ch) * h + f * oh) * w + f * ow;
        for (int dy = 0; dy < f; ++dy)
          for (int dx = 0; dx < f; ++dx) q[std::size_t(dy) * w + dx] = v;
      }
}

void dense(float* out, const float* in, Weights w, const float* b, int n_in, int n_out) {
  for (int o = 0; o < n_out; ++o) {
    float acc = 0.0f;
    if (w.q == nullptr) {
      const float* wr = w.f + std::size_t(o) * n_in;
      for (int i = 0; i < n_in; ++i) acc = std::fma(wr[i], in[i], acc);
    } else {
      for (int i = 0; i < n_in; ++i) acc = std::fma(weight_at(w, o, std::size_t(i), n_in), in[i], acc);
    }
    out[o] = acc + (b != nullptr ? b[o] : 0.0f);
  }
}

void dense_transpose(float* out, const float* in, Weights w, int n_in, int n_out) {
  for (int i = 0; i < n_in; ++i) out[i] = 0.0f;
  for (int o = 0; o < n_out; ++o) {
    const float a = in[o];
    if (w.q == nullptr) {
      const float* wr = w.f + std::size_t(o) * n_in;
      for (int i = 0; i < n_in; ++i) out[i] = std::fma(a, wr[i], out[i]);
    } else {
      for (int i = 0; i < n_in; ++i) out[i] = std::fma(a, weight_at(w, o, std::size_t(i), n_in), out[i]);
    }
  }
}

}  // namespace ep
