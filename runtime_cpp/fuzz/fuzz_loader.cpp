// libFuzzer target: the loader alone (the attack surface: files from elsewhere), under AddressSanitizer
// and UBSan. Every input must return a status; a loaded model must report a consistent workspace size.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "ep_runtime.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  ep::Model m;
  std::size_t n = 0;
  if (ep::required_arena(data, size, &n, &m) != ep::OK || n > (std::size_t(1) << 22)) return 0;
  std::vector<float> arena(n + 1);
  if (ep::load(data, size, arena.data(), arena.size(), &m) != ep::OK) return 0;
  (void)ep::workspace_bytes(m, 1);
  (void)ep::workspace_bytes(m, 1 << 20);  // overflow-checked: 0 or a size, never a wrapped one
  return 0;
}
