// The graph scan: every node and initializer of the file read once, what the nodes say about each
// layer (Facts), and a census of ops, weight references and attributes that check_graph compares
// with the graph the metadata's architecture implies (onnx_export.build_onnx, node for node).
#include <cstdio>
#include <cstring>

#include "internal.h"

namespace ep {
namespace detail {

namespace {

const char* const OP_NAMES[N_OPS] = {
    "Conv",        "MaxPool",  "AveragePool", "Flatten",         "Gemm",      "Add",
    "HardSigmoid", "MatMul",   "Reshape",     "Shape",           "MaxUnpool", "ConvTranspose",
    "Pad",         "Sub",      "Abs",         "ReduceMax",       "Max",       "Less",
    "Not",         "Identity", "Concat",      "ConstantOfShape", "Loop",      "DequantizeLinear",
    "another op"};
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
                                     "axis",
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

// The int8 slots of the contract weight named s (readout.weight, layer<N>.weight, layer<N>.weight_b)
// followed by `suffix` ("" or "_int8" / "_scale"); nullptr for any other name.
Quantized* quantized_of(Span s, const char* suffix, Found* f) {
  const std::size_t sl = std::strlen(suffix);
  if (s.n <= sl || std::memcmp(s.p + s.n - sl, suffix, sl) != 0) return nullptr;
  const Span base{s.p, s.n - sl};
  int n;
  if (base.eq("readout.weight")) return &f->ro_w_q;
  if ((n = layer_of(base, ".weight")) >= 0) return &f->weight_q[n];
  if ((n = layer_of(base, ".weight_b")) >= 0) return &f->weight_b_q[n];
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
  Attr kernel, pads, alpha, beta, strides, group, axis;
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
  if (o == OP_DEQUANT) {  // W = DequantizeLinear(W_int8, W_scale, axis=0), W a contract weight
    Quantized* q = n_out == 1 ? quantized_of(output, "", f) : nullptr;
    if (q == nullptr || n_in != 2 || !named(inputs[0], output, "_int8") || !named(inputs[1], output, "_scale"))
      note_bad(&c, "a dequantization that is not W = DequantizeLinear(W_int8, W_scale):", op);
    else if (n_attr != 1 || axis.i != 0)
      note_bad(&c, "axis=0 (one scale per output channel) is not what says", op);
    else
      ++q->dequantized;
  }
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
    // its forward term: once a step, twice with the even/odd schedule for odd indices (the second
    // half recomputes it from the fresh even layers)
    const std::uint16_t fwd = m_in->evenodd && n % 2 == 1 ? 2 : 1;
    if (conv) {
      want[1][OP_CONV] += fwd;
      if (l.pool == Pool::Max) want[1][OP_MAXPOOL] += fwd;
      if (l.pool == Pool::Avg) want[1][OP_AVGPOOL] += fwd;
    } else {
      want[1][OP_FLATTEN] += fwd;
      want[1][OP_GEMM] += fwd;
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
    const std::uint8_t w_refs = std::uint8_t(fwd + (n >= 1 && !wb ? 1 : 0));
    const std::uint8_t wb_refs = std::uint8_t(wb ? 1 + (conv && l.pool == Pool::Max ? 1 : 0) : 0);
    if (c.refs_w[n] != w_refs || c.refs_wb[n] != wb_refs || c.refs_b[n] != fwd)
      return fail(m, ERR_SHAPE,
                  "layer %d: the graph reads layer%d.weight %d, weight_b %d and bias %d times, the metadata's step %d, "
                  "%d and %d (has_weight_b: %s): metadata and graph disagree; %s",
                  n + 1, n + 1, c.refs_w[n], c.refs_wb[n], c.refs_b[n], w_refs, wb_refs, fwd, wb ? "true" : "false",
                  REEXPORT);
    if (c.kp_differ[n])
      return fail(m, ERR_SHAPE, "layer %d: its convolutions in the graph differ in kernel or padding; %s", n + 1,
                  REEXPORT);
  }
  for (int n = L; n < MAX_LAYERS; ++n)
    if (c.refs_w[n] || c.refs_wb[n] || c.refs_b[n])
      return fail(m, ERR_SHAPE, "the graph reads weights of a layer %d the metadata does not have; %s", n + 1,
                  REEXPORT);
  // int8: every weight of the architecture written once by its DequantizeLinear, whose two inputs
  // nothing else reads; float32: no int8 weight and no dequantization anywhere.
  int n_q = 0;
  auto quantized = [&](const Quantized& q, bool exists, const char* what, int layer) {
    const int want_dq = exists && m_in->int8 ? 1 : 0;
    n_q += want_dq;
    if (q.dequantized == want_dq && q.refs == 2 * want_dq) return true;
    fail(m, ERR_SHAPE,
         "%s%.0d%s: the graph dequantizes it %d time(s) and reads its int8 data or scales %d time(s), the metadata's "
         "%s weights %d and %d: metadata and graph disagree; %s",
         layer ? "layer" : "readout", layer, what, q.dequantized, q.refs, m_in->int8 ? "int8" : "float32", want_dq,
         2 * want_dq, REEXPORT);
    return false;
  };
  for (int n = 0; n < MAX_LAYERS; ++n)
    if (!quantized(f.weight_q[n], n < L, ".weight", n + 1) ||
        !quantized(f.weight_b_q[n], n < L && f.want_b[n], ".weight_b", n + 1))
      return ERR_SHAPE;
  if (!quantized(f.ro_w_q, m_in->readout, ".weight", 0)) return ERR_SHAPE;
  want[0][OP_DEQUANT] = std::uint16_t(n_q);
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

}  // namespace detail
}  // namespace ep
