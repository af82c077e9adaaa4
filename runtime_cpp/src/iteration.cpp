// The fixed-point iteration: the workspace layout, one synchronous step of the dynamics
// (dynamics.step of ep_compile with no nudge), the read-out and run().
#include <cmath>
#include <cstring>

#include "ep_runtime.h"

namespace ep {

namespace {

struct Work {  // views into the caller's workspace, laid out by carve()
  float* cur[MAX_LAYERS];
  float* next[MAX_LAYERS];
  float* drive[MAX_LAYERS];
  std::int32_t* idx[MAX_LAYERS];
  std::int32_t* idx_b[MAX_LAYERS];
  float *conv, *col, *unpool, *fb, *deq;  // deq: int8 models only (a panel of dequantized weights)
};

std::size_t col_rows(const Layer& L) { return L.kind == Kind::Conv ? std::size_t(L.in_c) * L.kernel * L.kernel : 0; }

// Checked size arithmetic: false on overflow of size_t (4 bytes on a Cortex-M).
bool mul(std::size_t a, std::size_t b, std::size_t* out) {
  if (a != 0 && b > SIZE_MAX / a) return false;
  *out = a * b;
  return true;
}

// Lays out the workspace (base == nullptr: only measures); returns its size, 0 on overflow.
std::size_t carve(const Model& m, int batch, std::uint8_t* base, Work* w) {
  std::size_t off = 0, conv = 1, col = 1, fb = 1, deq = 0;
  bool ok = true;
  auto take = [&](std::size_t floats) -> std::uint8_t* {  // 4-byte elements, 16-byte aligned blocks
    std::size_t bytes;
    ok = ok && mul(floats, 4, &bytes) && bytes <= SIZE_MAX - 15 && off <= SIZE_MAX - ((bytes + 15) & ~std::size_t(15));
    if (!ok) return nullptr;
    std::uint8_t* p = base ? base + off : nullptr;
    off += (bytes + 15) & ~std::size_t(15);
    return p;
  };
  for (int n = 0; n < m.n_layers; ++n) {
    const Layer& L = m.layers[n];
    std::size_t s = 0, rows_pix = 0;
    ok = ok && mul(std::size_t(L.out_size()), std::size_t(batch), &s);
    w->cur[n] = reinterpret_cast<float*>(take(s));
    w->next[n] = reinterpret_cast<float*>(take(s));
    w->drive[n] = reinterpret_cast<float*>(take(s));
    w->idx[n] = reinterpret_cast<std::int32_t*>(take(L.pool == Pool::Max ? s : 0));
    w->idx_b[n] = reinterpret_cast<std::int32_t*>(take(L.pool == Pool::Max && L.weight_b.present() ? s : 0));
    if (L.kind == Kind::Conv) {
      conv = std::max(conv, std::size_t(L.conv_size()));
      ok = ok && mul(col_rows(L), std::size_t(L.conv_size() / L.conv_c), &rows_pix);
      col = std::max(col, rows_pix);
      std::size_t rows_deq = 0, taps_deq = 0;  // int8: a panel of the weight, or of its transpose
      ok = ok && mul(std::size_t(DEQ_ROWS), std::min(col_rows(L), std::size_t(DEQ_K)), &rows_deq) &&
           mul(std::size_t(DEQ_ROWS_T), std::size_t(L.conv_c), &taps_deq);
      rows_deq = std::max(rows_deq, taps_deq);
      if (m.int8) deq = std::max(deq, rows_deq);
    }
    fb = std::max(fb, std::size_t(L.in_size()));
  }
  w->conv = reinterpret_cast<float*>(take(conv));
  w->col = reinterpret_cast<float*>(take(col));
  w->deq = reinterpret_cast<float*>(take(deq));
  w->unpool = reinterpret_cast<float*>(take(conv));
  w->fb = reinterpret_cast<float*>(take(fb));
  return ok ? off : 0;
}

// P(w * pre) for one image; max-pool indices into idx (when pooling is max).
void forward(const Layer& L, const float* pre, const Weights& weight, const float* bias, float* out, std::int32_t* idx,
             const Work& w) {
  if (L.kind == Kind::Dense) {
    dense(out, pre, weight, bias, int(L.in_size()), L.out_c);
    return;
  }
  float* u = L.pool == Pool::None ? out : w.conv;
  conv2d(u, pre, weight, bias, L.in_c, L.in_h, L.in_w, L.conv_c, L.kernel, L.padding, w.col, w.deq);
  if (L.pool == Pool::Max) maxpool2x2(out, idx, u, L.conv_c, L.conv_h, L.conv_w);
  if (L.pool == Pool::Avg) avgpool2x2(out, u, L.conv_c, L.conv_h, L.conv_w);
}

// The adjoint of layer L applied to its post-synaptic state, into w.fb (the pre-synaptic shape).
void feedback(const Layer& L, const float* post, const std::int32_t* idx, const Work& w) {
  const Weights& wt = L.weight_b.present() ? L.weight_b : L.weight;
  if (L.kind == Kind::Dense) {
    dense_transpose(w.fb, post, wt, int(L.in_size()), L.out_c);
    return;
  }
  const float* g = post;
  if (L.pool == Pool::Max) {
    maxunpool2x2(w.unpool, post, idx, L.conv_c, L.conv_h, L.conv_w);
    g = w.unpool;
  } else if (L.pool == Pool::Avg) {
    avgunpool2x2(w.unpool, post, L.conv_c, L.conv_h, L.conv_w);
    g = w.unpool;
  }
  conv2d_transpose(w.fb, g, wt, L.conv_c, L.conv_h, L.conv_w, L.in_c, L.in_h, L.in_w, L.kernel, L.padding, w.col,
                   w.deq);
}

}  // namespace

std::size_t workspace_bytes(const Model& m, int batch) {
  Work w;
  return batch > 0 && m.n_layers > 0 ? carve(m, batch, nullptr, &w) : 0;
}

namespace {

// The workspace's layout after the argument checks every entry point shares; false on bad ones.
bool layout(const Model& m, int batch, const void* workspace, std::size_t len, Work* w) {
  if (m.n_layers < 1 || batch < 1 || workspace == nullptr || (reinterpret_cast<std::uintptr_t>(workspace) & 15) != 0)
    return false;
  const std::size_t need = workspace_bytes(m, batch);
  if (need == 0 || len < need) return false;
  carve(m, batch, static_cast<std::uint8_t*>(const_cast<void*>(workspace)), w);
  return true;
}

}  // namespace

Status reset_state(const Model& m, int batch, void* workspace, std::size_t workspace_len) {
  Work w;
  if (!layout(m, batch, workspace, workspace_len, &w))
    return workspace_bytes(m, batch) == 0 && m.n_layers > 0 && batch > 0 ? ERR_TOO_LARGE : ERR_ARGUMENT;
  for (int n = 0; n < m.n_layers; ++n)
    for (std::size_t i = 0; i < std::size_t(m.layers[n].out_size()) * batch; ++i) w.cur[n][i] = 0.0f;
  return OK;
}

const float* state(const Model& m, int batch, const void* workspace, std::size_t workspace_len, int n) {
  Work w;
  if (n < 0 || n >= m.n_layers || !layout(m, batch, workspace, workspace_len, &w)) return nullptr;
  return w.cur[n];
}

namespace {

// The forward terms of layers first, first + stride, ... (drives and pooling indices) from the
// current states; each stays in the workspace until its input changes.
void forwards(const Model& m, const float* x, int batch, const Work& w, int first, int stride) {
  const std::size_t in_size = std::size_t(m.in_c) * m.in_h * m.in_w;
  for (int b = 0; b < batch; ++b) {
    for (int n = first; n < m.n_layers; n += stride) {
      const Layer& Ly = m.layers[n];
      const std::size_t os = std::size_t(Ly.out_size()) * b, is = std::size_t(Ly.in_size()) * b;
      const float* pre = n == 0 ? x + in_size * b : w.cur[n - 1] + is;
      forward(Ly, pre, Ly.weight, Ly.bias, w.drive[n] + os, Ly.pool == Pool::Max ? w.idx[n] + os : nullptr, w);
      if (Ly.weight_b.present() && Ly.pool == Pool::Max)  // the backward conv's own indices
        forward(Ly, pre, Ly.weight_b, nullptr, w.unpool, w.idx_b[n] + os, w);
    }
  }
}

// New states of layers first, first + stride, ...: sigma(drive + feedback of the layer above), into
// dst (w.next: a synchronous step; w.cur: in place, when no updated layer reads another); the
// largest change goes into *res, a NaN into *nan.
void updates(const Model& m, int batch, const Work& w, int first, int stride, float* const* dst, float* res,
             bool* nan) {
  const int L = m.n_layers;
  for (int b = 0; b < batch; ++b) {
    for (int n = first; n < L; n += stride) {
      const Layer& Ly = m.layers[n];
      const std::size_t sz = std::size_t(Ly.out_size()), os = sz * b;
      const float* fb = nullptr;
      if (n + 1 < L) {  // top-down drive through the next layer's adjoint
        const Layer& up = m.layers[n + 1];
        const std::size_t us = std::size_t(up.out_size()) * b;
        const std::int32_t* idx =
            up.pool == Pool::Max ? (up.weight_b.present() ? w.idx_b[n + 1] : w.idx[n + 1]) + us : nullptr;
        feedback(up, w.cur[n + 1] + us, idx, w);
        fb = w.fb;
      }
      for (std::size_t i = 0; i < sz; ++i) {
        float u = w.drive[n][os + i];
        if (fb != nullptr) u = u + fb[i];
        float s = u * m.slope;
        s = s < 0.0f ? 0.0f : (s > 1.0f ? 1.0f : s);  // +-Inf clamp to 1 / 0; NaN passes through
        const float d = std::fabs(s - w.cur[n][os + i]);
        if (d != d)
          *nan = true;
        else if (d > *res)
          *res = d;
        dst[n][os + i] = s;
      }
    }
  }
}

// One step; first_step: no forward term is in the workspace yet (the first step of a run). Later
// steps keep the first layer's (a function of x alone) and, with the even/odd schedule, every
// forward term whose input has not changed since it was computed.
Status step_impl(const Model& m, const float* x, int batch, void* workspace, std::size_t workspace_len, float* residual,
                 bool first_step) {
  Work w;
  if (x == nullptr || residual == nullptr) return ERR_ARGUMENT;
  if (!layout(m, batch, workspace, workspace_len, &w))
    return workspace_bytes(m, batch) == 0 && m.n_layers > 0 && batch > 0 ? ERR_TOO_LARGE : ERR_ARGUMENT;
  float res = 0.0f;
  bool nan = false;
  if (!m.evenodd) {  // every layer from s_t
    forwards(m, x, batch, w, first_step ? 0 : 1, 1);
    updates(m, batch, w, 0, 1, w.next, &res, &nan);
    for (int n = 0; n < m.n_layers; ++n)
      std::memcpy(w.cur[n], w.next[n], 4 * std::size_t(m.layers[n].out_size()) * batch);
  } else {  // layers 0, 2, ... from s_t, then 1, 3, ... from the fresh even ones (dynamics.step_evenodd)
    forwards(m, x, batch, w, first_step ? 0 : 2, first_step ? 1 : 2);  // the odd layers' are fresh
    updates(m, batch, w, 0, 2, w.cur, &res, &nan);
    forwards(m, x, batch, w, 1, 2);  // inputs changed: the odd layers; the even ones' are still fresh
    updates(m, batch, w, 1, 2, w.cur, &res, &nan);
  }
  *residual = nan ? NAN : res;
  return nan ? ERR_NONFINITE : OK;
}

}  // namespace

Status step(const Model& m, const float* x, int batch, void* workspace, std::size_t workspace_len, float* residual) {
  return step_impl(m, x, batch, workspace, workspace_len, residual, true);
}

Status read_scores(const Model& m, int batch, const void* workspace, std::size_t workspace_len, float* scores) {
  Work w;
  if (scores == nullptr || !layout(m, batch, workspace, workspace_len, &w)) return ERR_ARGUMENT;
  const Layer& last = m.layers[m.n_layers - 1];
  for (int b = 0; b < batch; ++b) {
    const float* s = w.cur[m.n_layers - 1] + std::size_t(last.out_size()) * b;
    if (m.readout)
      dense(scores + std::size_t(m.n_classes) * b, s, m.readout_w, m.readout_b, int(last.out_size()), m.n_classes);
    else
      std::memcpy(scores + std::size_t(m.n_classes) * b, s, 4 * std::size_t(m.n_classes));
  }
  return OK;
}

Status run(const Model& m, const float* x, int batch, int max_steps, float tol, void* workspace,
           std::size_t workspace_len, float* scores, int* steps, float* residual) {
  if (x == nullptr || max_steps < 0 || !(tol >= 0.0f) || scores == nullptr || steps == nullptr || residual == nullptr)
    return ERR_ARGUMENT;
  if (Status s = reset_state(m, batch, workspace, workspace_len)) return s;
  float res = INFINITY;
  int t = 0;
  const std::size_t n_in = std::size_t(m.in_c) * m.in_h * m.in_w * std::size_t(batch);
  for (std::size_t i = 0; i < n_in; ++i) {  // a NaN input can hide behind a max pool: refuse it here
    if (!std::isfinite(x[i])) {
      *steps = 0;
      *residual = NAN;
      return ERR_NONFINITE;
    }
  }
  while (t < max_steps) {
    Status s = step_impl(m, x, batch, workspace, workspace_len, &res, t == 0);
    ++t;
    if (s != OK) {
      *steps = t;
      *residual = res;
      return s;
    }
    if (res < tol) break;
  }
  *steps = t;
  *residual = res;
  return read_scores(m, batch, workspace, workspace_len, scores);
}

}  // namespace ep
