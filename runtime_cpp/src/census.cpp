// The census check: the graph the metadata's architecture implies (onnx_export._Step, node for node,
// walked by walk_step) counted and compared with what the scan (scan.cpp) found in the file.
#include <cmath>
#include <cstdio>
#include <cstring>

#include "internal.h"

namespace ep {
namespace detail {

void interaction_name(const Model& m, int i, char* out, std::size_t n) {
  if (i < m.n_layers)
    std::snprintf(out, n, "layer%d", i + 1);
  else
    std::snprintf(out, n, "skip%d", i - m.n_layers + 1);
}

namespace {

// The value of the loop body's float32 scalar named s; false when there is none.
bool const_of(const Facts& k, Span s, float* v) {
  for (int i = 0; i < k.n_const; ++i)
    if (k.const_name[i].n == s.n && std::memcmp(k.const_name[i].p, s.p, s.n) == 0) {
      *v = k.const_value[i];
      return true;
    }
  return false;
}

// State n's activation in the graph is a.
bool sigma_is(const Facts& k, int n, const Activation& a) {
  const Sigma& g = k.sigma[n];
  if (g.count != 1) return false;
  if (a.lo == 0.0f && a.hi == 1.0f) return g.op == SIGMA_HARDSIGMOID && g.alpha == a.slope;
  if (g.op != (a.lo == -INFINITY ? SIGMA_IDENTITY : SIGMA_CLIP)) return false;
  float lo, hi;
  if (g.op == SIGMA_CLIP && !(const_of(k, g.lo, &lo) && const_of(k, g.hi, &hi) && lo == a.lo && hi == a.hi))
    return false;
  for (int i = 0; i < k.n_mul; ++i)  // the input: Mul(u, slope) when slope != 1, else u
    if (k.mul_out[i].n == g.in.n && std::memcmp(k.mul_out[i].p, g.in.p, g.in.n) == 0) {
      float s;
      return a.slope != 1.0f && const_of(k, k.mul_by[i], &s) && s == a.slope;
    }
  return a.slope == 1.0f;
}

}  // namespace

// The census of the graph the architecture implies (onnx_export._Step, node for node, walked by
// walk_step) against the census of the file: every op counted in the main graph and the Loop's body,
// every weight referenced as often as the step reads it, backward weights exactly where the metadata
// has them, every conv's stride and output_padding, every pooling window, each state's activation.
Status check_graph(const Found& f, const Model* m_in, Model* m) {
  const Census& c = f.census;
  if (c.bad[0]) return fail(m, ERR_SHAPE, "the graph has %s: not the step the metadata describes; %s", c.bad, REEXPORT);
  const Model& mm = *m_in;
  const int L = mm.n_layers, n_int = mm.n_interactions();
  std::uint16_t want[2][N_OPS] = {}, pools[MAX_FACTOR + 1] = {};
  std::uint8_t w_refs[MAX_INTERACTIONS] = {0}, wb_refs[MAX_INTERACTIONS] = {0}, b_refs[MAX_INTERACTIONS] = {0};
  auto forward = [&](int i) {  // _Step.forward: P(w * s^src) (+ bias)
    const Layer& l = mm.interaction(i);
    const int s = slot_of(mm, i);
    ++w_refs[s];
    if (f.want_bias[s]) ++b_refs[s];
    if (l.kind == Kind::Dense) {
      ++want[1][OP_FLATTEN];
      ++want[1][OP_GEMM];
      return;
    }
    ++want[1][OP_CONV];
    if (l.pool == Pool::Max) ++want[1][OP_MAXPOOL];
    if (l.pool == Pool::Avg) ++want[1][OP_AVGPOOL];
    if (l.pool != Pool::None) ++pools[l.factor];
  };
  auto feedback = [&](int i) {  // _Step.feedback: the adjoint of interaction i on its target state
    const Layer& l = mm.interaction(i);
    const int s = slot_of(mm, i);
    const bool wb = f.want_b[s];
    ++(wb ? wb_refs : w_refs)[s];
    if (l.kind == Kind::Dense) {
      ++want[1][OP_MATMUL];
      if (mm.layers[l.src - 1].kind == Kind::Conv) ++want[1][OP_RESHAPE];
      return;
    }
    if (l.pool == Pool::Max) {
      if (wb) {  // the backward weight's own convolution and pooling indices
        ++wb_refs[s];
        ++want[1][OP_CONV];
        ++want[1][OP_MAXPOOL];
        ++pools[l.factor];
      }
      ++want[1][OP_SHAPE];
      ++want[1][OP_MAXUNPOOL];
      ++pools[l.factor];
    }
    if (l.pool == Pool::Avg) {
      ++want[1][OP_CONVT];
      ++pools[l.factor];
      if (l.conv_h != l.factor * l.out_h || l.conv_w != l.factor * l.out_w) ++want[1][OP_PAD];
    }
    ++want[1][OP_CONVT];
  };
  auto update = [&](int n) {  // _Step.update: the terms into and out of state n, summed, and sigma
    int terms = 0;
    for (int i = 0; i < n_int; ++i) {
      const Layer& l = mm.interaction(i);
      if (l.dst == n + 1) ++terms;
      if (l.src == n + 1) {
        ++terms;
        feedback(i);
      }
    }
    want[1][OP_ADD] += std::uint16_t(terms - 1);
    const Activation& a = mm.act[n];
    if (a.lo == 0.0f && a.hi == 1.0f) {
      ++want[1][OP_HARDSIGMOID];
      return;
    }
    if (a.slope != 1.0f) ++want[1][OP_MUL];
    ++want[1][a.lo == -INFINITY ? OP_IDENTITY : OP_CLIP];
  };
  bool stale[MAX_INTERACTIONS];
  for (bool& b : stale) b = true;  // the body computes every forward term afresh
  walk_step(mm, stale, forward, update);

  char name[16];
  for (int i = 0; i < n_int; ++i) {
    const Layer& l = mm.interaction(i);
    const int s = slot_of(mm, i);
    interaction_name(mm, i, name, sizeof(name));
    if (c.refs_w[s] != w_refs[s] || c.refs_wb[s] != wb_refs[s] || c.refs_b[s] != b_refs[s])
      return fail(m, ERR_SHAPE,
                  "%s: the graph reads %s.weight %d, weight_b %d and bias %d times, the metadata's step %d, %d and %d "
                  "(has_weight_b: %s): metadata and graph disagree; %s",
                  name, name, c.refs_w[s], c.refs_wb[s], c.refs_b[s], w_refs[s], wb_refs[s], b_refs[s],
                  f.want_b[s] ? "true" : "false", REEXPORT);
    if (c.kp_differ[s])
      return fail(m, ERR_SHAPE, "%s: its convolutions in the graph differ in kernel, padding or stride; %s", name,
                  REEXPORT);
    if (l.kind == Kind::Conv && (c.stride_of[s] != l.stride || (c.seen_t[s] && (c.out_pad_of[s][0] != l.out_pad_h ||
                                                                                c.out_pad_of[s][1] != l.out_pad_w))))
      return fail(m, ERR_SHAPE,
                  "%s: the graph's convolutions have stride %d and output_padding %dx%d, the metadata's %d and %dx%d: "
                  "metadata and graph disagree; %s",
                  name, c.stride_of[s], c.out_pad_of[s][0], c.out_pad_of[s][1], l.stride, l.out_pad_h, l.out_pad_w,
                  REEXPORT);
  }
  for (int s = 0; s < MAX_INTERACTIONS; ++s) {
    const bool used = s < SKIP0 ? s < L : s - SKIP0 < mm.n_skips;
    if (!used && (c.refs_w[s] || c.refs_wb[s] || c.refs_b[s]))
      return fail(m, ERR_SHAPE, "the graph reads weights of a %s %d the metadata does not have; %s",
                  s < SKIP0 ? "layer" : "skip", s < SKIP0 ? s + 1 : s - SKIP0 + 1, REEXPORT);
  }
  // int8: every weight of the architecture written once by its DequantizeLinear, whose two inputs
  // nothing else reads; float32: no int8 weight and no dequantization anywhere.
  int n_q = 0;
  auto quantized = [&](const Quantized& q, bool exists, const char* what, int s) {
    const int want_dq = exists && mm.int8 ? 1 : 0;
    n_q += want_dq;
    if (q.dequantized == want_dq && q.refs == 2 * want_dq) return true;
    char who[16] = "readout";
    if (s >= 0)
      std::snprintf(who, sizeof(who), "%s%d", s < SKIP0 ? "layer" : "skip", s < SKIP0 ? s + 1 : s - SKIP0 + 1);
    fail(m, ERR_SHAPE,
         "%s%s: the graph dequantizes it %d time(s) and reads its int8 data or scales %d time(s), the metadata's "
         "%s weights %d and %d: metadata and graph disagree; %s",
         who, what, q.dequantized, q.refs, mm.int8 ? "int8" : "float32", want_dq, 2 * want_dq, REEXPORT);
    return false;
  };
  for (int s = 0; s < MAX_INTERACTIONS; ++s) {
    const bool used = s < SKIP0 ? s < L : s - SKIP0 < mm.n_skips;
    if (!quantized(f.weight_q[s], used, ".weight", s) ||
        !quantized(f.weight_b_q[s], used && f.want_b[s], ".weight_b", s))
      return ERR_SHAPE;
  }
  if (!quantized(f.ro_w_q, mm.readout, ".weight", -1)) return ERR_SHAPE;
  want[0][OP_DEQUANT] = std::uint16_t(n_q);
  want[1][OP_SUB] = want[1][OP_ABS] = want[1][OP_REDUCEMAX] = std::uint16_t(L);
  want[1][OP_IDENTITY] += std::uint16_t(L);
  want[1][OP_MAX] = L > 1 ? 1 : 0;
  want[1][OP_LESS] = want[1][OP_NOT] = 1;
  ++want[1][OP_ADD];  // the step counter
  want[0][OP_SHAPE] = 1;
  want[0][OP_CONCAT] = want[0][OP_CONSTOFSHAPE] = std::uint16_t(L);
  want[0][OP_LOOP] = want[0][OP_IDENTITY] = 1;
  if (mm.readout) want[0][OP_FLATTEN] = want[0][OP_GEMM] = 1;
  const std::uint8_t ro = mm.readout ? 1 : 0;
  if (c.refs_ro_w != ro || c.refs_ro_b != ro)
    return fail(m, ERR_SHAPE, "the graph reads the read-out weights %d times, the metadata says %d; %s", c.refs_ro_w,
                ro, REEXPORT);
  for (int g = 0; g < 2; ++g)
    for (int o = 0; o < N_OPS; ++o)
      if (c.ops[g][o] != want[g][o])
        return fail(
            m, ERR_SHAPE,
            "the %s has %d %s node(s), the step of the metadata's architecture has %d: metadata and graph disagree; %s",
            g ? "loop body" : "main graph", c.ops[g][o], OP_NAMES[o], want[g][o], REEXPORT);
  for (int w = 0; w <= MAX_FACTOR; ++w)
    if (c.pools[w] != pools[w])
      return fail(m, ERR_SHAPE,
                  "the graph has %d pooling node(s) of window %dx%d, the metadata's step %d: metadata and graph "
                  "disagree; %s",
                  c.pools[w], w, w, pools[w], REEXPORT);
  if (mm.version >= 3)  // each state's activation node (versions 1-2: one HardSigmoid slope, checked on load)
    for (int n = 0; n < L; ++n)
      if (!sigma_is(f.facts, n, mm.act[n]))
        return fail(m, ERR_SHAPE,
                    "state %d: the graph's activation is not the metadata's clamp(%g u, %g, %g): metadata and graph "
                    "disagree; %s",
                    n + 1, double(mm.act[n].slope), double(mm.act[n].lo), double(mm.act[n].hi), REEXPORT);
  return OK;
}

}  // namespace detail
}  // namespace ep
