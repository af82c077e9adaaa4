// Bare-metal demo: a trained digits model linked into flash as its .onnx bytes, a few embedded test
// images; prints each prediction and the steps used. No heap: _sbrk below refuses every request, so
// any allocation (ours or the C library's) would make the output wrong or empty.
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>

#include "ep_runtime.h"
#include "model_data.h"  // kModel[], kModelSize, kImages[][], kNumImages, kArenaFloats, kMaxSteps, kTol

extern "C" void* _sbrk(std::ptrdiff_t) {
  errno = ENOMEM;
  return reinterpret_cast<void*>(-1);
}

static float g_arena[kArenaFloats];
alignas(16) static unsigned char g_work[24 * 1024];
static ep::Model g_model;

int main() {
  std::setvbuf(stdout, nullptr, _IONBF, 0);  // unbuffered: stdio needs no buffer from the heap
  ep::Status s = ep::load(kModel, kModelSize, g_arena, kArenaFloats, &g_model);
  if (s != ep::OK) {
    std::printf("load failed: %s\n", g_model.error);
    return 2;
  }
  if (ep::workspace_bytes(g_model, 1) > sizeof(g_work)) {
    std::printf("workspace too small: %u bytes needed\n", unsigned(ep::workspace_bytes(g_model, 1)));
    return 3;
  }
  for (int i = 0; i < kNumImages; ++i) {
    float scores[ep::MAX_CLASSES > 16 ? 16 : ep::MAX_CLASSES];
    int steps = 0;
    float residual = 0;
    s = ep::run(g_model, kImages[i], 1, kMaxSteps, kTol, g_work, sizeof(g_work), scores, &steps, &residual);
    if (s != ep::OK) return 4;
    int best = 0;
    for (int c = 1; c < g_model.n_classes; ++c)
      if (scores[c] > scores[best]) best = c;
    std::printf("image %d: class %d, steps %d\n", i, best, steps);
  }
  return 0;
}
