// ep_infer model.onnx input.npy [--max-steps N] [--tol t] [--out scores.npy]
// Runs the free phase of an exported EP network on a float32 (N, C, H, W) batch of preprocessed
// images; prints the predicted class of each image and the steps used; writes the scores.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "ep_runtime.h"
#include "npy.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: ep_infer model.onnx input.npy [--max-steps N] [--tol t] [--out scores.npy]\n");
    return 2;
  }
  int max_steps = -1;
  float tol = 0.0f;
  const char* out = nullptr;
  for (int i = 3; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--max-steps") && i + 1 < argc) max_steps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--tol") && i + 1 < argc) tol = std::strtof(argv[++i], nullptr);
    else if (!std::strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
    else { std::fprintf(stderr, "ep_infer: unknown argument %s\n", argv[i]); return 2; }
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
