// libFuzzer target: load and run two steps, for models whose workspace is at most 64 KB (so each
// execution stays cheap and the kernels see every shape the loader accepts), under ASan and UBSan.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "ep_runtime.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  ep::Model m;
  std::size_t n = 0;
  if (ep::required_arena(data, size, &n, &m) != ep::OK || n > (std::size_t(1) << 16)) return 0;
  std::vector<float> arena(n + 1);
  if (ep::load(data, size, arena.data(), arena.size(), &m) != ep::OK) return 0;
  const std::size_t ws = ep::workspace_bytes(m, 1);
  const std::size_t in = std::size_t(m.in_c) * m.in_h * m.in_w;
  if (ws == 0 || ws > (std::size_t(1) << 16) || in > (std::size_t(1) << 14)) return 0;
  std::vector<unsigned char> work(ws + 16);
  void* w = reinterpret_cast<void*>((reinterpret_cast<std::uintptr_t>(work.data()) + 15) & ~std::uintptr_t(15));
  std::vector<float> x(in, 0.5f), scores(std::size_t(m.n_classes));
  int steps = 0;
  float res = 0;
  ep::run(m, x.data(), 1, 2, 0.0f, w, ws, scores.data(), &steps, &res);
  return 0;
}
