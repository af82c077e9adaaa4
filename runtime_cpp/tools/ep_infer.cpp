// ep_infer model.onnx input.npy [--raw] [--max-steps N] [--tol t] [--out scores.npy]
// Runs the free phase of an exported EP network on a float32 (N, C, H, W) batch of preprocessed
// images, or with --raw on uint8 images 0..255, preprocessed here by the model's metadata
// ((raw / 255 - mean) / (std_scale * std)); prints the predicted class of each image and the
// steps used; writes the scores.
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "ep_runtime.h"
#include "npy.h"

static bool parse_int(const char* s, long lo, long hi, int* out) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) return false;
  *out = int(v);
  return true;
}

static bool parse_float(const char* s, float* out) {
  char* end = nullptr;
  errno = 0;
  const float v = std::strtof(s, &end);
  if (errno != 0 || end == s || *end != '\0' || !std::isfinite(v) || v < 0.0f) return false;
  *out = v;
  return true;
}

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: ep_infer model.onnx input.npy [--raw] [--max-steps N] [--tol t] [--out scores.npy]\n");
    return 2;
  }
  int max_steps = -1;
  float tol = 0.0f;
  bool raw_input = false;
  const char* out = nullptr;
  for (int i = 3; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--max-steps") && i + 1 < argc) {
      if (!parse_int(argv[++i], 1, 1000000, &max_steps)) {
        std::fprintf(stderr, "ep_infer: --max-steps %s: expected an integer in [1, 1000000]\n", argv[i]);
        return 2;
      }
    } else if (!std::strcmp(argv[i], "--tol") && i + 1 < argc) {
      if (!parse_float(argv[++i], &tol)) {
        std::fprintf(stderr, "ep_infer: --tol %s: expected a finite number >= 0\n", argv[i]);
        return 2;
      }
    } else if (!std::strcmp(argv[i], "--raw")) {
      raw_input = true;
    } else if (!std::strcmp(argv[i], "--out") && i + 1 < argc) {
      out = argv[++i];
    } else {
      std::fprintf(stderr, "ep_infer: unknown argument %s\n", argv[i]);
      return 2;
    }
  }
  bool ok = false;
  std::vector<std::uint8_t> file = npy::read_file(argv[1], &ok);
  if (!ok) { std::fprintf(stderr, "ep_infer: cannot read %s\n", argv[1]); return 1; }
  std::size_t n_floats = 0;
  static ep::Model m;
  ep::Status s = ep::required_arena(file.data(), file.size(), &n_floats, &m);
  std::vector<float> arena(n_floats > 0 ? n_floats : 1);
  if (s == ep::OK) s = ep::load(file.data(), file.size(), arena.data(), arena.size(), &m);
  if (s != ep::OK) {
    std::fprintf(stderr, "ep_infer: %s: %s: %s\n", argv[1], ep::status_name(s), m.error);
    return 1;
  }
  npy::Array x;
  std::string err = npy::read(argv[2], &x);
  if (!err.empty()) { std::fprintf(stderr, "ep_infer: %s: %s\n", argv[2], err.c_str()); return 1; }
  if (x.shape.size() != 4 || x.shape[1] != m.in_c || x.shape[2] != m.in_h || x.shape[3] != m.in_w || x.shape[0] < 1) {
    std::fprintf(stderr, "ep_infer: %s: expected shape (N, %d, %d, %d)\n", argv[2], m.in_c, m.in_h, m.in_w);
    return 1;
  }
  if (x.uint8 != raw_input) {
    std::fprintf(stderr, "ep_infer: %s holds %s data: %s\n", argv[2], x.uint8 ? "uint8" : "float32",
                 x.uint8 ? "pass --raw to preprocess raw 0..255 images by the model's metadata"
                         : "--raw expects uint8 images 0..255; float32 input must be preprocessed already");
    return 2;
  }
  if (raw_input && !m.has_preprocessing) {
    std::fprintf(stderr, "ep_infer: --raw: %s has no usable ep_compile.preprocessing metadata (mean/std for %d channels); "
                 "re-export it with export/to_onnx.py or pass preprocessed float32 images\n", argv[1], m.in_c);
    return 2;
  }
  if (raw_input) {  // (raw / 255 - mean[c]) / (std_scale * std[c]), the contract in the metadata
    const std::size_t plane = std::size_t(m.in_h) * std::size_t(m.in_w);
    for (std::size_t i = 0; i < x.data.size(); ++i) {
      const int c = int((i / plane) % std::size_t(m.in_c));
      x.data[i] = (x.data[i] / 255.0f - m.mean[c]) / (m.std_scale * m.std[c]);
    }
  }
  const int batch = int(x.shape[0]);
  if (max_steps < 0) max_steps = m.default_steps > 0 ? m.default_steps : 250;
  std::vector<unsigned char> raw(ep::workspace_bytes(m, batch) + 16);
  void* work = reinterpret_cast<void*>((reinterpret_cast<std::uintptr_t>(raw.data()) + 15) & ~std::uintptr_t(15));
  std::vector<float> scores(std::size_t(batch) * m.n_classes);
  int steps = 0;
  float residual = 0.0f;
  s = ep::run(m, x.data.data(), batch, max_steps, tol, work, raw.size() - 16, scores.data(), &steps, &residual);
  if (s != ep::OK) { std::fprintf(stderr, "ep_infer: run: %s\n", ep::status_name(s)); return 1; }
  for (int b = 0; b < batch; ++b) {
    int best = 0;
    for (int c = 1; c < m.n_classes; ++c)
      if (scores[std::size_t(b) * m.n_classes + c] > scores[std::size_t(b) * m.n_classes + best]) best = c;
    std::printf("image %d: class %d\n", b, best);
  }
  std::printf("steps used: %d (max %d, tol %g), residual %g\n", steps, max_steps, double(tol), double(residual));
  if (out != nullptr && !npy::write(out, {batch, m.n_classes}, scores.data())) {
    std::fprintf(stderr, "ep_infer: cannot write %s\n", out);
    return 1;
  }
  return 0;
}
