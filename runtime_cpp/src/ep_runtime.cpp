// ep_runtime: loader (a strict protobuf reader for the parts of ONNX it needs, a small JSON reader for
// the metadata), the kernels, and the fixed-point iteration. See ep_runtime.h and docs/onnx.md.
#include "ep_runtime.h"

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#if !defined(__GNUC__) || !(defined(__SSE2__) || defined(__ARM_NEON) || defined(__AVX__))
#define EP_SCALAR_GEMM 1  // no vector unit (a Cortex-M) or no GNU vector extensions: the plain GEMM loop
#endif

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

namespace {

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

// ------------------------------------------------------------------------------- protobuf reader

struct Span {
  const std::uint8_t* p = nullptr;
  std::size_t n = 0;
  bool eq(const char* s) const { return std::strlen(s) == n && std::memcmp(p, s, n) == 0; }
};

struct Reader {
  const std::uint8_t* p;
  const std::uint8_t* end;
  bool done() const { return p >= end; }
  bool varint(std::uint64_t* v) {
    std::uint64_t r = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p >= end) return false;
      std::uint8_t b = *p++;
      r |= std::uint64_t(b & 0x7f) << shift;
      if ((b & 0x80) == 0) {
        *v = r;
        return true;
      }
    }
    return false;  // more than 10 bytes
  }
  bool key(std::uint32_t* field, std::uint32_t* wire) {
    std::uint64_t k;
    if (!varint(&k) || (k >> 3) == 0 || (k >> 3) > 0x1fffffff) return false;
    *field = std::uint32_t(k >> 3);
    *wire = std::uint32_t(k & 7);
    return true;
  }
  bool bytes(Span* s) {
    std::uint64_t n;
    if (!varint(&n) || n > std::uint64_t(end - p)) return false;
    s->p = p;
    s->n = std::size_t(n);
    p += n;
    return true;
  }
  bool skip(std::uint32_t wire) {
    std::uint64_t v;
    Span s;
    switch (wire) {
      case 0: return varint(&v);
      case 1:
        if (end - p < 8) return false;
        p += 8;
        return true;
      case 2: return bytes(&s);
      case 5:
        if (end - p < 4) return false;
        p += 4;
        return true;
      default: return false;  // groups (3, 4) and reserved wire types
    }
  }
};

constexpr int MAX_DIMS = 8;

struct Tensor {
  Span name;
  std::int64_t dims[MAX_DIMS] = {0};
  int ndim = 0;
  std::uint64_t data_type = 0;
  Span raw, floats;  // raw_data, or packed float_data
  bool external = false;
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= dims[i];
    return n;
  }
};

bool parse_tensor(Span s, Tensor* t) {
  Reader r{s.p, s.p + s.n};
  while (!r.done()) {
    std::uint32_t f, w;
    if (!r.key(&f, &w)) return false;
    if (f == 1 && w == 0) {  // dims, unpacked
      std::uint64_t d;
      if (!r.varint(&d) || t->ndim >= MAX_DIMS || d > std::uint64_t(MAX_ELEMENTS)) return false;
      t->dims[t->ndim++] = std::int64_t(d);
    } else if (f == 1 && w == 2) {  // dims, packed
      Span ps;
      if (!r.bytes(&ps)) return false;
      Reader pr{ps.p, ps.p + ps.n};
      while (!pr.done()) {
        std::uint64_t d;
        if (!pr.varint(&d) || t->ndim >= MAX_DIMS || d > std::uint64_t(MAX_ELEMENTS)) return false;
        t->dims[t->ndim++] = std::int64_t(d);
      }
    } else if (f == 2 && w == 0) {
      if (!r.varint(&t->data_type)) return false;
    } else if (f == 8 && w == 2) {
      if (!r.bytes(&t->name)) return false;
    } else if (f == 9 && w == 2) {
      if (!r.bytes(&t->raw)) return false;
    } else if (f == 4 && w == 2) {
      if (!r.bytes(&t->floats)) return false;
    } else if (f == 14 && w == 0) {
      std::uint64_t loc;
      if (!r.varint(&loc)) return false;
      t->external = loc == 1;
    } else if (!r.skip(w)) {
      return false;
    }
  }
  std::int64_t n = 1;
  for (int i = 0; i < t->ndim; ++i) {
    if (t->dims[i] > MAX_ELEMENTS || n * std::max<std::int64_t>(t->dims[i], 1) > MAX_ELEMENTS) return false;
    n *= t->dims[i];
  }
  return true;
}

// ------------------------------------------------------------------------------- JSON reader
// Scans the metadata text in place: no tree, no allocation, depth-limited.

struct Json {
  const char* p = nullptr;
  const char* end = nullptr;
  bool ok() const { return p != nullptr; }
};

const char* ws(const char* p, const char* e) {
  while (p < e && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) ++p;
  return p;
}

const char* skip_value(const char* p, const char* e, int depth) {
  p = ws(p, e);
  if (p >= e || depth > 32) return nullptr;
  if (*p == '"') {
    for (++p; p < e; ++p) {
      if (*p == '\\') {
        ++p;
        continue;
      }
      if (*p == '"') return p + 1;
    }
    return nullptr;
  }
  if (*p == '{' || *p == '[') {
    char close = *p == '{' ? '}' : ']';
    p = ws(p + 1, e);
    if (p < e && *p == close) return p + 1;
    while (p < e) {
      if (close == '}') {
        p = skip_value(p, e, depth + 1);  // key
        if (p == nullptr) return nullptr;
        p = ws(p, e);
        if (p >= e || *p != ':') return nullptr;
        ++p;
      }
      p = skip_value(p, e, depth + 1);
      if (p == nullptr) return nullptr;
      p = ws(p, e);
      if (p < e && *p == ',') {
        ++p;
        continue;
      }
      if (p < e && *p == close) return p + 1;
      return nullptr;
    }
    return nullptr;
  }
  const char* q = p;  // number, true, false, null
  while (q < e && (std::strchr("+-.eE0123456789", *q) != nullptr || (*q >= 'a' && *q <= 'z'))) ++q;
  return q > p ? q : nullptr;
}

Json value_span(const char* p, const char* e) {
  p = ws(p, e);
  const char* q = skip_value(p, e, 0);
  return q == nullptr ? Json{} : Json{p, q};
}

