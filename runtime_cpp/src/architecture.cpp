// The architecture of the metadata, read against what the graph scan found: the format version, the
// chain layers and skips with their conv geometry (stride, window, output_padding), the states'
// activations and update classes, and each interaction's initializers. See docs/onnx.md.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "internal.h"

namespace ep {
namespace detail {

namespace {

const char* pool_name(Pool p) { return p == Pool::Max ? "max" : p == Pool::Avg ? "avg" : "none"; }

// An optional integer field of d in [lo, hi] (absent: def).
bool field(Json d, const char* key, int lo, int hi, int def, int* out) {
  const Json v = get(d, key);
  if (!v.ok()) {
    *out = def;
    return true;
  }
  return integer(v, lo, hi, out);
}

// Interaction i's metadata entry d (chain layer or skip) into L, read against the graph's facts: it
// reads a (c, h, w) state (the input or state src) and writes out_shape; version 3 adds its stride,
// pooling window, bias and the states it links.
Status parse_interaction(Found& f, Json d, int i, int version, int c, int h, int w, Layer* L, Model* m) {
  char name[16];
  interaction_name(*m, i, name, sizeof(name));
  const int s = slot_of(*m, i);
  int ic, ih, iw;
  if (!shape3(get(d, "in_shape"), &ic, &ih, &iw) || !shape3(get(d, "out_shape"), &L->out_c, &L->out_h, &L->out_w))
    return fail(m, ERR_PARSE, "%s: malformed shapes in the metadata", name);
  if (ic != c || ih != h || iw != w)
    return fail(m, ERR_SHAPE, "%s input %dx%dx%d is not the %dx%dx%d of the state it reads; %s", name, ic, ih, iw, c, h,
                w, REEXPORT);
  L->in_c = c;
  L->in_h = h;
  L->in_w = w;
  const bool v3 = version >= 3;
  const Json bias = get(d, "bias");
  if (v3 && !is_true(bias) && !is_false(bias)) return fail(m, ERR_PARSE, "%s: bias is not true or false", name);
  f.want_bias[s] = !v3 || is_true(bias);
  const bool wb = is_true(get(d, "has_weight_b"));
  if (wb && L->src == 0) return fail(m, ERR_SHAPE, "%s reads the static input and cannot have backward weights", name);
  f.want_b[s] = wb;
  const Facts& k = f.facts;
  if (is_str(get(d, "kind"), "conv")) {
    L->kind = Kind::Conv;
    Json pool = get(d, "pool");
    L->pool = is_str(pool, "max")    ? Pool::Max
              : is_str(pool, "avg")  ? Pool::Avg
              : is_str(pool, "none") ? Pool::None
                                     : Pool(255);
    if (L->pool == Pool(255)) return fail(m, ERR_UNSUPPORTED, "%s: unknown pooling", name);
    L->stride = 1;  // versions 1-2: unit strides, 2 x 2 pools
    L->factor = 2;
    if (!integer(get(d, "kernel"), 1, 15, &L->kernel) || !integer(get(d, "padding"), 0, 15, &L->padding) ||
        (v3 &&
         (!field(d, "stride", 1, MAX_FACTOR, 1, &L->stride) || !field(d, "factor", 2, MAX_FACTOR, 2, &L->factor))))
      return fail(m, ERR_PARSE, "%s: kernel / padding / stride / factor missing or out of range", name);
    L->conv_c = L->out_c;
    const int span_h = h + 2 * L->padding - L->kernel, span_w = w + 2 * L->padding - L->kernel;
    L->conv_h = span_h < 0 ? 0 : span_h / L->stride + 1;
    L->conv_w = span_w < 0 ? 0 : span_w / L->stride + 1;
    L->out_pad_h = span_h < 0 ? 0 : span_h % L->stride;  // h - ((conv_h - 1) s - 2 pad + k)
    L->out_pad_w = span_w < 0 ? 0 : span_w % L->stride;
    const int f_ = L->pool == Pool::None ? 1 : L->factor;
    int cc, ch, cw;
    if (v3 && (!shape3(get(d, "conv_shape"), &cc, &ch, &cw) || cc != L->conv_c || ch != L->conv_h || cw != L->conv_w))
      return fail(m, ERR_SHAPE, "%s: conv_shape is not the %dx%dx%d a %dx%d conv of stride %d pad %d gives; %s", name,
                  L->conv_c, L->conv_h, L->conv_w, L->kernel, L->kernel, L->stride, L->padding, REEXPORT);
    if (L->conv_h < 1 || L->conv_w < 1 || L->conv_h / f_ != L->out_h || L->conv_w / f_ != L->out_w ||
        length(get(d, "out_shape")) != 3)
      return fail(m, ERR_SHAPE, "%s: conv %dx%d pad %d stride %d pool %s %dx%d on %dx%d gives no %dx%d state; %s", name,
                  L->kernel, L->kernel, L->padding, L->stride, pool_name(L->pool), f_, f_, h, w, L->out_h, L->out_w,
                  REEXPORT);
    const int kf = L->pool == Pool::None ? 0 : L->factor;
    if (!k.conv[s] || k.kernel[s] != L->kernel || k.pad[s] != L->padding || k.pool[s] != L->pool ||
        k.stride[s] != L->stride || (kf != 0 && k.factor[s] != kf))
      return fail(m, ERR_SHAPE,
                  "%s: the metadata says conv %dx%d pad %d stride %d pool %s %d, the graph's nodes say %s %dx%d pad %d "
                  "stride %d pool %s %d: metadata and graph disagree; %s",
                  name, L->kernel, L->kernel, L->padding, L->stride, pool_name(L->pool), kf,
                  k.conv[s] ? "conv" : "no conv", k.kernel[s], k.kernel[s], k.pad[s], k.stride[s], pool_name(k.pool[s]),
                  k.factor[s], REEXPORT);
    const std::int64_t wd[4] = {L->out_c, c, L->kernel, L->kernel};
    if (Status st = check_tensors(f, *m, i, wd, 4, m)) return st;
  } else if (is_str(get(d, "kind"), "dense")) {
    L->kind = Kind::Dense;
    if (length(get(d, "out_shape")) != 1) return fail(m, ERR_SHAPE, "%s: a dense layer has a flat output", name);
    if (!k.dense[s] || k.conv[s])
      return fail(m, ERR_SHAPE,
                  "%s: the metadata says dense, the graph's nodes do not: metadata and graph disagree; %s", name,
                  REEXPORT);
    const std::int64_t wd[2] = {L->out_c, std::int64_t(c) * h * w};
    if (Status st = check_tensors(f, *m, i, wd, 2, m)) return st;
  } else {
    return fail(m, ERR_UNSUPPORTED, "%s: unknown kind (conv and dense are supported)", name);
  }
  if (L->out_size() > MAX_ELEMENTS || L->conv_size() > MAX_ELEMENTS) return fail(m, ERR_SHAPE, "%s is too large", name);
  return OK;
}

// Version 3: the states' activations [slope, lo | null, hi | null] and the update classes (each state
// in one class; with more than one class no interaction links two states of a class).
Status parse_schedule(Json arch, Model* m) {
  const int L = m->n_layers;
  const Json acts = get(arch, "activations");
  if (length(acts) != L) return fail(m, ERR_PARSE, "activations: expected one [slope, lo, hi] per state (%d)", L);
  for (int n = 0; n < L; ++n) {
    const Json a = at(acts, n), lo = at(a, 1), hi = at(a, 2);
    double sl, l = -INFINITY, u = INFINITY;
    const bool ok =
        length(a) == 3 && number(at(a, 0), &sl) && sl > 0 && sl < 1e30 &&
        (is_null(lo) ? is_null(hi)
                     : number(lo, &l) && number(hi, &u) && l < u && std::fabs(l) < 1e30 && std::fabs(u) < 1e30);
    if (!ok)
      return fail(m, ERR_PARSE, "activations[%d] is not [slope > 0, lo, hi] with lo < hi (or null, null: no clamp); %s",
                  n, REEXPORT);
    m->act[n] = Activation{float(sl), float(l), float(u)};
  }
  const Json colours = get(arch, "colours");
  const int n_c = length(colours);
  if (n_c < 1 || n_c > L) return fail(m, ERR_PARSE, "colours: expected 1 to %d classes of states", L);
  bool seen[MAX_LAYERS] = {false};
  int placed = 0;
  for (int c = 0; c < n_c; ++c) {
    const Json cls = at(colours, c);
    const int n_s = length(cls);
    for (int j = 0; j < n_s; ++j) {
      int n;
      if (!integer(at(cls, j), 0, L - 1, &n) || seen[n])
        return fail(m, ERR_PARSE, "colours: class %d names a state twice or one outside 0..%d", c, L - 1);
      seen[n] = true;
      m->colour[n] = std::uint8_t(c);
      ++placed;
    }
    if (n_s < 1) return fail(m, ERR_PARSE, "colours: class %d is empty", c);
  }
  if (placed != L) return fail(m, ERR_PARSE, "colours: %d of the %d states are in a class", placed, L);
  m->n_colours = n_c;
  if (m->evenodd == (n_c == 1) && L > 1)
    return fail(m, ERR_SHAPE, "the schedule is %s but the colours give %d class(es); %s",
                m->evenodd ? "evenodd" : "sync", n_c, REEXPORT);
  if (n_c > 1)
    for (int i = 0; i < m->n_interactions(); ++i) {
      const Layer& l = m->interaction(i);
      if (l.src > 0 && m->colour[l.src - 1] == m->colour[l.dst - 1])
        return fail(m, ERR_SHAPE, "colours: states %d and %d share an interaction but class %d; %s", l.src, l.dst,
                    m->colour[l.src - 1], REEXPORT);
    }
  return OK;
}

}  // namespace

Status parse_architecture(Found& f, Model* m) {
  if (f.meta_version.n == 0)
    return fail(m, ERR_MISSING, "no ep_compile.format_version metadata: not an ep_compile export; %s", REEXPORT);
  char v[16] = {0};
  std::memcpy(v, f.meta_version.p, f.meta_version.n < 15 ? f.meta_version.n : 15);
  const int version = std::atoi(v);
  if (version < MIN_FORMAT_VERSION || version > FORMAT_VERSION || f.meta_version.n > 15)
    return fail(m, ERR_VERSION,
                "file has format version '%s', this runtime reads %d to %d; %s (or rebuild the runtime from the same "
                "ep_compile)",
                v, MIN_FORMAT_VERSION, FORMAT_VERSION, REEXPORT);
  m->version = version;
  if (f.meta_arch.n == 0) return fail(m, ERR_MISSING, "no ep_compile.architecture metadata; %s", REEXPORT);
  Json arch = value_span(reinterpret_cast<const char*>(f.meta_arch.p),
                         reinterpret_cast<const char*>(f.meta_arch.p) + f.meta_arch.n);
  Json layers = get(arch, "layers"), skips = get(arch, "skips");
  int n_layers = length(layers);
  const int n_skips = skips.ok() ? length(skips) : 0;
  double slope;
  if (!arch.ok() || n_layers < 1 || n_layers > MAX_LAYERS || !number(get(arch, "slope"), &slope) || slope <= 0 ||
      !integer(get(arch, "n_classes"), 2, MAX_CLASSES, &m->n_classes) ||
      !shape3(get(arch, "in_shape"), &m->in_c, &m->in_h, &m->in_w))
    return fail(m, ERR_PARSE, "architecture metadata is malformed or has %d layers (1..%d supported)", n_layers,
                MAX_LAYERS);
  if (n_skips < 0 || n_skips > MAX_SKIPS)
    return fail(m, ERR_PARSE, "architecture skips: %d entries (0..%d supported)", n_skips, MAX_SKIPS);
  if ((n_skips > 0 || get(arch, "activations").ok()) && version < 3)
    return fail(m, ERR_VERSION,
                "a graph net (skips, per-state activations) in a file of format version %d (it needs "
                "3); %s",
                version, REEXPORT);
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
  if (version < 3 && (k.slope < 0.0f || !k.slopes_agree || k.slope != m->slope))
    return fail(m, ERR_SHAPE,
                "the metadata's slope %g is not the graph's HardSigmoid alpha (%g): metadata and graph disagree; %s",
                slope, double(k.slope), REEXPORT);
  if (m->readout != k.readout)
    return fail(m, ERR_SHAPE,
                "the metadata says readout=%s, the graph %s a read-out Gemm: metadata and graph disagree; %s",
                m->readout ? "true" : "false", k.readout ? "has" : "has no", REEXPORT);
  m->n_layers = n_layers;
  int shapes[MAX_LAYERS + 1][3] = {{m->in_c, m->in_h, m->in_w}};  // state n's shape, 0 = the input
  for (int n = 0; n < n_layers; ++n) {
    Json d = at(layers, n);
    Layer& L = m->layers[n];
    L.src = n;
    L.dst = n + 1;
    int src, dst;
    if (version >= 3 && (!field(d, "src", 0, MAX_LAYERS, -1, &src) || !field(d, "dst", 0, MAX_LAYERS, -1, &dst) ||
                         src != n || dst != n + 1))
      return fail(m, ERR_PARSE, "layer %d: src / dst are not %d / %d (a chain layer)", n + 1, n, n + 1);
    if (Status s = parse_interaction(f, d, n, version, shapes[n][0], shapes[n][1], shapes[n][2], &L, m)) return s;
    shapes[n + 1][0] = L.out_c;
    shapes[n + 1][1] = L.out_h;
    shapes[n + 1][2] = L.out_w;
  }
  m->n_skips = n_skips;
  for (int j = 0; j < n_skips; ++j) {
    Json d = at(skips, j);
    Layer& S = m->skips[j];
    int index;
    if (!integer(get(d, "index"), j + 1, j + 1, &index) || !integer(get(d, "src"), 0, n_layers - 1, &S.src) ||
        !integer(get(d, "dst"), S.src + 1, n_layers, &S.dst))
      return fail(m, ERR_PARSE, "skip %d: index / src / dst missing or out of range (0 <= src < dst <= %d)", j + 1,
                  n_layers);
    const int* a = shapes[S.src];
    if (Status s = parse_interaction(f, d, n_layers + j, version, a[0], a[1], a[2], &S, m)) return s;
    const Layer& to = m->layers[S.dst - 1];
    if (S.out_c != to.out_c || S.out_h != to.out_h || S.out_w != to.out_w ||
        (S.kind == Kind::Dense) != (to.kind == Kind::Dense))
      return fail(m, ERR_SHAPE, "skip %d writes %dx%dx%d, state %d is %dx%dx%d; %s", j + 1, S.out_c, S.out_h, S.out_w,
                  S.dst, to.out_c, to.out_h, to.out_w, REEXPORT);
  }
  if (version >= 3) {
    if (Status s = parse_schedule(arch, m)) return s;
  } else {  // one hard sigmoid; sync: one class, even/odd: the layers 1, 3, ... then 2, 4, ...
    for (int n = 0; n < n_layers; ++n) {
      m->act[n] = Activation{m->slope, 0.0f, 1.0f};
      m->colour[n] = std::uint8_t(m->evenodd ? n % 2 : 0);
    }
    m->n_colours = m->evenodd && n_layers > 1 ? 2 : 1;
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

}  // namespace detail
}  // namespace ep
