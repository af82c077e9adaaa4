// ep_runtime: the free phase of a trained Equilibrium Propagation ConvNet, from the .onnx file that
// ep_compile's export/to_onnx.py writes, in plain C++17 with no dependency beyond the standard library.
//
// Embedded use: no exceptions, no RTTI, no heap. The caller owns every buffer:
//   size_t n = 0;   ep::required_arena(buf, len, &n);          // floats needed for the weights
//   ep::Model m;    ep::load(buf, len, arena, n, &m);            // parse, check version and shapes
//   size_t ws = ep::workspace_bytes(m, batch);                   // run-time buffers, once
//   ep::run(m, x, batch, max_steps, tol, work, ws, scores, &steps, &residual);
// run() allocates nothing: the fixed-point loop works inside the caller's workspace.
// Every function returns a Status; on failure Model::error holds a one-line explanation.
//
// Weights are float32, or int8 with one float32 scale per output channel (format version 2, the
// CMSIS-NN / TFLite Micro layout: w = q * scale[c]). int8 weights are read in place from `buf`
// (no copy: a model linked into flash keeps them there), so `buf` must outlive the Model; the arena
// then holds only the biases and scales. The kernels dequantize a panel of rows at a time into the
// workspace and multiply in float32, so an int8 file gives the same bits as a float32 file holding
// its dequantized weights (what onnxruntime's DequantizeLinear computes).
//
// Graph nets (format version 3): beyond the chain of layers, skip interactions between any two
// states (pooled f x f, strided or dense, no bias), strided chain convs, and a clamp per state
// (hard sigmoid, ReLU6, clipped ReLU, identity); one step updates the colour classes of the state
// graph in turn (a class shares no interaction, so it is updated in place from the others).
#pragma once

#include <cstddef>
#include <cstdint>