Json get(Json obj, const char* key) {
  if (!obj.ok() || obj.p >= obj.end || *obj.p != '{') return Json{};
  const char* p = ws(obj.p + 1, obj.end);
  std::size_t klen = std::strlen(key);
  while (p < obj.end && *p == '"') {
    const char* kend = skip_value(p, obj.end, 0);
    if (kend == nullptr) return Json{};
    bool match = std::size_t(kend - p) == klen + 2 && std::memcmp(p + 1, key, klen) == 0;
    p = ws(kend, obj.end);
    if (p >= obj.end || *p != ':') return Json{};
    Json v = value_span(p + 1, obj.end);
    if (!v.ok()) return Json{};
    if (match) return v;
    p = ws(v.end, obj.end);
    if (p < obj.end && *p == ',') p = ws(p + 1, obj.end);
  }
  return Json{};
}

Json at(Json arr, int i) {
  if (!arr.ok() || arr.p >= arr.end || *arr.p != '[') return Json{};
  const char* p = ws(arr.p + 1, arr.end);
  for (int k = 0; p < arr.end && *p != ']'; ++k) {
    Json v = value_span(p, arr.end);
    if (!v.ok()) return Json{};
    if (k == i) return v;
    p = ws(v.end, arr.end);
    if (p < arr.end && *p == ',') p = ws(p + 1, arr.end);
  }
  return Json{};
}

// Elements of an array, in one pass (linear in its text); -1 when malformed.
int length(Json arr) {
  if (!arr.ok() || arr.p >= arr.end || *arr.p != '[') return -1;
  const char* p = ws(arr.p + 1, arr.end);
  int n = 0;
  while (p < arr.end && *p != ']') {
    Json v = value_span(p, arr.end);
    if (!v.ok() || n == 1 << 30) return -1;
    ++n;
    p = ws(v.end, arr.end);
    if (p < arr.end && *p == ',') p = ws(p + 1, arr.end);
  }
  return n;
}

// A JSON number, parsed by hand: newlib's strtod allocates, and the runtime must not.
bool number(Json v, double* out) {
  const char* p = v.p;
  const char* e = v.end;
  if (!v.ok() || p >= e) return false;
  const bool neg = *p == '-';
  if (neg || *p == '+') ++p;
  double mant = 0;
  int exp10 = 0, digits = 0;
  for (; p < e && *p >= '0' && *p <= '9'; ++p, ++digits) mant = mant * 10 + (*p - '0');
  if (p < e && *p == '.')
    for (++p; p < e && *p >= '0' && *p <= '9'; ++p, ++digits, --exp10) mant = mant * 10 + (*p - '0');
  if (digits == 0 || digits > 40) return false;
  if (p < e && (*p == 'e' || *p == 'E')) {
    ++p;
    const bool eneg = p < e && *p == '-';
    if (p < e && (*p == '-' || *p == '+')) ++p;
    int ev = 0, ed = 0;
    for (; p < e && *p >= '0' && *p <= '9' && ed < 4; ++p, ++ed) ev = ev * 10 + (*p - '0');
    if (ed == 0) return false;
    exp10 += eneg ? -ev : ev;
  }
  if (p != e || exp10 < -300 || exp10 > 300) return false;
  double scale = 1;
  for (int i = 0; i < (exp10 < 0 ? -exp10 : exp10); ++i) scale *= 10;
  *out = (neg ? -1 : 1) * (exp10 < 0 ? mant / scale : mant * scale);
  return std::isfinite(*out);
}

bool integer(Json v, int lo, int hi, int* out) {
  double d;
  if (!number(v, &d) || d != std::floor(d) || d < lo || d > hi) return false;
  *out = int(d);
  return true;
}

bool is_str(Json v, const char* s) {
  std::size_t n = std::strlen(s);
  return v.ok() && std::size_t(v.end - v.p) == n + 2 && *v.p == '"' && std::memcmp(v.p + 1, s, n) == 0;
}

bool is_true(Json v) { return v.ok() && v.end - v.p == 4 && std::memcmp(v.p, "true", 4) == 0; }

bool shape3(Json v, int* c, int* h, int* w) {
  int n = length(v);
  *h = *w = 1;
  if (n == 1) return integer(at(v, 0), 1, 1 << 24, c);
  return n == 3 && integer(at(v, 0), 1, 1 << 16, c) && integer(at(v, 1), 1, 1 << 16, h) &&
         integer(at(v, 2), 1, 1 << 16, w);
}

// ------------------------------------------------------------------------------- the loader

// What the loader keeps of one initializer: its data span and shape, not its name (~64 bytes).
struct Slot {
  Span data;  // raw_data, or packed float_data
  std::int64_t dims[4] = {0};
  int ndim = 0;  // 5: more than 4 dimensions (never a valid shape here)
  std::uint64_t data_type = 0;
  bool present = false, external = false, raw = false;
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (int i = 0; i < ndim && i < 4; ++i) n *= dims[i];
    return n;
  }
};

// What the graph's nodes say about each layer, to check the metadata against (the loader runs the
// architecture of the metadata, so metadata and graph must not disagree silently).
struct Facts {
  bool conv[MAX_LAYERS] = {false}, dense[MAX_LAYERS] = {false}, readout = false;
  int kernel[MAX_LAYERS] = {0}, pad[MAX_LAYERS] = {0};
  Pool pool[MAX_LAYERS] = {};
  Span conv_out[MAX_LAYERS];
  float slope = -1.0f;  // alpha of the HardSigmoid nodes (-1: none seen)
  bool slopes_agree = true;
};

// Every node of the graph counted: by op type in the main graph (0) and in the Loop's body (1), each
// reference to a weight by its layer, the attributes each op may carry and their values where the
// step depends on them. check_graph() compares it with the graph the architecture implies, so that
// no added, removed or rewired node and no edited attribute goes unnoticed.
enum Op : std::uint8_t {
  OP_CONV,
  OP_MAXPOOL,
  OP_AVGPOOL,
  OP_FLATTEN,
  OP_GEMM,
  OP_ADD,
  OP_HARDSIGMOID,
  OP_MATMUL,
  OP_RESHAPE,
  OP_SHAPE,
  OP_MAXUNPOOL,
  OP_CONVT,
  OP_PAD,
  OP_SUB,
  OP_ABS,
  OP_REDUCEMAX,
  OP_MAX,
  OP_LESS,
  OP_NOT,
  OP_IDENTITY,
  OP_CONCAT,
  OP_CONSTOFSHAPE,
  OP_LOOP,
  OP_OTHER,
  N_OPS
};
const char* const OP_NAMES[N_OPS] = {
    "Conv",        "MaxPool",  "AveragePool", "Flatten",         "Gemm",      "Add",
    "HardSigmoid", "MatMul",   "Reshape",     "Shape",           "MaxUnpool", "ConvTranspose",
    "Pad",         "Sub",      "Abs",         "ReduceMax",       "Max",       "Less",
    "Not",         "Identity", "Concat",      "ConstantOfShape", "Loop",      "another op"};
