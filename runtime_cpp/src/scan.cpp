// The graph scan: every node and initializer of the file read once, what the nodes say about each
// interaction and state (Facts), and a census of ops, weight references and attributes that
// check_graph (census.cpp) compares with the graph the metadata's architecture implies.
#include <cmath>
#include <cstdio>
#include <cstring>

#include "internal.h"

namespace ep {
namespace detail {

const char* const OP_NAMES[N_OPS] = {
    "Conv",        "MaxPool",  "AveragePool", "Flatten",         "Gemm",      "Add",
    "HardSigmoid", "MatMul",   "Reshape",     "Shape",           "MaxUnpool", "ConvTranspose",
    "Pad",         "Sub",      "Abs",         "ReduceMax",       "Max",       "Less",
    "Not",         "Identity", "Concat",      "ConstantOfShape", "Loop",      "DequantizeLinear",
    "Clip",        "Mul",      "another op"};

namespace {
// The attributes each op may carry (space separated): anything else is an edit.
const char* const OP_ATTRS[N_OPS] = {"kernel_shape pads strides",
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
                                     "kernel_shape pads strides group output_padding",
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
                                     "axis",
                                     "",
                                     "",
                                     ""};

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

// Digits [p, e) -> their value in [1, hi], else -1.
int number_in(const std::uint8_t* p, const std::uint8_t* e, int hi) {
  int n = 0;
  if (p >= e) return -1;
  for (; p < e; ++p) {
    if (*p < '0' || *p > '9' || n > hi) return -1;
    n = n * 10 + (*p - '0');
  }
  return n >= 1 && n <= hi ? n : -1;
}

// "layer<N><suffix>" -> N - 1, "skip<N><suffix>" -> SKIP0 + N - 1 (the interaction's slot), else -1.
int slot_of_name(Span s, const char* suffix) {
  const std::size_t sl = std::strlen(suffix);
  if (s.n <= sl || std::memcmp(s.p + s.n - sl, suffix, sl) != 0) return -1;
  const std::uint8_t* e = s.p + s.n - sl;
  if (s.n > 5 + sl && std::memcmp(s.p, "layer", 5) == 0) {
    const int n = number_in(s.p + 5, e, MAX_LAYERS);
    return n > 0 ? n - 1 : -1;
  }
  if (s.n > 4 + sl && std::memcmp(s.p, "skip", 4) == 0) {
    const int n = number_in(s.p + 4, e, MAX_SKIPS);
    return n > 0 ? SKIP0 + n - 1 : -1;
  }
  return -1;
}

// "body/s<N>_<k>" (the output of state N's activation, onnx_export._Step.sigma) -> N - 1, else -1.
int sigma_state(Span s) {
  if (s.n < 9 || std::memcmp(s.p, "body/s", 6) != 0) return -1;
  const std::uint8_t* e = s.p + s.n;
  const std::uint8_t* u = s.p + 6;
  while (u < e && *u != '_') ++u;
  const int n = number_in(s.p + 6, u, MAX_LAYERS);
  return n > 0 && number_in(u + 1, e, 1 << 30) > 0 ? n - 1 : -1;
}

// The int8 slots of the contract weight named s (readout.weight, layer<N>.weight, layer<N>.weight_b)
// followed by `suffix` ("" or "_int8" / "_scale"); nullptr for any other name.
Quantized* quantized_of(Span s, const char* suffix, Found* f) {
  const std::size_t sl = std::strlen(suffix);
  if (s.n <= sl || std::memcmp(s.p + s.n - sl, suffix, sl) != 0) return nullptr;
  const Span base{s.p, s.n - sl};
  int n;
  if (base.eq("readout.weight")) return &f->ro_w_q;
  if ((n = slot_of_name(base, ".weight")) >= 0) return &f->weight_q[n];
  if ((n = slot_of_name(base, ".weight_b")) >= 0) return &f->weight_b_q[n];
  return nullptr;
}

// "W<suffix>" == s, for the name W of a DequantizeLinear output.
bool named(Span s, Span w, const char* suffix) {
  const std::size_t sl = std::strlen(suffix);
  return s.n == w.n + sl && std::memcmp(s.p, w.p, w.n) == 0 && std::memcmp(s.p + w.n, suffix, sl) == 0;
}

void note_tensor(const Tensor& t, Found* f) {
  Slot* slot = nullptr;
  int n;
  Quantized* q;
  if ((q = quantized_of(t.name, "_int8", f)) != nullptr)
    slot = &q->q;
  else if ((q = quantized_of(t.name, "_scale", f)) != nullptr)
    slot = &q->scale;
  else if (t.name.eq("readout.weight"))
    slot = &f->ro_w;
  else if (t.name.eq("readout.bias"))
    slot = &f->ro_b;
  else if ((n = slot_of_name(t.name, ".weight")) >= 0)
    slot = &f->weight[n];
  else if ((n = slot_of_name(t.name, ".bias")) >= 0)
    slot = &f->bias[n];
  else if ((n = slot_of_name(t.name, ".weight_b")) >= 0)
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

// A float32 scalar of the loop body (an activation's slope or bounds): kept by name.
void note_const(const Tensor& t, Found* f) {
  Facts& k = f->facts;
  const Span d = t.raw.n ? t.raw : t.floats;
  if (t.data_type != 1 || t.ndim != 0 || d.n != 4 || k.n_const >= MAX_CONSTS) return;
  k.const_name[k.n_const] = t.name;
  std::memcpy(&k.const_value[k.n_const], d.p, 4);
  ++k.n_const;
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
  Attr kernel, pads, alpha, beta, strides, group, axis, out_pad;
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
      if ((l = slot_of_name(v, ".weight")) >= 0)
        ++c.refs_w[l];
      else if ((l = slot_of_name(v, ".weight_b")) >= 0)
        ++c.refs_wb[l];
      else if ((l = slot_of_name(v, ".bias")) >= 0)
        ++c.refs_b[l];
      else if (v.eq("readout.weight"))
        ++c.refs_ro_w;
      else if (v.eq("readout.bias"))
        ++c.refs_ro_b;
      Quantized* q;  // an int8 weight or its scales
      if ((q = quantized_of(v, "_int8", f)) != nullptr || (q = quantized_of(v, "_scale", f)) != nullptr) ++q->refs;
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
      if (a.name.eq("axis")) axis = a;
      if (a.name.eq("output_padding")) out_pad = a;
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
  // a pooling window: f x f of stride f, 2 <= f <= MAX_FACTOR (counted per f)
  const int f_win = square_kernel(kernel);
  const bool window =
      f_win >= 2 && f_win <= MAX_FACTOR && strides.n_ints == 2 && strides.ints[0] == f_win && strides.ints[1] == f_win;
  if ((o == OP_MAXPOOL || o == OP_AVGPOOL || o == OP_MAXUNPOOL) && !window)
    note_bad(&c, "an f x f window of stride f is not what says", op);
  if ((o == OP_MAXPOOL || o == OP_AVGPOOL || o == OP_MAXUNPOOL) && window) ++c.pools[f_win];
  if (o == OP_HARDSIGMOID && (!has_beta || beta.f != 0.0f)) note_bad(&c, "beta 0 is not what says", op);
  if ((o == OP_GEMM || o == OP_FLATTEN) && n_attr != 1) note_bad(&c, "transB=1 / axis=1 is not what says", op);
  if (o == OP_DEQUANT) {  // W = DequantizeLinear(W_int8, W_scale, axis=0), W a contract weight
    Quantized* q = n_out == 1 ? quantized_of(output, "", f) : nullptr;
    if (q == nullptr || n_in != 2 || !named(inputs[0], output, "_int8") || !named(inputs[1], output, "_scale"))
      note_bad(&c, "a dequantization that is not W = DequantizeLinear(W_int8, W_scale):", op);
    else if (n_attr != 1 || axis.i != 0)
      note_bad(&c, "axis=0 (one scale per output channel) is not what says", op);
    else
      ++q->dequantized;
  }
  // strides [s, s] (absent: 1), else -1; output_padding [a, b] (absent: 0, 0)
  const int stride = strides.n_ints == 0 ? 1
                     : strides.n_ints == 2 && strides.ints[0] == strides.ints[1] && strides.ints[0] >= 1 &&
                             strides.ints[0] <= MAX_FACTOR
                         ? int(strides.ints[0])
                         : -1;
  const bool small_out_pad =
      out_pad.n_ints == 0 || (out_pad.n_ints == 2 && out_pad.ints[0] >= 0 && out_pad.ints[0] < MAX_FACTOR &&
                              out_pad.ints[1] >= 0 && out_pad.ints[1] < MAX_FACTOR);
  const int op_h = out_pad.n_ints == 2 && small_out_pad ? int(out_pad.ints[0]) : 0;
  const int op_w = out_pad.n_ints == 2 && small_out_pad ? int(out_pad.ints[1]) : 0;
  if ((o == OP_CONV || o == OP_CONVT) && n_in >= 2) {  // every (transposed) conv on an interaction's weights
    int l = slot_of_name(inputs[1], ".weight");
    if (l < 0) l = slot_of_name(inputs[1], ".weight_b");
    if (l >= 0) {  // has that interaction's kernel, padding and stride, no group
      if (group.name.n != 0 || stride < 0 || !small_out_pad || (o == OP_CONV && out_pad.n_ints != 0))
        note_bad(&c, "a group, an odd stride or output_padding on the conv of an interaction:", op);
      const int kk = square_kernel(kernel), pp = same_pad(pads);
      if (c.kernel_of[l] == 0) {
        c.kernel_of[l] = kk;
        c.pad_of[l] = pp;
        c.stride_of[l] = stride;
      } else if (c.kernel_of[l] != kk || c.pad_of[l] != pp || c.stride_of[l] != stride)
        c.kp_differ[l] = true;
      if (o == OP_CONVT) {
        if (c.seen_t[l] && (c.out_pad_of[l][0] != op_h || c.out_pad_of[l][1] != op_w)) c.kp_differ[l] = true;
        c.seen_t[l] = true;
        c.out_pad_of[l][0] = op_h;
        c.out_pad_of[l][1] = op_w;
      }
    } else if (o == OP_CONVT && !(window && group.i >= 1 && pads.n_ints == 0 && out_pad.n_ints == 0)) {
      note_bad(&c, "the average-pool adjoint is not an f x f stride-f grouped", op);
    } else if (o == OP_CONVT) {
      ++c.pools[f_win];
    }
  }
  Facts& k = f->facts;
  const int n = n_in >= 2 ? slot_of_name(inputs[1], ".weight") : -1;
  const int state = depth == 1 && n_out == 1 ? sigma_state(output) : -1;
  if (op.eq("Conv") && n >= 0) {
    k.conv[n] = true;
    k.kernel[n] = square_kernel(kernel);
    k.pad[n] = same_pad(pads);
    k.stride[n] = stride;
    k.conv_out[n] = output;
  } else if (op.eq("Gemm") && n >= 0) {
    k.dense[n] = true;
  } else if (op.eq("Gemm") && n_in >= 2 && inputs[1].eq("readout.weight")) {
    k.readout = true;
  } else if ((op.eq("MaxPool") || op.eq("AveragePool")) && n_in >= 1) {
    for (int l = 0; l < MAX_INTERACTIONS; ++l)
      if (k.conv_out[l].n > 0 && k.conv_out[l].n == inputs[0].n &&
          std::memcmp(k.conv_out[l].p, inputs[0].p, inputs[0].n) == 0) {
        k.pool[l] = op.eq("MaxPool") ? Pool::Max : Pool::Avg;
        k.factor[l] = window ? f_win : -1;
      }
  } else if (op.eq("Mul") && depth == 1 && n_in == 2 && n_out == 1 && k.n_mul < MAX_LAYERS) {
    k.mul_out[k.n_mul] = output;
    k.mul_by[k.n_mul] = inputs[1];
    ++k.n_mul;
  }
  if (op.eq("HardSigmoid")) {
    const float a = has_alpha ? alpha.f : 0.2f;  // ONNX's default alpha
    if (k.slope >= 0.0f && a != k.slope) k.slopes_agree = false;
    k.slope = a;
  }
  if (state >= 0 && (o == OP_HARDSIGMOID || o == OP_CLIP || o == OP_IDENTITY)) {  // state's activation
    Sigma& g = k.sigma[state];
    ++g.count;
    g.op = o == OP_HARDSIGMOID ? SIGMA_HARDSIGMOID : o == OP_CLIP ? SIGMA_CLIP : SIGMA_IDENTITY;
    g.alpha = has_alpha ? alpha.f : 0.2f;
    g.in = n_in >= 1 ? inputs[0] : Span();
    g.lo = n_in >= 2 ? inputs[1] : Span();
    g.hi = n_in >= 3 ? inputs[2] : Span();
    if (o == OP_CLIP && n_in != 3) note_bad(&c, "min and max are not what says", op);
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
      if (depth == 1) note_const(t, f);
    } else if (!g.skip(w)) {
      return false;
    }
  }
  return true;
}

}  // namespace

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

}  // namespace detail
}  // namespace ep
