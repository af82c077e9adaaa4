// ep_infer model.onnx input.npy [--raw] [--max-steps N] [--tol t] [--max-memory-mb M] [--out scores.npy]
// ep_infer --sizes model.onnx [batch]
// Runs the free phase of an exported EP network on a float32 (N, C, H, W) batch of preprocessed
// images, or with --raw on uint8 images 0..255, preprocessed here by the model's metadata
// ((raw / 255 - mean) / (std_scale * std)); prints the predicted class of each image and the
// steps used; writes the scores. Every buffer (file, weights, input, workspace) is counted against
// --max-memory-mb (default 2048) before it is allocated: a crafted file cannot make it allocate more.
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
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

static int infer(char** argv, bool raw_input, int max_steps, float tol, std::uint64_t cap, const char* out);

// Reads and loads the model at `path` into file / arena / m, each allocation first counted by
// within(bytes, what); says why on stderr and returns false on failure. Shared by --sizes and inference.
template <typename Within>
static bool load_model(const char* path, Within within, std::uint64_t room, std::vector<std::uint8_t>* file,
                       std::vector<float>* arena, ep::Model* m) {
  bool ok = false, too_big = false;
  *file = npy::read_capped(path, room, &ok, &too_big);  // never reads (or allocates) past the cap
  if (!ok) {
    std::fprintf(stderr, "ep_infer: cannot read %s\n", path);
    return false;
  }
  if (too_big || !within(file->size(), path)) {
    std::fprintf(stderr, "ep_infer: %s is larger than the %llu MB that --max-memory-mb leaves for it\n", path,
                 (unsigned long long)(room >> 20));
    return false;
  }
  std::size_t n_floats = 0;
  ep::Status s = ep::required_arena(file->data(), file->size(), &n_floats, m);
  if (s == ep::OK && !within(std::uint64_t(n_floats) * 4, "the weights")) return false;
  arena->assign(s == ep::OK && n_floats > 0 ? n_floats : 1, 0.0f);
  if (s == ep::OK) s = ep::load(file->data(), file->size(), arena->data(), arena->size(), m);
  if (s != ep::OK) {
    std::fprintf(stderr, "ep_infer: %s: %s: %s\n", path, ep::status_name(s), m->error);
    return false;
  }
  return true;
}

// ep_infer --sizes model.onnx [batch]: the buffers an embedded caller must provide (build_firmware.py).
static int sizes(const char* path, const char* batch_arg) {
  int batch = 0;
  if (!parse_int(batch_arg, 1, 1 << 20, &batch)) {
    std::fprintf(stderr, "ep_infer: --sizes batch %s: expected an integer in [1, 1048576]\n", batch_arg);
    return 2;
  }
  std::vector<std::uint8_t> file;
  std::vector<float> arena;
  static ep::Model m;
  if (!load_model(
          path, [](std::uint64_t, const char*) { return true; }, std::uint64_t(1) << 40, &file, &arena, &m))
    return 1;
  std::printf("arena_floats=%zu workspace_bytes=%zu n_classes=%d input=%dx%dx%d batch=%d\n", arena.size(),
              ep::workspace_bytes(m, batch), m.n_classes, m.in_c, m.in_h, m.in_w, batch);
  return 0;
}

int main(int argc, char** argv) {
  if (argc >= 3 && !std::strcmp(argv[1], "--sizes")) return sizes(argv[2], argc > 3 ? argv[3] : "1");
  if (argc < 3) {
    std::fprintf(stderr,
                 "usage: ep_infer model.onnx input.npy [--raw] [--max-steps N] [--tol t] [--max-memory-mb M] [--out "
                 "scores.npy]\n"
                 "       ep_infer --sizes model.onnx [batch]   (buffer sizes for an embedded caller)\n");
    return 2;
  }
  int max_steps = -1, max_mb = 2048;
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
    } else if (!std::strcmp(argv[i], "--max-memory-mb") && i + 1 < argc) {
      if (!parse_int(argv[++i], 1, 1 << 20, &max_mb)) {
        std::fprintf(stderr, "ep_infer: --max-memory-mb %s: expected an integer in [1, 1048576]\n", argv[i]);
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
  try {
    return infer(argv, raw_input, max_steps, tol, std::uint64_t(max_mb) << 20, out);
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "ep_infer: out of memory below --max-memory-mb %d\n", max_mb);
    return 1;
  }
}

static int infer(char** argv, bool raw_input, int max_steps, float tol, std::uint64_t cap, const char* out) {
  std::uint64_t used = 0;  // bytes allocated so far, against the cap
  auto within = [&](std::uint64_t bytes, const char* what) {
    used += bytes;
    if (used <= cap) return true;
    std::fprintf(stderr, "ep_infer: %s would need %llu MB in all, above --max-memory-mb %llu\n", what,
                 (unsigned long long)(used >> 20) + 1, (unsigned long long)(cap >> 20));
    return false;
  };
  std::vector<std::uint8_t> file;
  std::vector<float> arena;
  static ep::Model m;
  if (!load_model(argv[1], within, cap, &file, &arena, &m)) return 1;
  npy::Array x;  // the file, and its float32 copy (x5 when uint8): read no more than the cap leaves
  std::string err = npy::read(argv[2], &x, (cap > used ? cap - used : 0) / 5);
  if (err == "larger than the memory cap") err += " of --max-memory-mb " + std::to_string(cap >> 20);
  if (!err.empty()) {
    std::fprintf(stderr, "ep_infer: %s: %s\n", argv[2], err.c_str());
    return 1;
  }
  if (!within(std::uint64_t(x.data.size()) * (x.uint8 ? 5 : 8), argv[2])) return 1;
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
    std::fprintf(stderr,
                 "ep_infer: --raw: %s has no usable ep_compile.preprocessing metadata (mean/std for %d channels); "
                 "re-export it with export/to_onnx.py or pass preprocessed float32 images\n",
                 argv[1], m.in_c);
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
  const std::size_t ws = ep::workspace_bytes(m, batch);
  if (ws == 0) {
    std::fprintf(stderr, "ep_infer: a batch of %d images needs a workspace too large for this platform\n", batch);
    return 1;
  }
  if (!within(std::uint64_t(ws) + std::uint64_t(batch) * m.n_classes * 4, "the workspace")) return 1;
  std::vector<unsigned char> raw(ws + 16);
  void* work = reinterpret_cast<void*>((reinterpret_cast<std::uintptr_t>(raw.data()) + 15) & ~std::uintptr_t(15));
  std::vector<float> scores(std::size_t(batch) * m.n_classes);
  int steps = 0;
  float residual = 0.0f;
  ep::Status s =
      ep::run(m, x.data.data(), batch, max_steps, tol, work, raw.size() - 16, scores.data(), &steps, &residual);
  if (s == ep::ERR_NONFINITE) {
    std::fprintf(stderr, "ep_infer: did not converge: %s (NaN or Inf) at step %d\n",
                 steps == 0 ? "non-finite input" : "the state became non-finite", steps);
    return 1;
  }
  if (s != ep::OK) {
    std::fprintf(stderr, "ep_infer: run: %s\n", ep::status_name(s));
    return 1;
  }
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