// The attributes each op may carry (space separated): anything else is an edit.
const char* const OP_ATTRS[N_OPS] = {"kernel_shape pads",
                                     "kernel_shape strides",
                                     "kernel_shape strides",
                                     "axis",
                                     "transB",
                                     "",
                                     "alpha beta",
                                     "",
                                     "",
                                     "start end",
                                     "kernel_shape strides",
                                     "kernel_shape pads strides group",
                                     "",
                                     "",
                                     "",
                                     "keepdims",
                                     "",
                                     "",
                                     "",
                                     "",
                                     "axis",
                                     "value",
                                     "body",
                                     ""};

struct Census {
  std::uint16_t ops[2][N_OPS] = {};
  std::uint8_t refs_w[MAX_LAYERS] = {0}, refs_wb[MAX_LAYERS] = {0}, refs_b[MAX_LAYERS] = {0}, refs_ro_w = 0,
               refs_ro_b = 0;
  int kernel_of[MAX_LAYERS] = {0}, pad_of[MAX_LAYERS] = {0};  // every Conv / ConvTranspose on a layer's weights
  bool kp_differ[MAX_LAYERS] = {false};
  char bad[96] = {0};  // the first node that no export writes, said in words
};

bool in_list(const char* list, Span name) {
  for (const char* p = list; *p;) {
    const char* e = p;
    while (*e && *e != ' ') ++e;
    if (std::size_t(e - p) == name.n && std::memcmp(p, name.p, name.n) == 0) return true;
    p = *e ? e + 1 : e;
  }
  return false;
}

void note_bad(Census* c, const char* what, Span op) {
  if (c->bad[0] == 0)
    std::snprintf(c->bad, sizeof(c->bad), "%s %.*s", what, int(op.n < 40 ? op.n : 40),
                  reinterpret_cast<const char*>(op.p));
}

// Everything scan() finds, kept on the caller's stack (about 4 KB): no static state, so two
// threads may load at once.
struct Found {
  Span meta_version, meta_arch, meta_pre, meta_T;
  Slot weight[MAX_LAYERS], bias[MAX_LAYERS], weight_b[MAX_LAYERS], ro_w, ro_b;
  bool want_b[MAX_LAYERS] = {false};  // the architecture says the layer has backward weights
  bool duplicate = false;
  Facts facts;
  Census census;
};

// "layer<N><suffix>" -> N - 1, else -1.
int layer_of(Span s, const char* suffix) {
  const std::size_t sl = std::strlen(suffix);
  if (s.n < 6 + sl || std::memcmp(s.p, "layer", 5) != 0 || std::memcmp(s.p + s.n - sl, suffix, sl) != 0) return -1;
  int n = 0;
  for (std::size_t i = 5; i < s.n - sl; ++i) {
    if (s.p[i] < '0' || s.p[i] > '9' || n > MAX_LAYERS) return -1;
    n = n * 10 + (s.p[i] - '0');
  }
  return n >= 1 && n <= MAX_LAYERS && s.n - sl > 5 ? n - 1 : -1;
}

void note_tensor(const Tensor& t, Found* f) {
  Slot* slot = nullptr;
  int n;
  if (t.name.eq("readout.weight"))
    slot = &f->ro_w;
  else if (t.name.eq("readout.bias"))
    slot = &f->ro_b;
  else if ((n = layer_of(t.name, ".weight")) >= 0)
    slot = &f->weight[n];
  else if ((n = layer_of(t.name, ".bias")) >= 0)
    slot = &f->bias[n];
  else if ((n = layer_of(t.name, ".weight_b")) >= 0)
    slot = &f->weight_b[n];
  if (slot == nullptr) return;
  if (slot->present) f->duplicate = true;
  slot->present = true;
  slot->external = t.external;
  slot->data_type = t.data_type;
  slot->raw = t.raw.n > 0;
  slot->data = t.raw.n ? t.raw : t.floats;
  slot->ndim = t.ndim > 4 ? 5 : t.ndim;
  for (int i = 0; i < t.ndim && i < 4; ++i) slot->dims[i] = t.dims[i];
}

// AttributeProto: name, and its int / float / ints / graph values.
struct Attr {
  Span name, graph;
  std::int64_t i = 0, ints[4] = {0};
  int n_ints = 0;
  float f = 0.0f;
  bool has_graph = false;
};

bool parse_attr(Span s, Attr* a) {
  Reader r{s.p, s.p + s.n};
  while (!r.done()) {
    std::uint32_t fld, w;
    std::uint64_t v;
    if (!r.key(&fld, &w)) return false;
    if (fld == 1 && w == 2) {
      if (!r.bytes(&a->name)) return false;
    } else if (fld == 2 && w == 5) {
      if (r.end - r.p < 4) return false;
      std::memcpy(&a->f, r.p, 4);
      r.p += 4;
    } else if (fld == 3 && w == 0) {
      if (!r.varint(&v)) return false;
      a->i = std::int64_t(v);
    } else if (fld == 6 && w == 2) {
      if (!r.bytes(&a->graph)) return false;
      a->has_graph = true;
    } else if (fld == 8 && w == 0) {
      if (!r.varint(&v)) return false;
      if (a->n_ints < 4) a->ints[a->n_ints] = std::int64_t(v);
      ++a->n_ints;
    } else if (fld == 8 && w == 2) {
      Span ps;
      if (!r.bytes(&ps)) return false;
      Reader pr{ps.p, ps.p + ps.n};
      while (!pr.done()) {
        if (!pr.varint(&v)) return false;
        if (a->n_ints < 4) a->ints[a->n_ints] = std::int64_t(v);
        ++a->n_ints;
      }
    } else if (!r.skip(w)) {
      return false;
    }
  }
  return true;
}

bool scan_graph(Span graph, Found* f, int depth);

// kernel_shape [k, k] -> k, else -1; pads [p, p, p, p] (or none) -> p, else -1.
int square_kernel(const Attr& a) {
  return a.n_ints == 2 && a.ints[0] == a.ints[1] && a.ints[0] < 64 ? int(a.ints[0]) : -1;
}
int same_pad(const Attr& a) {
  if (a.n_ints == 0) return 0;
  const bool same = a.n_ints == 4 && a.ints[0] == a.ints[1] && a.ints[0] == a.ints[2] && a.ints[0] == a.ints[3];
  return same && a.ints[0] < 64 ? int(a.ints[0]) : -1;
}

