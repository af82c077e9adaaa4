// Internal to the runtime: what its source files share (the file readers' types, what the graph
// scan finds, the error helper). Not part of the API: include ep_runtime.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "ep_runtime.h"

namespace ep {
namespace detail {

extern const char* const REEXPORT;  // the hint every refused file gets

// Writes the one-line explanation into m->error (when m is given) and returns s.
Status fail(Model* m, Status s, const char* fmt, ...) __attribute__((format(printf, 3, 4)));

// ------------------------------------------------------------------------------- protobuf (reader.cpp)

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

bool parse_tensor(Span s, Tensor* t);

// ------------------------------------------------------------------------------- JSON (reader.cpp)
// Scans the metadata text in place: no tree, no allocation, depth-limited.

struct Json {
  const char* p = nullptr;
  const char* end = nullptr;
  bool ok() const { return p != nullptr; }
};

Json value_span(const char* p, const char* e);
Json get(Json obj, const char* key);
Json at(Json arr, int i);
int length(Json arr);  // elements of an array, in one pass; -1 when malformed
bool number(Json v, double* out);
bool integer(Json v, int lo, int hi, int* out);
bool is_str(Json v, const char* s);
bool is_true(Json v);
bool is_false(Json v);
bool is_null(Json v);
bool shape3(Json v, int* c, int* h, int* w);

// ------------------------------------------------------------------------------- graph scan (scan.cpp)

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

// The initializers of interaction i sit in slot i (chain layer i: layer{i+1}.*) or SKIP0 + m (skip m:
// skip{m+1}.*), whatever the file's number of layers.
constexpr int SKIP0 = MAX_LAYERS;
inline int slot_of(const Model& m, int i) { return i < m.n_layers ? i : SKIP0 + (i - m.n_layers); }

// A state's activation as the graph's nodes write it (onnx_export._Step.sigma): HardSigmoid(alpha), or
// Clip / Identity of u or of Mul(u, slope), the node whose output is named body/s<n>_<k>.
enum SigmaOp : std::uint8_t { SIGMA_NONE, SIGMA_HARDSIGMOID, SIGMA_CLIP, SIGMA_IDENTITY };
struct Sigma {
  SigmaOp op = SIGMA_NONE;
  int count = 0;  // nodes writing state n's activation (one in a well-formed file)
  float alpha = 0.0f;
  Span in, lo, hi;  // Clip / Identity inputs: u (or the Mul's output), min, max
};
constexpr int MAX_CONSTS = 4 * MAX_LAYERS;

// What the graph's nodes say about each interaction and state, to check the metadata against (the
// loader runs the architecture of the metadata, so metadata and graph must not disagree silently).
struct Facts {
  bool conv[MAX_INTERACTIONS] = {false}, dense[MAX_INTERACTIONS] = {false}, readout = false;
  int kernel[MAX_INTERACTIONS] = {0}, pad[MAX_INTERACTIONS] = {0}, stride[MAX_INTERACTIONS] = {0};
  Pool pool[MAX_INTERACTIONS] = {};
  int factor[MAX_INTERACTIONS] = {0};  // the pooling window after the interaction's conv
  Span conv_out[MAX_INTERACTIONS];
  float slope = -1.0f;  // alpha of the HardSigmoid nodes (-1: none seen)
  bool slopes_agree = true;
  Sigma sigma[MAX_LAYERS];
  Span mul_out[MAX_LAYERS], mul_by[MAX_LAYERS];  // Mul(u, c) nodes of the loop body: output, c
  int n_mul = 0;
  Span const_name[MAX_CONSTS];  // float32 scalars among the loop body's initializers
  float const_value[MAX_CONSTS] = {0};
  int n_const = 0;
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
  OP_DEQUANT,
  OP_CLIP,
  OP_MUL,
  OP_OTHER,
  N_OPS
};

extern const char* const OP_NAMES[N_OPS];  // the op types, as ONNX spells them (scan.cpp)

struct Census {
  std::uint16_t ops[2][N_OPS] = {};
  std::uint8_t refs_w[MAX_INTERACTIONS] = {0}, refs_wb[MAX_INTERACTIONS] = {0}, refs_b[MAX_INTERACTIONS] = {0},
               refs_ro_w = 0, refs_ro_b = 0;
  // every Conv / ConvTranspose on an interaction's weights: kernel, padding, stride, and the
  // output_padding of its transposes
  int kernel_of[MAX_INTERACTIONS] = {0}, pad_of[MAX_INTERACTIONS] = {0}, stride_of[MAX_INTERACTIONS] = {0};
  int out_pad_of[MAX_INTERACTIONS][2] = {};
  bool kp_differ[MAX_INTERACTIONS] = {false}, seen_t[MAX_INTERACTIONS] = {false};
  std::uint16_t pools[MAX_FACTOR + 1] = {};  // pooling-window nodes (pools, unpools, avg adjoints) by window f
  char bad[96] = {0};                        // the first node that no export writes, said in words
};

// An int8 weight W (format version 2): its initializers W_int8 and W_scale, the DequantizeLinear
// nodes that write W from them, and every node input that reads either.
struct Quantized {
  Slot q, scale;
  std::uint8_t dequantized = 0, refs = 0;
};

// Everything scan() finds, kept on the caller's stack (about 20 KB): no static state, so two
// threads may load at once. Per interaction, indexed by slot_of.
struct Found {
  Span meta_version, meta_arch, meta_pre, meta_T;
  Slot weight[MAX_INTERACTIONS], bias[MAX_INTERACTIONS], weight_b[MAX_INTERACTIONS], ro_w, ro_b;
  Quantized weight_q[MAX_INTERACTIONS], weight_b_q[MAX_INTERACTIONS], ro_w_q;
  bool want_b[MAX_INTERACTIONS] = {false};  // the architecture says it has backward weights
  bool want_bias[MAX_INTERACTIONS] = {false};
  bool duplicate = false;
  Facts facts;
  Census census;
};

// Reads the file once (scan.cpp): metadata spans, the initializers of the contract, the facts and the census.
Status scan(const std::uint8_t* buf, std::size_t len, Found* f, Model* m);
// ------------------------------------------------------------------------------- the contract (architecture.cpp,
// loader.cpp)

// The metadata's architecture into m, checked against the scan's facts (architecture.cpp).
Status parse_architecture(Found& f, Model* m);
// An initializer of dtype float32 (int8: int8), shape `want` and that many elements of data.
Status check_tensor(const Slot& t, const std::int64_t* want, int ndim, const char* what, Model* m, bool int8 = false);
// A weight of shape wd: float32 `what`, or in an int8 model what_int8 and what_scale (no float32 `what`).
Status check_weight(const Slot& w, const Quantized& q, const std::int64_t* wd, int ndim, const char* what, Model* m);
// Interaction i's weight, bias (when it has one) and backward weight (when the metadata says so).
Status check_tensors(const Found& f, const Model& mm, int i, const std::int64_t* wd, int ndim, Model* m);

// "layer<n>" or "skip<m>" (1-based): interaction i's initializer prefix, for messages.
void interaction_name(const Model& m, int i, char* out, std::size_t n);
// The census of the graph the architecture of m_in implies against the census of the file (census.cpp).
Status check_graph(const Found& f, const Model* m_in, Model* m);

// ------------------------------------------------------------------------------- the schedule (census.cpp,
// iteration.cpp)

// One step as onnx_export._Step writes it and the runtime runs it: the colour classes in turn; at
// the start of each, forward(i) for every interaction i whose source state changed since its forward
// term was computed (stale[i]); then update(n) for each state n (0-based) of the class; then every
// interaction reading an updated state is stale. The census counts the nodes this writes; run()
// executes it, keeping `stale` from one step to the next.
template <class Forward, class Update>
void walk_step(const Model& m, bool* stale, Forward&& forward, Update&& update) {
  const int n_int = m.n_interactions();
  for (int c = 0; c < m.n_colours; ++c) {
    for (int i = 0; i < n_int; ++i)
      if (stale[i]) {
        forward(i);
        stale[i] = false;
      }
    for (int n = 0; n < m.n_layers; ++n)
      if (m.colour[n] == c) update(n);
    for (int i = 0; i < n_int; ++i) {
      const int src = m.interaction(i).src;
      if (src > 0 && m.colour[src - 1] == c) stale[i] = true;
    }
  }
}

}  // namespace detail
}  // namespace ep
