// Bare-metal demo: a trained digits model linked into flash as its .onnx bytes, a few embedded test
// images; prints each prediction and the steps used. No heap: _sbrk below refuses every request, so
// any allocation (ours or the C library's) would make the output wrong or empty.
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>

#include "ep_runtime.h"
#include "model_data.h"  // kModel[], kModelSize, kImages[][], kNumImages, kArenaFloats, kWorkBytes,
                         // kNumClasses, kMaxSteps, kTol, kCheckBatch (build_firmware.py, from the model)

extern "C" void* _sbrk(std::ptrdiff_t) {
  errno = ENOMEM;
  return reinterpret_cast<void*>(-1);
}

// The MPS2 FPGA's 100 Hz counter (FPGAIO CLK100HZ). Under qemu -icount shift=0 one instruction is one
// ns of virtual time, so one tick is 10^7 instructions; without -icount it follows the host's clock.
static std::uint32_t ticks() { return *reinterpret_cast<volatile const std::uint32_t*>(0x40028014u); }

static float g_arena[kArenaFloats];
alignas(16) static unsigned char g_work[kWorkBytes];  // what ep::workspace_bytes(model, 1) said on the host
static float g_scores[kNumClasses];
static ep::Model g_model;

int main() {
  std::setvbuf(stdout, nullptr, _IONBF, 0);  // unbuffered: stdio needs no buffer from the heap
  ep::Status s = ep::load(kModel, kModelSize, g_arena, kArenaFloats, &g_model);
  if (s != ep::OK) {
    std::printf("load failed: %s\n", g_model.error);
    return 2;
  }
  if (kCheckBatch > 0) {  // only report what a batch needs on this 32-bit core: 0 = too large (overflow)
    const std::size_t need = ep::workspace_bytes(g_model, kCheckBatch);
    int steps = 0;
    float residual = 0;
    s = ep::run(g_model, kImages[0], kCheckBatch, 1, 0.0f, g_work, sizeof(g_work), g_scores, &steps, &residual);
    std::printf("batch %d: workspace_bytes %u, run: %s\n", kCheckBatch, unsigned(need), ep::status_name(s));
    return 0;
  }
  if (g_model.n_classes != kNumClasses || ep::workspace_bytes(g_model, 1) > sizeof(g_work)) {
    std::printf("workspace too small: %u bytes needed\n", unsigned(ep::workspace_bytes(g_model, 1)));
    return 3;
  }
  for (int i = 0; i < kNumImages; ++i) {
    float* scores = g_scores;
    int steps = 0;
    float residual = 0;
    const std::uint32_t t0 = ticks();
    s = ep::run(g_model, kImages[i], 1, kMaxSteps, kTol, g_work, sizeof(g_work), scores, &steps, &residual);
    const std::uint32_t t1 = ticks();
    if (s != ep::OK) return 4;
    int best = 0;
    for (int c = 1; c < g_model.n_classes; ++c)
      if (scores[c] > scores[best]) best = c;
    std::printf("image %d: class %d, steps %d, ticks %u\n", i, best, steps, unsigned(t1 - t0));
  }
  return 0;
}