// NodeProto: records what a Conv / Gemm / pool / HardSigmoid node says about the layers, and walks
// into subgraphs (the Loop's body holds the step).
bool scan_node(Span s, Found* f, int depth) {
  Span inputs[3], output, op, attr_names[8];
  int n_in = 0, n_out = 0, n_attr = 0;
  Attr kernel, pads, alpha, beta, strides, group;
  bool has_alpha = false, has_beta = false;
  Census& c = f->census;
  Reader r{s.p, s.p + s.n};
  while (!r.done()) {
    std::uint32_t fld, w;
    if (!r.key(&fld, &w)) return false;
    Span v;
    if (fld == 1 && w == 2) {
      if (!r.bytes(&v)) return false;
      if (n_in < 3) inputs[n_in] = v;
      ++n_in;
      int l;  // every reference to a weight, at any input position
      if ((l = layer_of(v, ".weight")) >= 0)
        ++c.refs_w[l];
      else if ((l = layer_of(v, ".weight_b")) >= 0)
        ++c.refs_wb[l];
      else if ((l = layer_of(v, ".bias")) >= 0)
        ++c.refs_b[l];
      else if (v.eq("readout.weight"))
        ++c.refs_ro_w;
      else if (v.eq("readout.bias"))
        ++c.refs_ro_b;
    } else if (fld == 2 && w == 2) {
      if (!r.bytes(&v)) return false;
      if (n_out++ == 0) output = v;
    } else if (fld == 4 && w == 2) {
      if (!r.bytes(&op)) return false;
    } else if (fld == 5 && w == 2) {
      Attr a;
      if (!r.bytes(&v) || !parse_attr(v, &a)) return false;
      if (a.has_graph && !scan_graph(a.graph, f, depth + 1)) return false;
      if (a.name.eq("kernel_shape")) kernel = a;
      if (a.name.eq("pads")) pads = a;
      if (a.name.eq("alpha")) {
        alpha = a;
        has_alpha = true;
      }
      if (a.name.eq("beta")) {
        beta = a;
        has_beta = true;
      }
      if (a.name.eq("strides")) strides = a;
      if (a.name.eq("group")) group = a;
      if (n_attr < 8) attr_names[n_attr] = a.name;
      ++n_attr;
    } else if (!r.skip(w)) {
      return false;
    }
  }
  int o = 0;
  while (o < OP_OTHER && !op.eq(OP_NAMES[o])) ++o;
  if (depth > 1) note_bad(&c, "a nested subgraph holds", op);
  if (o == OP_OTHER) note_bad(&c, "an op that no export writes:", op);
  ++c.ops[depth > 0 ? 1 : 0][o];
  if (n_attr > 8) note_bad(&c, "too many attributes on", op);
  for (int i = 0; i < n_attr && i < 8; ++i)
    if (!in_list(OP_ATTRS[o], attr_names[i])) note_bad(&c, "an attribute no export writes on", op);
  const bool pool2 = kernel.n_ints == 2 && kernel.ints[0] == 2 && kernel.ints[1] == 2 && strides.n_ints == 2 &&
                     strides.ints[0] == 2 && strides.ints[1] == 2;
  if ((o == OP_MAXPOOL || o == OP_AVGPOOL || o == OP_MAXUNPOOL) && !pool2)
    note_bad(&c, "a 2x2 window of stride 2 is not what says", op);
  if (o == OP_HARDSIGMOID && (!has_beta || beta.f != 0.0f)) note_bad(&c, "beta 0 is not what says", op);
  if ((o == OP_GEMM || o == OP_FLATTEN) && n_attr != 1) note_bad(&c, "transB=1 / axis=1 is not what says", op);
  if ((o == OP_CONV || o == OP_CONVT) && n_in >= 2) {  // every (transposed) conv on a layer's weights
    int l = layer_of(inputs[1], ".weight");
    if (l < 0) l = layer_of(inputs[1], ".weight_b");
    if (l >= 0) {  // has that layer's kernel and padding; a transposed one no stride or group
      if (o == OP_CONVT && (strides.n_ints != 0 || group.name.n != 0))
        note_bad(&c, "a stride or group on the transposed conv of a layer:", op);
      const int kk = square_kernel(kernel), pp = same_pad(pads);
      if (c.kernel_of[l] == 0) {
        c.kernel_of[l] = kk;
        c.pad_of[l] = pp;
      } else if (c.kernel_of[l] != kk || c.pad_of[l] != pp)
        c.kp_differ[l] = true;
    } else if (o == OP_CONVT && !(pool2 && group.i >= 1 && pads.n_ints == 0)) {
      note_bad(&c, "the average-pool adjoint is not a 2x2 stride-2 grouped", op);
    }
  }
  Facts& k = f->facts;
  const int n = n_in >= 2 ? layer_of(inputs[1], ".weight") : -1;
  if (op.eq("Conv") && n >= 0) {
    k.conv[n] = true;
    k.kernel[n] = square_kernel(kernel);
    k.pad[n] = same_pad(pads);
    k.conv_out[n] = output;
  } else if (op.eq("Gemm") && n >= 0) {
    k.dense[n] = true;
  } else if (op.eq("Gemm") && n_in >= 2 && inputs[1].eq("readout.weight")) {
    k.readout = true;
  } else if ((op.eq("MaxPool") || op.eq("AveragePool")) && n_in >= 1) {
    for (int l = 0; l < MAX_LAYERS; ++l)
      if (k.conv_out[l].n > 0 && k.conv_out[l].n == inputs[0].n &&
          std::memcmp(k.conv_out[l].p, inputs[0].p, inputs[0].n) == 0)
        k.pool[l] = op.eq("MaxPool") ? Pool::Max : Pool::Avg;
  } else if (op.eq("HardSigmoid")) {
    const float a = has_alpha ? alpha.f : 0.2f;  // ONNX's default alpha
    if (k.slope >= 0.0f && a != k.slope) k.slopes_agree = false;
    k.slope = a;
  }
  return true;
}

