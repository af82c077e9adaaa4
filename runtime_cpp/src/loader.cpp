// The loader: the file scanned, its architecture read (architecture.cpp) and its census checked,
// the initializers' types and shapes, then the weights placed in the caller's arena. See docs/onnx.md.
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "internal.h"

namespace ep {

const char* status_name(Status s) {
  switch (s) {
    case OK: return "ok";
    case ERR_ARGUMENT: return "bad argument";
    case ERR_IO: return "I/O error";
    case ERR_PARSE: return "parse error";
    case ERR_VERSION: return "format version mismatch";
    case ERR_SHAPE: return "shape mismatch";
    case ERR_UNSUPPORTED: return "unsupported";
    case ERR_MISSING: return "missing entry";
    case ERR_TOO_LARGE: return "too large for this platform";
    case ERR_NONFINITE: return "non-finite state (NaN or Inf): not converged";
  }
  return "unknown status";
}

namespace detail {

const char* const REEXPORT = "re-export it with: python export/to_onnx.py CHECKPOINT --out model.onnx";

Status fail(Model* m, Status s, const char* fmt, ...) {
  if (m != nullptr) {
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(m->error, sizeof(m->error), fmt, ap);
    va_end(ap);
  }
  return s;
}

// dtype 1 (float32) or 3 (int8), shape `want`, and the data of that many elements.
Status check_tensor(const Slot& t, const std::int64_t* want, int ndim, const char* what, Model* m, bool int8) {
  if (t.external) return fail(m, ERR_UNSUPPORTED, "%s: external data is not supported; %s", what, REEXPORT);
  if (t.data_type != (int8 ? 3u : 1u))
    return fail(m, ERR_UNSUPPORTED, "%s: data type %d, expected %s; %s", what, int(t.data_type),
                int8 ? "int8" : "float32", REEXPORT);
  bool same = t.ndim == ndim;
  for (int i = 0; same && i < ndim; ++i) same = t.dims[i] == want[i];
  if (!same) {
    char got[96] = {0}, exp[96] = {0};
    for (int i = 0; i < t.ndim && i < 4; ++i)
      std::snprintf(got + std::strlen(got), sizeof(got) - std::strlen(got), "%s%lld", i ? "x" : "",
                    (long long)t.dims[i]);
    for (int i = 0; i < ndim; ++i)
      std::snprintf(exp + std::strlen(exp), sizeof(exp) - std::strlen(exp), "%s%lld", i ? "x" : "", (long long)want[i]);
    return fail(m, ERR_SHAPE, "%s has shape %s, the architecture needs %s; %s", what, got, exp, REEXPORT);
  }
  // numel <= MAX_ELEMENTS (2^28): 4 * numel fits a 32-bit size_t
  if (std::uint64_t(t.data.n) != std::uint64_t(t.numel()) * (int8 ? 1 : 4) || (int8 && !t.raw))
    return fail(m, ERR_SHAPE, "%s holds %zu bytes of %s data for %lld elements; %s", what, t.data.n,
                t.raw ? "raw" : "float", (long long)t.numel(), REEXPORT);
  return OK;
}

// A weight of shape wd: the float32 initializer `what`, or in an int8 model what_int8 (int8) and
// what_scale (one positive finite float32 per output channel), and then no float32 `what`.
Status check_weight(const Slot& w, const Quantized& q, const std::int64_t* wd, int ndim, const char* what, Model* m) {
  if (!m->int8) {
    if (q.q.present || q.scale.present)
      return fail(m, ERR_SHAPE, "the file holds %s_int8 or %s_scale, the metadata says float32 weights; %s", what, what,
                  REEXPORT);
    if (!w.present) return fail(m, ERR_MISSING, "initializer %s is missing; %s", what, REEXPORT);
    return check_tensor(w, wd, ndim, what, m);
  }
  if (w.present)
    return fail(m, ERR_SHAPE, "the file holds a float32 %s, the metadata says int8 weights; %s", what, REEXPORT);
  if (!q.q.present || !q.scale.present)
    return fail(m, ERR_MISSING, "initializer %s_int8 or %s_scale is missing; %s", what, what, REEXPORT);
  char name[48];
  std::snprintf(name, sizeof(name), "%s_int8", what);
  if (Status s = check_tensor(q.q, wd, ndim, name, m, true)) return s;
  std::snprintf(name, sizeof(name), "%s_scale", what);
  const std::int64_t sd[1] = {wd[0]};
  if (Status s = check_tensor(q.scale, sd, 1, name, m)) return s;
  for (std::int64_t c = 0; c < wd[0]; ++c) {
    float v;
    std::memcpy(&v, q.scale.data.p + 4 * c, 4);  // float_data or raw_data: little-endian float32
    if (!(v > 0.0f) || !std::isfinite(v))
      return fail(m, ERR_PARSE, "%s[%lld] is %g: every scale must be a positive finite float32; %s", name, (long long)c,
                  double(v), REEXPORT);
  }
  return OK;
}

Status check_tensors(const Found& f, const Model& mm, int i, const std::int64_t* wd, int ndim, Model* m) {
  const int s = slot_of(mm, i);
  char base[16], what[40];
  interaction_name(mm, i, base, sizeof(base));
  std::snprintf(what, sizeof(what), "%s.weight", base);
  if (Status st = check_weight(f.weight[s], f.weight_q[s], wd, ndim, what, m)) return st;
  std::snprintf(what, sizeof(what), "%s.bias", base);
  if (!f.want_bias[s] && f.bias[s].present)
    return fail(m, ERR_SHAPE, "the file holds %s, the metadata says it has no bias; %s", what, REEXPORT);
  if (f.want_bias[s]) {
    if (!f.bias[s].present) return fail(m, ERR_MISSING, "initializer %s is missing; %s", what, REEXPORT);
    const std::int64_t bd[1] = {wd[0]};
    if (Status st = check_tensor(f.bias[s], bd, 1, what, m)) return st;
  }
  std::snprintf(what, sizeof(what), "%s.weight_b", base);
  if (!f.want_b[s]) {
    if (f.weight_b[s].present || f.weight_b_q[s].q.present)
      return fail(m, ERR_SHAPE, "the file holds %s, the metadata says has_weight_b false; %s", what, REEXPORT);
    return OK;
  }
  return check_weight(f.weight_b[s], f.weight_b_q[s], wd, ndim, what, m);
}

}  // namespace detail

namespace {

using namespace detail;

const float* place(const Slot& t, float* arena, std::size_t* used) {
  float* dst = arena + *used;
  std::memcpy(dst, t.data.p, t.data.n);  // little-endian float32 on every target here
  *used += std::size_t(t.numel());
  return dst;
}

// A checked weight: float32 copied into the arena, or int8 read in place with its scales copied.
Weights place_weight(const Slot& w, const Quantized& q, bool int8, float* arena, std::size_t* used) {
  if (!int8) return Weights(place(w, arena, used));
  return Weights(reinterpret_cast<const std::int8_t*>(q.q.data.p), place(q.scale, arena, used));
}

// Floats a checked weight takes in the arena: the weight itself, or its scales.
std::uint64_t arena_of(const Slot& w, const Quantized& q, bool int8) {
  return std::uint64_t(int8 ? q.scale.numel() : w.numel());
}

Status build(const std::uint8_t* buf, std::size_t len, float* arena, std::size_t arena_floats, Model* m,
             std::size_t* needed) {
  Found f;  // on this call's stack (~9 KB): reentrant
  if (Status s = scan(buf, len, &f, m)) return s;
  if (Status s = parse_architecture(f, m)) return s;
  if (Status s = check_graph(f, m, m)) return s;
  std::uint64_t total = 0;  // each tensor <= 2^28 floats: 64 bits cannot overflow
  const bool q = m->int8;
  for (int i = 0; i < m->n_interactions(); ++i) {
    const int s = slot_of(*m, i);
    total += arena_of(f.weight[s], f.weight_q[s], q);
    if (f.want_bias[s]) total += std::uint64_t(f.bias[s].numel());
    if (f.want_b[s]) total += arena_of(f.weight_b[s], f.weight_b_q[s], q);
  }
  if (m->readout) total += arena_of(f.ro_w, f.ro_w_q, q) + std::uint64_t(f.ro_b.numel());
  if (total > std::uint64_t(SIZE_MAX / sizeof(float)))
    return fail(m, ERR_TOO_LARGE, "the weights need %llu floats, more than this platform can address",
                (unsigned long long)total);
  std::size_t used = std::size_t(total);
  *needed = used;
  if (arena == nullptr) return OK;
  if (arena_floats < used)
    return fail(m, ERR_ARGUMENT, "weight arena holds %zu floats, the model needs %zu", arena_floats, used);
  used = 0;
  for (int i = 0; i < m->n_interactions(); ++i) {
    const int s = slot_of(*m, i);
    Layer& L = i < m->n_layers ? m->layers[i] : m->skips[i - m->n_layers];
    L.weight = place_weight(f.weight[s], f.weight_q[s], q, arena, &used);
    L.bias = f.want_bias[s] ? place(f.bias[s], arena, &used) : nullptr;
    L.weight_b = f.want_b[s] ? place_weight(f.weight_b[s], f.weight_b_q[s], q, arena, &used) : Weights();
  }
  if (m->readout) {
    m->readout_w = place_weight(f.ro_w, f.ro_w_q, q, arena, &used);
    m->readout_b = place(f.ro_b, arena, &used);
  }
  return OK;
}

}  // namespace

Status required_arena(const std::uint8_t* buf, std::size_t len, std::size_t* n_floats, Model* diagnostics) {
  Model scratch;  // on the stack: reentrant
  Model* m = diagnostics != nullptr ? diagnostics : &scratch;
  *m = Model();
  if (n_floats == nullptr) return ERR_ARGUMENT;
  Status s = build(buf, len, nullptr, 0, m, n_floats);
  m->n_layers = m->n_skips = 0;  // weights are not placed: the model is not runnable
  return s;
}

Status load(const std::uint8_t* buf, std::size_t len, float* arena, std::size_t arena_floats, Model* m) {
  if (m == nullptr) return ERR_ARGUMENT;
  *m = Model();
  if (arena == nullptr) return fail(m, ERR_ARGUMENT, "no weight arena (see required_arena)");
  std::size_t needed = 0;
  Status s = build(buf, len, arena, arena_floats, m, &needed);
  if (s != OK) m->n_layers = m->n_skips = 0;
  return s;
}

}  // namespace ep
