// ep_bench model.onnx input.npy steps repeats: median milliseconds per run of the free phase
// (batch of the input, fixed steps), single thread. Used by benchmarks/runtime_latency.py.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "ep_runtime.h"
#include "npy.h"

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: ep_bench model.onnx input.npy steps repeats\n");
    return 2;
  }
  bool ok = false;
  auto file = npy::read_file(argv[1], &ok);
  static ep::Model m;
  std::size_t nf = 0;
  if (!ok || ep::required_arena(file.data(), file.size(), &nf, &m) != ep::OK) {
    std::fprintf(stderr, "ep_bench: %s\n", m.error);
    return 1;
  }
  std::vector<float> arena(nf);
  npy::Array x;
  if (ep::load(file.data(), file.size(), arena.data(), nf, &m) != ep::OK || !npy::read(argv[2], &x).empty()) return 1;
  const int batch = int(x.shape[0]), steps = std::atoi(argv[3]), repeats = std::atoi(argv[4]);
  std::vector<unsigned char> raw(ep::workspace_bytes(m, batch) + 16);
  void* w = reinterpret_cast<void*>((reinterpret_cast<std::uintptr_t>(raw.data()) + 15) & ~std::uintptr_t(15));
  std::vector<float> scores(std::size_t(batch) * m.n_classes);
  std::vector<double> ms;
  for (int r = 0; r < repeats; ++r) {
    int used = 0;
    float res = 0;
    auto t0 = std::chrono::steady_clock::now();
    ep::run(m, x.data.data(), batch, steps, 0.0f, w, raw.size() - 16, scores.data(), &used, &res);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  std::printf("%.6f\n", ms[ms.size() / 2]);
  return 0;
}