bool scan_graph(Span graph, Found* f, int depth) {
  if (depth > 4) return false;
  Reader g{graph.p, graph.p + graph.n};
  while (!g.done()) {
    std::uint32_t fld, w;
    Span v;
    if (!g.key(&fld, &w)) return false;
    if (fld == 1 && w == 2) {
      if (!g.bytes(&v) || !scan_node(v, f, depth)) return false;
    } else if (fld == 5 && w == 2) {
      Tensor t;
      if (!g.bytes(&v) || !parse_tensor(v, &t)) return false;
      if (depth == 0) note_tensor(t, f);
    } else if (!g.skip(w)) {
      return false;
    }
  }
  return true;
}

Status scan(const std::uint8_t* buf, std::size_t len, Found* f, Model* m) {
  if (buf == nullptr || len == 0) return fail(m, ERR_ARGUMENT, "empty model buffer");
  Reader r{buf, buf + len};
  Span graph;
  bool has_graph = false;
  while (!r.done()) {
    std::uint32_t fld, w;
    if (!r.key(&fld, &w))
      return fail(m, ERR_PARSE, "not an ONNX protobuf (bad field key at byte %ld)", long(r.p - buf));
    if (fld == 7 && w == 2) {
      if (has_graph) return fail(m, ERR_PARSE, "two graphs in the file: not an ep_compile export");
      if (!r.bytes(&graph)) return fail(m, ERR_PARSE, "truncated graph");
      has_graph = true;
    } else if (fld == 14 && w == 2) {
      Span entry, key, value;
      if (!r.bytes(&entry)) return fail(m, ERR_PARSE, "truncated metadata entry");
      Reader er{entry.p, entry.p + entry.n};
      while (!er.done()) {
        std::uint32_t ef, ew;
        if (!er.key(&ef, &ew)) return fail(m, ERR_PARSE, "bad metadata entry");
        if (ef == 1 && ew == 2) {
          if (!er.bytes(&key)) return fail(m, ERR_PARSE, "bad metadata key");
        } else if (ef == 2 && ew == 2) {
          if (!er.bytes(&value)) return fail(m, ERR_PARSE, "bad metadata value");
        } else if (!er.skip(ew))
          return fail(m, ERR_PARSE, "bad metadata entry");
      }
      if (key.eq("ep_compile.format_version")) f->meta_version = value;
      if (key.eq("ep_compile.architecture")) f->meta_arch = value;
      if (key.eq("ep_compile.preprocessing")) f->meta_pre = value;
      if (key.eq("ep_compile.default_T")) f->meta_T = value;
    } else if (!r.skip(w)) {
      return fail(m, ERR_PARSE, "not an ONNX protobuf (truncated or corrupt at byte %ld)", long(r.p - buf));
    }
  }
  if (!has_graph) return fail(m, ERR_PARSE, "no graph in the file: not an ONNX model");
  if (!scan_graph(graph, f, 0))
    return fail(m, ERR_PARSE, "corrupt graph (a node, attribute or initializer does not parse)");
  if (f->duplicate) return fail(m, ERR_PARSE, "an initializer name appears twice; %s", REEXPORT);
  return OK;
}

Status check_tensor(const Slot& t, const std::int64_t* want, int ndim, const char* what, Model* m) {
  if (t.external) return fail(m, ERR_UNSUPPORTED, "%s: external data is not supported; %s", what, REEXPORT);
  if (t.data_type != 1)
    return fail(m, ERR_UNSUPPORTED, "%s: data type %d, expected float32; %s", what, int(t.data_type), REEXPORT);
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
  if (std::uint64_t(t.data.n) != std::uint64_t(t.numel()) * 4)
    return fail(m, ERR_SHAPE, "%s holds %zu bytes of data for %lld floats; %s", what, t.data.n, (long long)t.numel(),
                REEXPORT);
  return OK;
}

const float* place(const Slot& t, float* arena, std::size_t* used) {
  float* dst = arena + *used;
  std::memcpy(dst, t.data.p, t.data.n);  // little-endian float32 on every target here
  *used += std::size_t(t.numel());
  return dst;
}

// Layer n's weight (and backward weight when the architecture says so) of shape wd, and its bias.
Status check_layer_tensors(const Found& f, int n, const std::int64_t* wd, int ndim, bool wb, Model* m) {
  if (!f.weight[n].present || !f.bias[n].present)
    return fail(m, ERR_MISSING, "initializer layer%d.weight or .bias is missing; %s", n + 1, REEXPORT);
  char what[40];
  std::snprintf(what, sizeof(what), "layer%d.weight", n + 1);
  if (Status s = check_tensor(f.weight[n], wd, ndim, what, m)) return s;
  const std::int64_t bd[1] = {wd[0]};
  std::snprintf(what, sizeof(what), "layer%d.bias", n + 1);
  if (Status s = check_tensor(f.bias[n], bd, 1, what, m)) return s;
  if (!wb) return OK;
  std::snprintf(what, sizeof(what), "layer%d.weight_b", n + 1);
  if (!f.weight_b[n].present) return fail(m, ERR_MISSING, "initializer %s is missing; %s", what, REEXPORT);
  return check_tensor(f.weight_b[n], wd, ndim, what, m);
}

const char* pool_name(Pool p) { return p == Pool::Max ? "max" : p == Pool::Avg ? "avg" : "none"; }

