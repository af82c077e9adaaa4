// The loader: the metadata contract (format version, architecture, initializer shapes) checked
// against the graph scan, then the weights placed in the caller's arena. See docs/onnx.md.
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

}  // namespace detail

namespace {

using namespace detail;

// dtype 1 (float32) or 3 (int8), shape `want`, and the data of that many elements.
Status check_tensor(const Slot& t, const std::int64_t* want, int ndim, const char* what, Model* m, bool int8 = false) {
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

// Layer n's weight (and backward weight when the architecture says so) of shape wd, and its bias.
Status check_layer_tensors(const Found& f, int n, const std::int64_t* wd, int ndim, bool wb, Model* m) {
  char what[40];
  std::snprintf(what, sizeof(what), "layer%d.weight", n + 1);
  if (Status s = check_weight(f.weight[n], f.weight_q[n], wd, ndim, what, m)) return s;
  std::snprintf(what, sizeof(what), "layer%d.bias", n + 1);
  if (!f.bias[n].present) return fail(m, ERR_MISSING, "initializer %s is missing; %s", what, REEXPORT);
  const std::int64_t bd[1] = {wd[0]};
  if (Status s = check_tensor(f.bias[n], bd, 1, what, m)) return s;
  if (!wb) return OK;
  std::snprintf(what, sizeof(what), "layer%d.weight_b", n + 1);
  return check_weight(f.weight_b[n], f.weight_b_q[n], wd, ndim, what, m);
}

const char* pool_name(Pool p) { return p == Pool::Max ? "max" : p == Pool::Avg ? "avg" : "none"; }

Status parse_architecture(Found& f, Model* m) {
  if (f.meta_version.n == 0)
    return fail(m, ERR_MISSING, "no ep_compile.format_version metadata: not an ep_compile export; %s", REEXPORT);
  char v[16] = {0};
  std::memcpy(v, f.meta_version.p, f.meta_version.n < 15 ? f.meta_version.n : 15);
  const int version = std::atoi(v);
  if (version == GRAPH_FORMAT_VERSION && f.meta_version.n == 1)
    return fail(m, ERR_UNSUPPORTED,
                "file has format version 3: a graph net (skip interactions, strided convs or clipped / per-state "
                "activations), which this runtime does not run yet (chain nets only, versions %d to %d); run it in "
                "onnxruntime",
                MIN_FORMAT_VERSION, FORMAT_VERSION);
  if (version < MIN_FORMAT_VERSION || version > FORMAT_VERSION || f.meta_version.n > 15)
    return fail(m, ERR_VERSION,
                "file has format version '%s', this runtime reads %d to %d; %s (or rebuild the runtime from the same "
                "ep_compile)",
                v, MIN_FORMAT_VERSION, FORMAT_VERSION, REEXPORT);
  if (f.meta_arch.n == 0) return fail(m, ERR_MISSING, "no ep_compile.architecture metadata; %s", REEXPORT);
  Json arch = value_span(reinterpret_cast<const char*>(f.meta_arch.p),
                         reinterpret_cast<const char*>(f.meta_arch.p) + f.meta_arch.n);
  Json layers = get(arch, "layers");
  int n_layers = length(layers);
  double slope;
  if (!arch.ok() || n_layers < 1 || n_layers > MAX_LAYERS || !number(get(arch, "slope"), &slope) || slope <= 0 ||
      !integer(get(arch, "n_classes"), 2, MAX_CLASSES, &m->n_classes) ||
      !shape3(get(arch, "in_shape"), &m->in_c, &m->in_h, &m->in_w))
    return fail(m, ERR_PARSE, "architecture metadata is malformed or has %d layers (1..%d supported)", n_layers,
                MAX_LAYERS);
  m->slope = float(slope);
  m->readout = is_true(get(arch, "readout"));
  const Json weights = get(arch, "weights");  // absent in version 1: float32
  m->int8 = is_str(weights, "int8");
  if (weights.ok() && !m->int8 && !is_str(weights, "float32"))
    return fail(m, ERR_UNSUPPORTED, "architecture weights '%.*s': this runtime reads float32 and int8; %s",
                int(weights.end - weights.p < 24 ? weights.end - weights.p : 24), weights.p, REEXPORT);
  if (m->int8 && version < 2)
    return fail(m, ERR_VERSION, "int8 weights in a file of format version %d (int8 needs 2); %s", version, REEXPORT);
  const Json schedule = get(arch, "schedule");  // absent in version 1: synchronous
  m->evenodd = is_str(schedule, "evenodd");
  if (schedule.ok() && !m->evenodd && !is_str(schedule, "sync"))
    return fail(m, ERR_UNSUPPORTED, "architecture schedule '%.*s': this runtime runs sync and evenodd; %s",
                int(schedule.end - schedule.p < 24 ? schedule.end - schedule.p : 24), schedule.p, REEXPORT);
  if (m->evenodd && version < 2)
    return fail(m, ERR_VERSION, "the even/odd schedule in a file of format version %d (it needs 2); %s", version,
                REEXPORT);
  if (std::int64_t(m->in_c) * m->in_h * m->in_w > MAX_ELEMENTS)
    return fail(m, ERR_SHAPE, "the input %dx%dx%d is too large", m->in_c, m->in_h, m->in_w);
  const Facts& k = f.facts;
  if (k.slope < 0.0f || !k.slopes_agree || k.slope != m->slope)
    return fail(m, ERR_SHAPE,
                "the metadata's slope %g is not the graph's HardSigmoid alpha (%g): metadata and graph disagree; %s",
                slope, double(k.slope), REEXPORT);
  if (m->readout != k.readout)
    return fail(m, ERR_SHAPE,
                "the metadata says readout=%s, the graph %s a read-out Gemm: metadata and graph disagree; %s",
                m->readout ? "true" : "false", k.readout ? "has" : "has no", REEXPORT);
  m->n_layers = n_layers;
  int c = m->in_c, h = m->in_h, w = m->in_w;
  for (int n = 0; n < n_layers; ++n) {
    Json d = at(layers, n);
    Layer& L = m->layers[n];
    int ic, ih, iw;
    if (!shape3(get(d, "in_shape"), &ic, &ih, &iw) || !shape3(get(d, "out_shape"), &L.out_c, &L.out_h, &L.out_w))
      return fail(m, ERR_PARSE, "layer %d: malformed shapes in the metadata", n + 1);
    if (ic != c || ih != h || iw != w)
      return fail(m, ERR_SHAPE, "layer %d input %dx%dx%d does not follow the previous layer's %dx%dx%d; %s", n + 1, ic,
                  ih, iw, c, h, w, REEXPORT);
    L.in_c = c;
    L.in_h = h;
    L.in_w = w;
    bool wb = is_true(get(d, "has_weight_b"));
    if (wb && n == 0) return fail(m, ERR_SHAPE, "layer 1 reads the static input and cannot have backward weights");
    f.want_b[n] = wb;
    if (is_str(get(d, "kind"), "conv")) {
      L.kind = Kind::Conv;
      Json pool = get(d, "pool");
      L.pool = is_str(pool, "max")    ? Pool::Max
               : is_str(pool, "avg")  ? Pool::Avg
               : is_str(pool, "none") ? Pool::None
                                      : Pool(255);
      if (L.pool == Pool(255)) return fail(m, ERR_UNSUPPORTED, "layer %d: unknown pooling", n + 1);
      if (!integer(get(d, "kernel"), 1, 15, &L.kernel) || !integer(get(d, "padding"), 0, 15, &L.padding))
        return fail(m, ERR_PARSE, "layer %d: kernel / padding missing or out of range", n + 1);
      L.conv_c = L.out_c;
      L.conv_h = h + 2 * L.padding - L.kernel + 1;
      L.conv_w = w + 2 * L.padding - L.kernel + 1;
      int ph = L.pool == Pool::None ? L.conv_h : L.conv_h / 2, pw = L.pool == Pool::None ? L.conv_w : L.conv_w / 2;
      if (L.conv_h < 1 || L.conv_w < 1 || ph != L.out_h || pw != L.out_w || length(get(d, "out_shape")) != 3)
        return fail(m, ERR_SHAPE, "layer %d: conv %dx%d pad %d on %dx%d gives no %dx%d state; %s", n + 1, L.kernel,
                    L.kernel, L.padding, h, w, L.out_h, L.out_w, REEXPORT);
      if (!k.conv[n] || k.kernel[n] != L.kernel || k.pad[n] != L.padding || k.pool[n] != L.pool)
        return fail(m, ERR_SHAPE,
                    "layer %d: the metadata says conv %dx%d pad %d pool %s, the graph's nodes say %s %dx%d pad %d pool "
                    "%s: metadata and graph disagree; %s",
                    n + 1, L.kernel, L.kernel, L.padding, pool_name(L.pool), k.conv[n] ? "conv" : "no conv",
                    k.kernel[n], k.kernel[n], k.pad[n], pool_name(k.pool[n]), REEXPORT);
      const std::int64_t wd[4] = {L.out_c, c, L.kernel, L.kernel};
      if (Status s = check_layer_tensors(f, n, wd, 4, wb, m)) return s;
    } else if (is_str(get(d, "kind"), "dense")) {
      L.kind = Kind::Dense;
      if (length(get(d, "out_shape")) != 1)
        return fail(m, ERR_SHAPE, "layer %d: a dense layer has a flat output", n + 1);
      if (!k.dense[n] || k.conv[n])
        return fail(m, ERR_SHAPE,
                    "layer %d: the metadata says dense, the graph's nodes do not: metadata and graph disagree; %s",
                    n + 1, REEXPORT);
      const std::int64_t wd[2] = {L.out_c, std::int64_t(c) * h * w};
      if (Status s = check_layer_tensors(f, n, wd, 2, wb, m)) return s;
    } else {
      return fail(m, ERR_UNSUPPORTED, "layer %d: unknown kind (conv and dense are supported)", n + 1);
    }
    if (L.out_size() > MAX_ELEMENTS || L.conv_size() > MAX_ELEMENTS)
      return fail(m, ERR_SHAPE, "layer %d is too large", n + 1);
    c = L.out_c;
    h = L.out_h;
    w = L.out_w;
  }
  const Layer& last = m->layers[n_layers - 1];
  if (m->readout) {
    const std::int64_t wd[2] = {m->n_classes, last.out_size()}, bd[1] = {m->n_classes};
    if (!f.ro_b.present) return fail(m, ERR_MISSING, "readout.bias is missing; %s", REEXPORT);
    if (Status s = check_weight(f.ro_w, f.ro_w_q, wd, 2, "readout.weight", m)) return s;
    if (Status s = check_tensor(f.ro_b, bd, 1, "readout.bias", m)) return s;
  } else if (last.out_size() != m->n_classes) {
    return fail(m, ERR_SHAPE, "the output layer has %lld units for %d classes; %s", (long long)last.out_size(),
                m->n_classes, REEXPORT);
  }
  if (f.meta_T.n > 0) {  // optional; when present it must be an integer in [1, 1e6]
    Json t{reinterpret_cast<const char*>(f.meta_T.p), reinterpret_cast<const char*>(f.meta_T.p) + f.meta_T.n};
    if (!integer(t, 1, 1000000, &m->default_steps))
      return fail(m, ERR_PARSE, "ep_compile.default_T '%.*s' is not an integer in [1, 1000000]; %s",
                  int(f.meta_T.n < 24 ? f.meta_T.n : 24), reinterpret_cast<const char*>(f.meta_T.p), REEXPORT);
  }
  if (f.meta_pre.n > 0) {  // optional: only the CLI's help uses it
    Json pre = value_span(reinterpret_cast<const char*>(f.meta_pre.p),
                          reinterpret_cast<const char*>(f.meta_pre.p) + f.meta_pre.n);
    double v;
    if (number(get(pre, "std_scale"), &v)) m->std_scale = float(v);
    int read = 0;
    for (int i = 0; i < 4 && i < m->in_c; ++i) {
      double mv, sv;
      if (number(at(get(pre, "mean"), i), &mv) && number(at(get(pre, "std"), i), &sv) && sv > 0) {
        m->mean[i] = float(mv);
        m->std[i] = float(sv);
        ++read;
      }
    }
    m->has_preprocessing = read == m->in_c && m->std_scale > 0;
  }
  return OK;
}

Status build(const std::uint8_t* buf, std::size_t len, float* arena, std::size_t arena_floats, Model* m,
             std::size_t* needed) {
  Found f;  // on this call's stack (~9 KB): reentrant
  if (Status s = scan(buf, len, &f, m)) return s;
  if (Status s = parse_architecture(f, m)) return s;
  if (Status s = check_graph(f, m, m)) return s;
  std::uint64_t total = 0;  // each tensor <= 2^28 floats: 64 bits cannot overflow
  const bool q = m->int8;
  for (int n = 0; n < m->n_layers; ++n) {
    total += arena_of(f.weight[n], f.weight_q[n], q) + std::uint64_t(f.bias[n].numel());
    if (f.want_b[n]) total += arena_of(f.weight_b[n], f.weight_b_q[n], q);
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
  for (int n = 0; n < m->n_layers; ++n) {
    Layer& L = m->layers[n];
    L.weight = place_weight(f.weight[n], f.weight_q[n], q, arena, &used);
    L.bias = place(f.bias[n], arena, &used);
    L.weight_b = f.want_b[n] ? place_weight(f.weight_b[n], f.weight_b_q[n], q, arena, &used) : Weights();
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
  m->n_layers = 0;  // weights are not placed: the model is not runnable
  return s;
}

Status load(const std::uint8_t* buf, std::size_t len, float* arena, std::size_t arena_floats, Model* m) {
  if (m == nullptr) return ERR_ARGUMENT;
  *m = Model();
  if (arena == nullptr) return fail(m, ERR_ARGUMENT, "no weight arena (see required_arena)");
  std::size_t needed = 0;
  Status s = build(buf, len, arena, arena_floats, m, &needed);
  if (s != OK) m->n_layers = 0;
  return s;
}

}  // namespace ep