namespace ep {

constexpr int FORMAT_VERSION = 3;      // the newest ep_compile.format_version this runtime reads
constexpr int MIN_FORMAT_VERSION = 1;  // 1: float32 weights; 2: int8 weights, even/odd; 3: graph nets
constexpr int MAX_LAYERS = 16;         // chain layers, one per state
constexpr int MAX_SKIPS = 16;          // skip interactions
constexpr int MAX_INTERACTIONS = MAX_LAYERS + MAX_SKIPS;
constexpr int MAX_FACTOR = 16;  // largest pooling window f and conv stride
constexpr int MAX_CLASSES = 1000;
constexpr std::int64_t MAX_ELEMENTS = std::int64_t(1) << 28;  // per tensor; larger files are rejected

enum Status : int {
  OK = 0,
  ERR_ARGUMENT = 1,     // a null pointer, a zero batch, a buffer too small
  ERR_IO = 2,           // the file cannot be read
  ERR_PARSE = 3,        // not a well-formed protobuf / ONNX model / JSON metadata
  ERR_VERSION = 4,      // a format version this runtime does not read
  ERR_SHAPE = 5,        // an initializer or layer shape that does not fit the architecture
  ERR_UNSUPPORTED = 6,  // a layer kind, pooling or option this runtime does not implement
  ERR_MISSING = 7,      // a required initializer or metadata entry is absent
  ERR_TOO_LARGE = 8,    // a size overflows this platform's size_t (e.g. a 32-bit core)
  ERR_NONFINITE = 9,    // a NaN / Inf input, or a NaN state (non-finite weights): not converged
};

const char* status_name(Status s);

enum class Kind : std::uint8_t { Conv, Dense };
enum class Pool : std::uint8_t { None, Max, Avg };

// A weight tensor of shape (out, ...): float32 (f), or int8 (q) with a scale per output channel.
struct Weights {
  const float* f = nullptr;
  const std::int8_t* q = nullptr;
  const float* scale = nullptr;                  // (out), with q
  Weights(const float* f_ = nullptr) : f(f_) {}  // NOLINT: a float pointer is a float32 tensor
  Weights(const std::int8_t* q_, const float* scale_) : q(q_), scale(scale_) {}
  bool present() const { return f != nullptr || q != nullptr; }
};

// One interaction (a chain layer or a skip): it reads state src (0: the input) and drives state dst.
struct Layer {
  Kind kind = Kind::Conv;
  Pool pool = Pool::None;
  int kernel = 0, padding = 0;
  int stride = 1, factor = 2;              // conv stride; the pooling window f (f x f, stride f)
  int out_pad_h = 0, out_pad_w = 0;        // input rows / columns a strided conv leaves out
  int src = 0, dst = 1;                    // states: src 0 is the input, n >= 1 is layer n's state
  int in_c = 0, in_h = 0, in_w = 0;        // pre-synaptic state (or input), dense: in_c = features
  int conv_c = 0, conv_h = 0, conv_w = 0;  // conv output before pooling
  int out_c = 0, out_h = 0, out_w = 0;     // post-synaptic state; dense: out_c = features
  Weights weight;                          // conv: (out, in, k, k); dense: (out, in)
  const float* bias = nullptr;             // (out), or none (a skip)
  Weights weight_b;                        // backward weights, same shape as weight, or none
  std::int64_t in_size() const { return std::int64_t(in_c) * in_h * in_w; }
  std::int64_t out_size() const { return std::int64_t(out_c) * out_h * out_w; }
  std::int64_t conv_size() const { return std::int64_t(conv_c) * conv_h * conv_w; }
};

// A state's activation clamp(slope * u, lo, hi); lo = -inf (and hi = +inf): no clamp.
struct Activation {
  float slope = 0.5f, lo = 0.0f, hi = 1.0f;
};

struct Model {
  int n_layers = 0;  // chain layers = states
  Layer layers[MAX_LAYERS];
  int n_skips = 0;  // skip interactions (format version 3)
  Layer skips[MAX_SKIPS];
  int n_classes = 0;
  int in_c = 0, in_h = 0, in_w = 0;
  float slope = 0.5f;                     // versions 1-2: every state's hard sigmoid clamp(slope * u, 0, 1)
  Activation act[MAX_LAYERS];             // per state (versions 1-2: the hard sigmoid of `slope`)
  int n_colours = 1;                      // update classes of one step, in order (1: synchronous)
  std::uint8_t colour[MAX_LAYERS] = {0};  // each state's class
  bool readout = false;                   // 'ce': scores = readout_w . s^L + readout_b
  bool int8 = false;                      // the weights are int8 (format version 2)
  bool evenodd = false;                   // the training's even/odd schedule (format version 2), else synchronous
  int version = 0;                        // the file's format version
  Weights readout_w;                      // (n_classes, size of the last state)
  const float* readout_b = nullptr;
  int default_steps = 0;         // ep_compile.default_T
  float mean[4] = {0, 0, 0, 0};  // preprocessing: (img/255 - mean) / (std_scale * std)
  float std[4] = {1, 1, 1, 1};
  float std_scale = 1.0f;
  bool has_preprocessing = false;  // mean and std were read for every input channel (<= 4)
  char error[256] = {0};           // why the last call failed
  int n_interactions() const { return n_layers + n_skips; }
  // Interaction i: the chain layers first, then the skips (ep_compile's model.all_specs order).
  const Layer& interaction(int i) const { return i < n_layers ? layers[i] : skips[i - n_layers]; }
};

// Floats of arena that load() will need for this file (weights, biases and scales; int8 weights
// stay in buf). On failure, diagnostics->error
// (when given) says why.
Status required_arena(const std::uint8_t* buf, std::size_t len, std::size_t* n_floats, Model* diagnostics = nullptr);
// Parse an ep_compile .onnx file held in memory; weights are copied into `arena` (aligned, so a
// model linked into flash as bytes works on cores that fault on unaligned float loads).
Status load(const std::uint8_t* buf, std::size_t len, float* arena, std::size_t arena_floats, Model* m);
// Bytes of workspace run() / step() need for `batch` images; 0 when the model is not loaded, batch
// < 1, or the size overflows size_t (every size is computed with overflow checks).
std::size_t workspace_bytes(const Model& m, int batch);
// The free phase: from s = 0, at most max_steps steps of the file's schedule (synchronous, or its
// colour classes in turn: even/odd for a chain, the layers 1, 3, ... from s_t, then 2, 4, ... from
// them), stopping after the first step
// whose largest state change is below tol (tol = 0: always max_steps). x: (batch, C, H, W)
// preprocessed; scores: (batch, n_classes). Deterministic, single-threaded, no allocation.
// A NaN / Inf input (checked first, steps = 0) or a NaN state stops with ERR_NONFINITE and residual
// NaN: it never "converges".
Status run(const Model& m, const float* x, int batch, int max_steps, float tol, void* workspace,
           std::size_t workspace_len, float* scores, int* steps, float* residual);

// --- the same iteration one step at a time (run() is built on these): the state lives in the
// workspace; reset_state() sets it to 0, step() applies one step of the dynamics (dynamics.step or
// step_evenodd of ep_compile with no nudge) and reports the largest change, state() reads a layer.
Status reset_state(const Model& m, int batch, void* workspace, std::size_t workspace_len);
Status step(const Model& m, const float* x, int batch, void* workspace, std::size_t workspace_len, float* residual);
// Layer n's state, (batch, out_c, out_h, out_w) row-major, inside the workspace; nullptr on bad arguments.
const float* state(const Model& m, int batch, const void* workspace, std::size_t workspace_len, int n);
// scores (batch, n_classes) from the current state: the read-out, or the output layer itself.
Status read_scores(const Model& m, int batch, const void* workspace, std::size_t workspace_len, float* scores);

// --- kernels: free functions with explicit buffers and dimensions (one image: no batch index).
// col: im2col buffer (cin * k * k x conv pixels floats); deq: int8 weights only, a panel of
// dequantized weights: DEQ_ROWS output channels x DEQ_K taps of the conv (DEQ_ROWS * min(cin * k * k,
// DEQ_K) floats), or DEQ_ROWS_T taps of its transpose (DEQ_ROWS_T * cout floats: two vectors of 16 per k).
constexpr int DEQ_ROWS = 24, DEQ_K = 256, DEQ_ROWS_T = 32;
// A conv of stride s writes (cout, (h + 2 pad - k) / s + 1, ...); its transpose writes the whole
// (cin, h, wd), so the rows a stride leaves out (ONNX's output_padding) get what reaches them: zeros.
void conv2d(float* out, const float* in, Weights w, const float* b, int cin, int h, int wd, int cout, int k, int pad,
            float* col, float* deq = nullptr, int stride = 1);
void conv2d_transpose(float* out, const float* in, Weights w, int cout, int hc, int wc, int cin, int h, int wd, int k,
                      int pad, float* col, float* deq = nullptr, int stride = 1);
// f x f windows of stride f over (c, h, w) (the last h % f rows and w % f columns in none);
// idx: each maximum's position in its (h, w) plane, the first in row-major order on ties (torch's).
void maxpool(float* out, std::int32_t* idx, const float* in, int c, int h, int w, int f);
void maxunpool(float* out, const float* in, const std::int32_t* idx, int c, int h, int w, int f);
void avgpool(float* out, const float* in, int c, int h, int w, int f);
void avgunpool(float* out, const float* in, int c, int h, int w, int f);
void dense(float* out, const float* in, Weights w, const float* b, int n_in, int n_out);
void dense_transpose(float* out, const float* in, Weights w, int n_in, int n_out);

}  // namespace ep