Status parse_architecture(Found& f, Model* m) {
  if (f.meta_version.n == 0)
    return fail(m, ERR_MISSING, "no ep_compile.format_version metadata: not an ep_compile export; %s", REEXPORT);
  char v[16] = {0};
  std::memcpy(v, f.meta_version.p, f.meta_version.n < 15 ? f.meta_version.n : 15);
  if (std::atoi(v) != FORMAT_VERSION || f.meta_version.n > 15)
    return fail(
        m, ERR_VERSION,
        "file has format version '%s', this runtime reads %d; %s (or rebuild the runtime from the same ep_compile)", v,
        FORMAT_VERSION, REEXPORT);
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
    if (!f.ro_w.present || !f.ro_b.present)
      return fail(m, ERR_MISSING, "readout.weight or readout.bias is missing; %s", REEXPORT);
    if (Status s = check_tensor(f.ro_w, wd, 2, "readout.weight", m)) return s;
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

// The census of the graph the architecture implies (onnx_export.build_onnx, node for node) against
// the census of the file: every op counted in the main graph and the Loop's body, every weight
// referenced as often as the step reads it, backward weights exactly where the metadata has them.
Status check_graph(const Found& f, const Model* m_in, Model* m) {
  const Census& c = f.census;
  if (c.bad[0]) return fail(m, ERR_SHAPE, "the graph has %s: not the step the metadata describes; %s", c.bad, REEXPORT);
  std::uint16_t want[2][N_OPS] = {};
  const int L = m_in->n_layers;
  for (int n = 0; n < L; ++n) {
    const Layer& l = m_in->layers[n];
    const bool wb = f.want_b[n], conv = l.kind == Kind::Conv;
    if (conv) {
      ++want[1][OP_CONV];
      if (l.pool == Pool::Max) ++want[1][OP_MAXPOOL];
      if (l.pool == Pool::Avg) ++want[1][OP_AVGPOOL];
    } else {
      ++want[1][OP_FLATTEN];
      ++want[1][OP_GEMM];
    }
    if (n >= 1) {  // the feedback of layer n into state n - 1
      ++want[1][OP_ADD];
      if (!conv) {
        ++want[1][OP_MATMUL];
        if (m_in->layers[n - 1].kind == Kind::Conv) ++want[1][OP_RESHAPE];
      } else {
        if (l.pool == Pool::Max) {
          want[1][OP_SHAPE] += 1;
          want[1][OP_MAXUNPOOL] += 1;
          if (wb) {
            ++want[1][OP_CONV];
            ++want[1][OP_MAXPOOL];
          }
        }
        if (l.pool == Pool::Avg) {
          ++want[1][OP_CONVT];
          if (l.conv_h != 2 * l.out_h || l.conv_w != 2 * l.out_w) ++want[1][OP_PAD];
        }
        ++want[1][OP_CONVT];
      }
    }
    const std::uint8_t w_refs = std::uint8_t(1 + (n >= 1 && !wb ? 1 : 0));
    const std::uint8_t wb_refs = std::uint8_t(wb ? 1 + (conv && l.pool == Pool::Max ? 1 : 0) : 0);
    if (c.refs_w[n] != w_refs || c.refs_wb[n] != wb_refs || c.refs_b[n] != 1)
      return fail(m, ERR_SHAPE,
                  "layer %d: the graph reads layer%d.weight %d, weight_b %d and bias %d times, the metadata's step %d, "
                  "%d and 1 (has_weight_b: %s): metadata and graph disagree; %s",
                  n + 1, n + 1, c.refs_w[n], c.refs_wb[n], c.refs_b[n], w_refs, wb_refs, wb ? "true" : "false",
                  REEXPORT);
    if (c.kp_differ[n])
      return fail(m, ERR_SHAPE, "layer %d: its convolutions in the graph differ in kernel or padding; %s", n + 1,
                  REEXPORT);
  }
  for (int n = L; n < MAX_LAYERS; ++n)
    if (c.refs_w[n] || c.refs_wb[n] || c.refs_b[n])
      return fail(m, ERR_SHAPE, "the graph reads weights of a layer %d the metadata does not have; %s", n + 1,
                  REEXPORT);
  want[1][OP_HARDSIGMOID] = std::uint16_t(L);
  want[1][OP_SUB] = want[1][OP_ABS] = want[1][OP_REDUCEMAX] = want[1][OP_IDENTITY] = std::uint16_t(L);
  want[1][OP_MAX] = L > 1 ? 1 : 0;
  want[1][OP_LESS] = want[1][OP_NOT] = 1;
  ++want[1][OP_ADD];  // the step counter
  want[0][OP_SHAPE] = 1;
  want[0][OP_CONCAT] = want[0][OP_CONSTOFSHAPE] = std::uint16_t(L);
  want[0][OP_LOOP] = want[0][OP_IDENTITY] = 1;
  if (m_in->readout) want[0][OP_FLATTEN] = want[0][OP_GEMM] = 1;
  const std::uint8_t ro = m_in->readout ? 1 : 0;
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
  return OK;
}

Status build(const std::uint8_t* buf, std::size_t len, float* arena, std::size_t arena_floats, Model* m,
             std::size_t* needed) {
  Found f;  // on this call's stack (~4 KB): reentrant
  if (Status s = scan(buf, len, &f, m)) return s;
  if (Status s = parse_architecture(f, m)) return s;
  if (Status s = check_graph(f, m, m)) return s;
  std::uint64_t total = 0;  // each tensor <= 2^28 floats: 64 bits cannot overflow
  for (int n = 0; n < m->n_layers; ++n) {
    total += std::uint64_t(f.weight[n].numel()) * (f.want_b[n] ? 2 : 1) + std::uint64_t(f.bias[n].numel());
  }
  if (m->readout) total += std::uint64_t(f.ro_w.numel() + f.ro_b.numel());
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
    L.weight = place(f.weight[n], arena, &used);
    L.bias = place(f.bias[n], arena, &used);
    L.weight_b = f.want_b[n] ? place(f.weight_b[n], arena, &used) : nullptr;
  }
  if (m->readout) {
    m->readout_w = place(f.ro_w, arena, &used);
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

// ------------------------------------------------------------------------------- kernels

namespace {

// C (m x n) = A (m x kk) . B (kk x n), B and C row-major with leading dimension n; A[i][k] is
// a[i * ai + k * ak] (a plain or a transposed weight matrix). Every output is summed over k in
// ascending order from 0 in its own vector lane, as a plain triple loop would: tile shapes and vector
// widths change the speed, never the bits, so with -ffp-contract=off every build and every CPU
// (SSE2, AVX2, AVX-512, NEON, Cortex-M) gives the same result. Register tiles use GCC/Clang vector
// extensions, which each target lowers to its own registers (scalar code where it has none).

// The reference loop: an mr x nr block of C (leading dimension n), every output over k in order. It
// is the whole GEMM on a core without vectors, and the edges the register tiles leave elsewhere.
void gemm_ref(float* c, const float* a, std::size_t ai, std::size_t ak, const float* b, std::size_t n, int kk, int mr,
              int nr) {
  for (int i = 0; i < mr; ++i)
    for (int j = 0; j < nr; ++j) {
      float acc = 0.0f;
      for (int k = 0; k < kk; ++k) acc += a[i * ai + std::size_t(k) * ak] * b[std::size_t(k) * n + j];
      c[i * n + j] = acc;
    }
}

#ifndef EP_SCALAR_GEMM
#define EP_INLINE inline __attribute__((always_inline))

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
                            int kk) {
    const std::size_t ld = std::size_t(n);
    if (ai == 1 && m >= W) {  // a transposed weight: vectors along the rows of C
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
      const bool more = k0 > 0;
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
    if (j0 < n) gemm_ref(c + j0, a, ai, ak, b + j0, ld, kk, m, n - j0);
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
#define EP_DISPATCH 1
__attribute__((target("avx512f"))) void gemm_avx512(float* c, const float* a, std::size_t ai, std::size_t ak,
                                                    const float* b, int m, int n, int kk) {
  Gemm<64, 8, 8>::run(c, a, ai, ak, b, m, n, kk);
}
__attribute__((target("avx2"))) void gemm_avx2(float* c, const float* a, std::size_t ai, std::size_t ak, const float* b,
                                               int m, int n, int kk) {
  Gemm<32, 6, 6>::run(c, a, ai, ak, b, m, n, kk);
}
#endif

void gemm(float* c, const float* a, std::size_t ai, std::size_t ak, const float* b, int m, int n, int kk) {
#ifdef EP_DISPATCH
  if (__builtin_cpu_supports("avx512f")) return gemm_avx512(c, a, ai, ak, b, m, n, kk);
  if (__builtin_cpu_supports("avx2")) return gemm_avx2(c, a, ai, ak, b, m, n, kk);
#endif
#ifdef EP_SCALAR_GEMM
  gemm_ref(c, a, ai, ak, b, std::size_t(n), kk, m, n);
#else
  Native::run(c, a, ai, ak, b, m, n, kk);
#endif
}

}  // namespace

// The output columns ow whose input column ow + kw - pad lies inside [0, wd): [*lo, *hi).
void valid_cols(int wc, int wd, int kw, int pad, int* lo, int* hi) {
  *lo = std::min(wc, std::max(0, pad - kw));
  *hi = std::max(*lo, std::min(wc, wd + pad - kw));
}

void conv2d(float* out, const float* in, const float* w, const float* b, int cin, int h, int wd, int cout, int k,
            int pad, float* col) {
  const int hc = h + 2 * pad - k + 1, wc = wd + 2 * pad - k + 1, npix = hc * wc, rows = cin * k * k;
  for (int ci = 0; ci < cin; ++ci)  // im2col: col (cin*k*k, hc*wc), rows of contiguous copies
    for (int kh = 0; kh < k; ++kh)
      for (int kw = 0; kw < k; ++kw) {
        float* c = col + std::size_t((ci * k + kh) * k + kw) * npix;
        int lo, hi;
        valid_cols(wc, wd, kw, pad, &lo, &hi);
        for (int oh = 0; oh < hc; ++oh) {
          float* cr = c + oh * wc;
          const int ih = oh + kh - pad;
          if (ih < 0 || ih >= h) {
            std::fill(cr, cr + wc, 0.0f);
            continue;
          }
          const float* src = in + (std::size_t(ci) * h + ih) * wd + (lo + kw - pad);  // input column of ow = lo
          std::fill(cr, cr + lo, 0.0f);
          std::copy(src, src + (hi - lo), cr + lo);
          std::fill(cr + hi, cr + wc, 0.0f);
        }
      }
  gemm(out, w, std::size_t(rows), 1, col, cout, npix, rows);  // out (cout, npix) = w (cout, rows) . col
  if (b != nullptr)
    for (int co = 0; co < cout; ++co)
      for (int j = 0; j < npix; ++j) out[std::size_t(co) * npix + j] += b[co];
}

void conv2d_transpose(float* out, const float* in, const float* w, int cout, int hc, int wc, int cin, int h, int wd,
                      int k, int pad, float* col) {
  const int npix = hc * wc, rows = cin * k * k;
  gemm(col, w, 1, std::size_t(rows), in, rows, npix, cout);  // col (rows, npix) = w^T (rows, cout) . in
  std::fill(out, out + std::size_t(cin) * h * wd, 0.0f);
  for (int ci = 0; ci < cin; ++ci)  // col2im: scatter-add into (cin, h, wd), each element in (kh, kw) order
    for (int kh = 0; kh < k; ++kh)
      for (int kw = 0; kw < k; ++kw) {
        const float* c = col + std::size_t((ci * k + kh) * k + kw) * npix;
        int lo, hi;
        valid_cols(wc, wd, kw, pad, &lo, &hi);
        for (int oh = 0; oh < hc; ++oh) {
          const int ih = oh + kh - pad;
          if (ih < 0 || ih >= h) continue;
          float* dst = out + (std::size_t(ci) * h + ih) * wd + (lo + kw - pad);  // input column of ow = lo
          const float* cr = c + oh * wc + lo;
          for (int j = 0; j < hi - lo; ++j) dst[j] += cr[j];
        }
      }
}

void maxpool2x2(float* out, std::int32_t* idx, const float* in, int c, int h, int w) {
  const int ph = h / 2, pw = w / 2;
  for (int ch = 0; ch < c; ++ch)
    for (int oh = 0; oh < ph; ++oh) {
      const float* r0 = in + (std::size_t(ch) * h + 2 * oh) * w;
      const float* r1 = r0 + w;
      float* o = out + (std::size_t(ch) * ph + oh) * pw;
      std::int32_t* ix = idx + (std::size_t(ch) * ph + oh) * pw;
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
    }
}

void maxunpool2x2(float* out, const float* in, const std::int32_t* idx, int c, int h, int w) {
  const int ph = h / 2, pw = w / 2;
  for (std::size_t i = 0; i < std::size_t(c) * h * w; ++i) out[i] = 0.0f;
  for (int ch = 0; ch < c; ++ch)
    for (int p = 0; p < ph * pw; ++p)
      out[std::size_t(ch) * h * w + idx[std::size_t(ch) * ph * pw + p]] = in[std::size_t(ch) * ph * pw + p];
}

void avgpool2x2(float* out, const float* in, int c, int h, int w) {
  const int ph = h / 2, pw = w / 2;
  for (int ch = 0; ch < c; ++ch)
    for (int oh = 0; oh < ph; ++oh)
      for (int ow = 0; ow < pw; ++ow) {
        const float* q = in + (std::size_t(ch) * h + 2 * oh) * w + 2 * ow;
        out[(std::size_t(ch) * ph + oh) * pw + ow] = (q[0] + q[1] + q[w] + q[w + 1]) / 4.0f;
      }
}

void avgunpool2x2(float* out, const float* in, int c, int h, int w) {
  const int ph = h / 2, pw = w / 2;
  for (std::size_t i = 0; i < std::size_t(c) * h * w; ++i) out[i] = 0.0f;
  for (int ch = 0; ch < c; ++ch)
    for (int oh = 0; oh < ph; ++oh)
      for (int ow = 0; ow < pw; ++ow) {
        const float v = in[(std::size_t(ch) * ph + oh) * pw + ow] / 4.0f;
        float* q = out + (std::size_t(ch) * h + 2 * oh) * w + 2 * ow;
        q[0] = v;
        q[1] = v;
        q[w] = v;
        q[w + 1] = v;
      }
}

void dense(float* out, const float* in, const float* w, const float* b, int n_in, int n_out) {
  for (int o = 0; o < n_out; ++o) {
    float acc = 0.0f;
    const float* wr = w + std::size_t(o) * n_in;
    for (int i = 0; i < n_in; ++i) acc += wr[i] * in[i];
    out[o] = acc + (b != nullptr ? b[o] : 0.0f);
  }
}

void dense_transpose(float* out, const float* in, const float* w, int n_in, int n_out) {
  for (int i = 0; i < n_in; ++i) out[i] = 0.0f;
  for (int o = 0; o < n_out; ++o) {
    const float a = in[o];
    const float* wr = w + std::size_t(o) * n_in;
    for (int i = 0; i < n_in; ++i) out[i] += a * wr[i];
  }
}

// ------------------------------------------------------------------------------- the iteration

namespace {

struct Work {  // views into the caller's workspace, laid out by carve()
  float* cur[MAX_LAYERS];
  float* next[MAX_LAYERS];
  float* drive[MAX_LAYERS];
  std::int32_t* idx[MAX_LAYERS];
  std::int32_t* idx_b[MAX_LAYERS];
  float *conv, *col, *unpool, *fb;
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
  std::size_t off = 0, conv = 1, col = 1, fb = 1;
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
    w->idx_b[n] = reinterpret_cast<std::int32_t*>(take(L.pool == Pool::Max && L.weight_b ? s : 0));
    if (L.kind == Kind::Conv) {
      conv = std::max(conv, std::size_t(L.conv_size()));
      ok = ok && mul(col_rows(L), std::size_t(L.conv_size() / L.conv_c), &rows_pix);
      col = std::max(col, rows_pix);
    }
    fb = std::max(fb, std::size_t(L.in_size()));
  }
  w->conv = reinterpret_cast<float*>(take(conv));
  w->col = reinterpret_cast<float*>(take(col));
  w->unpool = reinterpret_cast<float*>(take(conv));
  w->fb = reinterpret_cast<float*>(take(fb));
  return ok ? off : 0;
}

// P(w * pre) for one image; max-pool indices into idx (when pooling is max).
void forward(const Layer& L, const float* pre, const float* weight, const float* bias, float* out, std::int32_t* idx,
             const Work& w) {
  if (L.kind == Kind::Dense) {
    dense(out, pre, weight, bias, int(L.in_size()), L.out_c);
    return;
  }
  float* u = L.pool == Pool::None ? out : w.conv;
  conv2d(u, pre, weight, bias, L.in_c, L.in_h, L.in_w, L.conv_c, L.kernel, L.padding, w.col);
  if (L.pool == Pool::Max) maxpool2x2(out, idx, u, L.conv_c, L.conv_h, L.conv_w);
  if (L.pool == Pool::Avg) avgpool2x2(out, u, L.conv_c, L.conv_h, L.conv_w);
}

// The adjoint of layer L applied to its post-synaptic state, into w.fb (the pre-synaptic shape).
void feedback(const Layer& L, const float* post, const std::int32_t* idx, const Work& w) {
  const float* wt = L.weight_b ? L.weight_b : L.weight;
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
  conv2d_transpose(w.fb, g, wt, L.conv_c, L.conv_h, L.conv_w, L.in_c, L.in_h, L.in_w, L.kernel, L.padding, w.col);
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

// One step; input_drive_ready: the first layer's drive and pooling indices (functions of x alone)
// are still in the workspace from an earlier step of this run, so they are not computed again.
Status step_impl(const Model& m, const float* x, int batch, void* workspace, std::size_t workspace_len, float* residual,
                 bool input_drive_ready) {
  Work w;
  if (x == nullptr || residual == nullptr) return ERR_ARGUMENT;
  if (!layout(m, batch, workspace, workspace_len, &w))
    return workspace_bytes(m, batch) == 0 && m.n_layers > 0 && batch > 0 ? ERR_TOO_LARGE : ERR_ARGUMENT;
  const int L = m.n_layers;
  const std::size_t in_size = std::size_t(m.in_c) * m.in_h * m.in_w;
  for (int b = 0; b < batch; ++b) {  // bottom-up drives and pooling indices, from s_t
    for (int n = input_drive_ready ? 1 : 0; n < L; ++n) {
      const Layer& Ly = m.layers[n];
      const std::size_t os = std::size_t(Ly.out_size()) * b, is = std::size_t(Ly.in_size()) * b;
      const float* pre = n == 0 ? x + in_size * b : w.cur[n - 1] + is;
      forward(Ly, pre, Ly.weight, Ly.bias, w.drive[n] + os, Ly.pool == Pool::Max ? w.idx[n] + os : nullptr, w);
      if (Ly.weight_b != nullptr && Ly.pool == Pool::Max)  // the backward conv's own indices
        forward(Ly, pre, Ly.weight_b, nullptr, w.unpool, w.idx_b[n] + os, w);
    }
  }
  float res = 0.0f;
  bool nan = false;
  for (int b = 0; b < batch; ++b) {
    for (int n = 0; n < L; ++n) {
      const Layer& Ly = m.layers[n];
      const std::size_t sz = std::size_t(Ly.out_size()), os = sz * b;
      const float* fb = nullptr;
      if (n + 1 < L) {  // top-down drive through the next layer's adjoint
        const Layer& up = m.layers[n + 1];
        const std::size_t us = std::size_t(up.out_size()) * b;
        const std::int32_t* idx = up.pool == Pool::Max ? (up.weight_b ? w.idx_b[n + 1] : w.idx[n + 1]) + us : nullptr;
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
          nan = true;
        else if (d > res)
          res = d;
        w.next[n][os + i] = s;
      }
    }
  }
  for (int n = 0; n < L; ++n) std::memcpy(w.cur[n], w.next[n], 4 * std::size_t(m.layers[n].out_size()) * batch);
  *residual = nan ? NAN : res;
  return nan ? ERR_NONFINITE : OK;
}

}  // namespace

Status step(const Model& m, const float* x, int batch, void* workspace, std::size_t workspace_len, float* residual) {
  return step_impl(m, x, batch, workspace, workspace_len, residual, false);
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
    Status s = step_impl(m, x, batch, workspace, workspace_len, &res, t > 0);
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
