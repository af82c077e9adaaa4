// The fixed-point iteration: the workspace layout, one step of the dynamics over every interaction
// (dynamics.step / step_evenodd of ep_compile with no nudge, walk_step's colour classes), the
// read-out and run().
#include <cmath>
#include <cstring>

#include "internal.h"

namespace ep {

namespace {

struct Work {  // views into the caller's workspace, laid out by carve()
  float* cur[MAX_LAYERS];
  float* next[MAX_LAYERS];
  float* drive[MAX_INTERACTIONS];  // each interaction's forward term P(w * s^src) (+ bias), per image
  std::int32_t* idx[MAX_INTERACTIONS];
  std::int32_t* idx_b[MAX_INTERACTIONS];        // max-pool indices of the backward weight's own convolution
  float *conv, *col, *unpool, *fb, *acc, *deq;  // deq: int8 models only (a panel of dequantized weights)
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
  std::size_t off = 0, conv = 1, col = 1, fb = 1, acc = 1, deq = 0;
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
    std::size_t s = 0;
    ok = ok && mul(std::size_t(m.layers[n].out_size()), std::size_t(batch), &s);
    w->cur[n] = reinterpret_cast<float*>(take(s));
    w->next[n] = reinterpret_cast<float*>(take(m.n_colours == 1 ? s : 0));  // in place with colour classes
    acc = std::max(acc, std::size_t(m.layers[n].out_size()));
  }
  for (int i = 0; i < m.n_interactions(); ++i) {
    const Layer& L = m.interaction(i);
    std::size_t s = 0, rows_pix = 0;
    ok = ok && mul(std::size_t(L.out_size()), std::size_t(batch), &s);
    w->drive[i] = reinterpret_cast<float*>(take(s));
    w->idx[i] = reinterpret_cast<std::int32_t*>(take(L.pool == Pool::Max ? s : 0));
    w->idx_b[i] = reinterpret_cast<std::int32_t*>(take(L.pool == Pool::Max && L.weight_b.present() ? s : 0));
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
  w->acc = reinterpret_cast<float*>(take(acc));
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
  conv2d(u, pre, weight, bias, L.in_c, L.in_h, L.in_w, L.conv_c, L.kernel, L.padding, w.col, w.deq, L.stride);
  if (L.pool == Pool::Max) maxpool(out, idx, u, L.conv_c, L.conv_h, L.conv_w, L.factor);
  if (L.pool == Pool::Avg) avgpool(out, u, L.conv_c, L.conv_h, L.conv_w, L.factor);
}

// The adjoint of interaction L applied to its target state, into w.fb (the source state's shape).
void feedback(const Layer& L, const float* post, const std::int32_t* idx, const Work& w) {
  const Weights& wt = L.weight_b.present() ? L.weight_b : L.weight;
  if (L.kind == Kind::Dense) {
    dense_transpose(w.fb, post, wt, int(L.in_size()), L.out_c);
    return;
  }
  const float* g = post;
  if (L.pool == Pool::Max) {
    maxunpool(w.unpool, post, idx, L.conv_c, L.conv_h, L.conv_w, L.factor);
    g = w.unpool;
  } else if (L.pool == Pool::Avg) {
    avgunpool(w.unpool, post, L.conv_c, L.conv_h, L.conv_w, L.factor);
    g = w.unpool;
  }
  conv2d_transpose(w.fb, g, wt, L.conv_c, L.conv_h, L.conv_w, L.in_c, L.in_h, L.in_w, L.kernel, L.padding, w.col, w.deq,
                   L.stride);
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

// The forward term of interaction i for every image (and, for a max-pooled interaction with
// backward weights, the indices of the backward weight's own convolution: Eq. 45-47).
void forwards(const Model& m, const float* x, int batch, const Work& w, int i) {
  const Layer& L = m.interaction(i);
  const std::size_t in_size = std::size_t(L.in_size()), os = std::size_t(L.out_size());
  for (int b = 0; b < batch; ++b) {
    const float* pre = (L.src == 0 ? x : w.cur[L.src - 1]) + in_size * b;
    forward(L, pre, L.weight, L.bias, w.drive[i] + os * b, L.pool == Pool::Max ? w.idx[i] + os * b : nullptr, w);
    if (L.weight_b.present() && L.pool == Pool::Max)
      forward(L, pre, L.weight_b, nullptr, w.unpool, w.idx_b[i] + os * b, w);
  }
}

// State n's new value for every image: sigma(sum of the forward terms into it and the feedback of
// every interaction out of it, in interaction order) into dst[n]; the largest change goes into
// *res, a NaN into *nan.
void update(const Model& m, int batch, const Work& w, int n, float* const* dst, float* res, bool* nan) {
  const std::size_t sz = std::size_t(m.layers[n].out_size());
  const Activation a = m.act[n];
  for (int b = 0; b < batch; ++b) {
    const std::size_t os = sz * b;
    const float* u = nullptr;  // the running sum: a forward term itself, or w.acc
    for (int i = 0; i < m.n_interactions(); ++i) {
      const Layer& L = m.interaction(i);
      const float* t;
      if (L.dst == n + 1) {
        t = w.drive[i] + os;
      } else if (L.src == n + 1) {
        const std::size_t us = std::size_t(L.out_size()) * b;
        const std::int32_t* idx = L.pool == Pool::Max ? (L.weight_b.present() ? w.idx_b[i] : w.idx[i]) + us : nullptr;
        feedback(L, w.cur[L.dst - 1] + us, idx, w);
        t = w.fb;
      } else {
        continue;
      }
      if (u == nullptr && t != w.fb) {
        u = t;
      } else if (u == nullptr) {
        std::memcpy(w.acc, t, 4 * sz);
        u = w.acc;
      } else if (u != w.acc) {
        for (std::size_t j = 0; j < sz; ++j) w.acc[j] = u[j] + t[j];
        u = w.acc;
      } else {
        for (std::size_t j = 0; j < sz; ++j) w.acc[j] += t[j];
      }
    }
    const bool clamp = a.lo != -INFINITY;
    for (std::size_t j = 0; j < sz; ++j) {
      float s = u[j] * a.slope;
      if (clamp) s = s < a.lo ? a.lo : (s > a.hi ? a.hi : s);  // +-Inf clamp to hi / lo; NaN passes through
      const float d = std::fabs(s - w.cur[n][os + j]);
      if (d != d)
        *nan = true;
      else if (d > *res)
        *res = d;
      dst[n][os + j] = s;
    }
  }
}

// One step (walk_step): stale[i] says which forward terms are no longer those of the current
// states (all of them before a run's first step; after it, every one but those of the input, and with
// colour classes those whose source has not changed since they were computed are reused).
Status step_impl(const Model& m, const float* x, int batch, void* workspace, std::size_t workspace_len, float* residual,
                 bool* stale) {
  Work w;
  if (x == nullptr || residual == nullptr) return ERR_ARGUMENT;
  if (!layout(m, batch, workspace, workspace_len, &w))
    return workspace_bytes(m, batch) == 0 && m.n_layers > 0 && batch > 0 ? ERR_TOO_LARGE : ERR_ARGUMENT;
  float res = 0.0f;
  bool nan = false;
  const bool sync = m.n_colours == 1;  // every state from s_t, into w.next; else each class in place
  detail::walk_step(
      m, stale, [&](int i) { forwards(m, x, batch, w, i); },
      [&](int n) { update(m, batch, w, n, sync ? w.next : w.cur, &res, &nan); });
  if (sync)
    for (int n = 0; n < m.n_layers; ++n)
      std::memcpy(w.cur[n], w.next[n], 4 * std::size_t(m.layers[n].out_size()) * batch);
  *residual = nan ? NAN : res;
  return nan ? ERR_NONFINITE : OK;
}

}  // namespace

Status step(const Model& m, const float* x, int batch, void* workspace, std::size_t workspace_len, float* residual) {
  bool stale[MAX_INTERACTIONS];
  for (bool& b : stale) b = true;  // x may differ from the last call's
  return step_impl(m, x, batch, workspace, workspace_len, residual, stale);
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
  bool stale[MAX_INTERACTIONS];
  for (bool& b : stale) b = true;
  while (t < max_steps) {
    Status s = step_impl(m, x, batch, workspace, workspace_len, &res, stale);
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
