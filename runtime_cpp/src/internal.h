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
bool shape3(Json v, int* c, int* h, int* w);

// ------------------------------------------------------------------------------- graph scan (census.cpp)

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
  OP_DEQUANT,
  OP_OTHER,
  N_OPS
};

struct Census {
  std::uint16_t ops[2][N_OPS] = {};
  std::uint8_t refs_w[MAX_LAYERS] = {0}, refs_wb[MAX_LAYERS] = {0}, refs_b[MAX_LAYERS] = {0}, refs_ro_w = 0,
               refs_ro_b = 0;
  int kernel_of[MAX_LAYERS] = {0}, pad_of[MAX_LAYERS] = {0};  // every Conv / ConvTranspose on a layer's weights
  bool kp_differ[MAX_LAYERS] = {false};
  char bad[96] = {0};  // the first node that no export writes, said in words
};

// An int8 weight W (format version 2): its initializers W_int8 and W_scale, the DequantizeLinear
// nodes that write W from them, and every node input that reads either.
struct Quantized {
  Slot q, scale;
  std::uint8_t dequantized = 0, refs = 0;
};

// Everything scan() finds, kept on the caller's stack (about 9 KB): no static state, so two
// threads may load at once.
struct Found {
  Span meta_version, meta_arch, meta_pre, meta_T;
  Slot weight[MAX_LAYERS], bias[MAX_LAYERS], weight_b[MAX_LAYERS], ro_w, ro_b;
  Quantized weight_q[MAX_LAYERS], weight_b_q[MAX_LAYERS], ro_w_q;
  bool want_b[MAX_LAYERS] = {false};  // the architecture says the layer has backward weights
  bool duplicate = false;
  Facts facts;
  Census census;
};

// Reads the file once: metadata spans, the initializers of the contract, the facts and the census.
Status scan(const std::uint8_t* buf, std::size_t len, Found* f, Model* m);
// The census of the graph the architecture of m_in implies against the census of the file.
Status check_graph(const Found& f, const Model* m_in, Model* m);

}  // namespace detail
}  // namespace ep
