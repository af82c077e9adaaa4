// ctest: kernel adjoint identities, int8 kernels against float ones, loader error paths, and (with --golden DIR) the
// golden cases that tests/make_golden.py writes from PyTorch / onnxruntime, each with its explicit tolerance.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "ep_runtime.h"
#include "npy.h"

static int failures = 0;
#define CHECK(cond, ...)                                        \
  do {                                                          \
    if (!(cond)) {                                              \
      std::fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
      std::fprintf(stderr, __VA_ARGS__);                        \
      std::fprintf(stderr, "\n");                               \
      ++failures;                                               \
    }                                                           \
  } while (0)

static std::vector<float> rnd(std::size_t n, unsigned seed) {
  std::vector<float> v(n);
  for (auto& x : v) {
    seed = seed * 1664525u + 1013904223u;
    x = float(seed >> 8) / float(1 << 24) - 0.5f;
  }
  return v;
}

static double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += double(a[i]) * b[i];
  return s;
}

static void test_adjoints() {
  const int cin = 3, h = 7, w = 6, cout = 4, k = 3, pad = 1, hc = h + 2 * pad - k + 1, wc = w + 2 * pad - k + 1;
  auto x = rnd(cin * h * w, 1), y = rnd(cout * hc * wc, 2), wt = rnd(cout * cin * k * k, 3);
  std::vector<float> cx(cout * hc * wc), ty(cin * h * w), col(cin * k * k * hc * wc);
  ep::conv2d(cx.data(), x.data(), wt.data(), nullptr, cin, h, w, cout, k, pad, col.data());
  ep::conv2d_transpose(ty.data(), y.data(), wt.data(), cout, hc, wc, cin, h, w, k, pad, col.data());
  CHECK(std::fabs(dot(cx, y) - dot(x, ty)) < 1e-4, "conv adjoint: %g vs %g", dot(cx, y), dot(x, ty));

  const int c = 2, ph = 7, pw = 5;  // odd sizes: the last row / column is outside every window
  auto u = rnd(c * ph * pw, 4), v = rnd(c * (ph / 2) * (pw / 2), 5);
  std::vector<float> pooled(v.size()), un(u.size());
  std::vector<std::int32_t> idx(v.size());
  ep::maxpool(pooled.data(), idx.data(), u.data(), c, ph, pw, 2);
  ep::maxunpool(un.data(), v.data(), idx.data(), c, ph, pw, 2);
  CHECK(std::fabs(dot(pooled, v) - dot(u, un)) < 1e-5, "max pool: selection and unpool are not adjoint");
  ep::avgpool(pooled.data(), u.data(), c, ph, pw, 2);
  ep::avgunpool(un.data(), v.data(), c, ph, pw, 2);
  CHECK(std::fabs(dot(pooled, v) - dot(u, un)) < 1e-5, "avg pool adjoint");
  std::vector<float> ties(4, 0.25f), one(1);
  std::int32_t ti = -1;
  ep::maxpool(one.data(), &ti, ties.data(), 1, 2, 2, 2);
  CHECK(ti == 0, "ties go to the first element in row-major order, got %d", ti);

  for (int s = 2; s <= 3; ++s)  // strided: (8 + 2 - 3) / s + 1 rows, the rows left out get zeros back
    for (int kk = 1; kk <= 3; kk += 2) {
      const int hh = 8, ww = 7, pp = kk / 2, hs = (hh + 2 * pp - kk) / s + 1, ws = (ww + 2 * pp - kk) / s + 1;
      auto xs = rnd(cin * hh * ww, 20 + s), ys = rnd(cout * hs * ws, 30 + s), ks = rnd(cout * cin * kk * kk, 40 + s);
      std::vector<float> cs(ys.size()), ts(xs.size()), cols(cin * kk * kk * hs * ws), ref(ys.size(), 0.0f);
      ep::conv2d(cs.data(), xs.data(), ks.data(), nullptr, cin, hh, ww, cout, kk, pp, cols.data(), nullptr, s);
      ep::conv2d_transpose(ts.data(), ys.data(), ks.data(), cout, hs, ws, cin, hh, ww, kk, pp, cols.data(), nullptr, s);
      for (int co = 0; co < cout; ++co)  // the strided conv written out from its definition
        for (int oh = 0; oh < hs; ++oh)
          for (int ow = 0; ow < ws; ++ow)
            for (int ci = 0; ci < cin; ++ci)
              for (int a = 0; a < kk; ++a)
                for (int b = 0; b < kk; ++b) {
                  const int ih = oh * s + a - pp, iw = ow * s + b - pp;
                  if (ih >= 0 && ih < hh && iw >= 0 && iw < ww)
                    ref[(co * hs + oh) * ws + ow] +=
                        ks[((co * cin + ci) * kk + a) * kk + b] * xs[(ci * hh + ih) * ww + iw];
                }
      double err = 0;
      for (std::size_t i = 0; i < ref.size(); ++i) err = std::max(err, double(std::fabs(ref[i] - cs[i])));
      CHECK(err < 1e-5, "conv stride %d k %d differs from its definition by %g", s, kk, err);
      CHECK(std::fabs(dot(cs, ys) - dot(xs, ts)) < 1e-4, "conv stride %d k %d adjoint: %g vs %g", s, kk, dot(cs, ys),
            dot(xs, ts));
    }
  for (int f = 3; f <= 4; ++f) {  // f x f windows; 7 x 5 leaves rows and columns outside every window
    auto v3 = rnd(c * (ph / f) * (pw / f), 50 + f);
    std::vector<float> p3(v3.size()), u3(u.size());
    std::vector<std::int32_t> i3(v3.size());
    ep::maxpool(p3.data(), i3.data(), u.data(), c, ph, pw, f);
    ep::maxunpool(u3.data(), v3.data(), i3.data(), c, ph, pw, f);
    CHECK(std::fabs(dot(p3, v3) - dot(u, u3)) < 1e-5, "max pool %d: selection and unpool are not adjoint", f);
    float best = u[0];  // the first window's maximum, from its definition
    for (int a = 0; a < f; ++a)
      for (int b = 0; b < f; ++b) best = std::max(best, u[a * pw + b]);
    CHECK(p3[0] == best, "max pool %d: %g is not the window's maximum %g", f, p3[0], best);
    ep::avgpool(p3.data(), u.data(), c, ph, pw, f);
    ep::avgunpool(u3.data(), v3.data(), c, ph, pw, f);
    CHECK(std::fabs(dot(p3, v3) - dot(u, u3)) < 1e-5, "avg pool %d adjoint", f);
  }
  std::vector<float> ties9(9, 0.5f);
  ep::maxpool(one.data(), &ti, ties9.data(), 1, 3, 3, 3);
  CHECK(ti == 0, "3x3 ties go to the first element in row-major order, got %d", ti);

  auto a = rnd(5, 6), bvec = rnd(3, 7), wd = rnd(15, 8);
  std::vector<float> da(3), tb(5);
  ep::dense(da.data(), a.data(), wd.data(), nullptr, 5, 3);
  ep::dense_transpose(tb.data(), bvec.data(), wd.data(), 5, 3);
  CHECK(std::fabs(dot(da, bvec) - dot(a, tb)) < 1e-5, "dense adjoint");
}

// int8 kernels against the float kernels on the dequantized weights, bit for bit: output channels and
// rows across the panel boundaries (40 = 5 x 8 channels, 45 = 32 + 13 taps), both GEMM orientations and dense.
static void test_int8_kernels(int cin, int cout);
static void test_int8_kernels() {
  const int shapes[][2] = {{5, 40}, {32, 12}};  // cin, cout: 45 taps, and 288 (two blocks of DEQ_K)
  for (const auto& sh : shapes) test_int8_kernels(sh[0], sh[1]);
}

static void test_int8_kernels(int cin, int cout) {
  const int h = 6, w = 7, k = 3, pad = 1, hc = h, wc = w, rows = cin * k * k;
  std::vector<std::int8_t> q(std::size_t(cout) * rows);
  std::vector<float> scale(cout), deq(q.size());
  unsigned seed = 11;
  for (int c = 0; c < cout; ++c) {
    scale[c] = 0.001f * float(c + 1) / 3.0f;  // not powers of two: the product rounds
    for (int r = 0; r < rows; ++r) {
      seed = seed * 1664525u + 1013904223u;
      const std::size_t i = std::size_t(c) * rows + r;
      q[i] = std::int8_t(int(seed >> 24) - 128 < -127 ? -127 : int(seed >> 24) - 128);
      deq[i] = float(q[i]) * scale[c];
    }
  }
  const ep::Weights wq(q.data(), scale.data());
  auto x = rnd(std::size_t(cin) * h * w, 12), y = rnd(std::size_t(cout) * hc * wc, 13), b = rnd(cout, 14);
  std::vector<float> a(std::size_t(cout) * hc * wc), bq(a.size()), col(std::size_t(rows) * hc * wc);
  std::vector<float> work(
      std::max(std::size_t(ep::DEQ_ROWS) * std::min(rows, ep::DEQ_K), std::size_t(ep::DEQ_ROWS_T) * cout));
  ep::conv2d(a.data(), x.data(), deq.data(), b.data(), cin, h, w, cout, k, pad, col.data());
  ep::conv2d(bq.data(), x.data(), wq, b.data(), cin, h, w, cout, k, pad, col.data(), work.data());
  CHECK(std::memcmp(a.data(), bq.data(), 4 * a.size()) == 0,
        "int8 conv2d %d -> %d differs from float on dequantized weights", cin, cout);
  std::vector<float> t(std::size_t(cin) * h * w), tq(t.size());
  ep::conv2d_transpose(t.data(), y.data(), deq.data(), cout, hc, wc, cin, h, w, k, pad, col.data());
  ep::conv2d_transpose(tq.data(), y.data(), wq, cout, hc, wc, cin, h, w, k, pad, col.data(), work.data());
  CHECK(std::memcmp(t.data(), tq.data(), 4 * t.size()) == 0, "int8 conv2d_transpose differs");
  std::vector<float> d(cout), dq(cout), e(rows), eq(rows);
  auto v = rnd(rows, 15), u = rnd(cout, 16);
  ep::dense(d.data(), v.data(), deq.data(), b.data(), rows, cout);
  ep::dense(dq.data(), v.data(), wq, b.data(), rows, cout);
  ep::dense_transpose(e.data(), u.data(), deq.data(), rows, cout);
  ep::dense_transpose(eq.data(), u.data(), wq, rows, cout);
  CHECK(std::memcmp(d.data(), dq.data(), 4 * d.size()) == 0 && std::memcmp(e.data(), eq.data(), 4 * e.size()) == 0,
        "int8 dense differs");
}

// Every GEMM path (vector tiles of every width, narrow 4-column tiles, scalar edges, both
// orientations) against plain loops with std::fma in the same order, bit for bit: the kernels fuse
// every multiply-add, so two positions with equal operands get equal sums whichever path computed
// them (a max-pool tie then goes the same way everywhere).
static void test_fused_order() {
  const int shapes[][4] = {{3, 9, 11, 37}, {5, 4, 4, 40}, {2, 2, 2, 3}, {7, 6, 6, 33}};  // cin, h, w, cout
  for (const auto& sh : shapes) {
    const int cin = sh[0], h = sh[1], w = sh[2], cout = sh[3], k = 3, pad = 1, rows = cin * k * k, npix = h * w;
    auto x = rnd(std::size_t(cin) * h * w, 21), y = rnd(std::size_t(cout) * npix, 22);
    auto wt = rnd(std::size_t(cout) * rows, 23), b = rnd(cout, 24);
    std::vector<float> col(std::size_t(rows) * npix), got(std::size_t(cout) * npix), want(got.size());
    ep::conv2d(got.data(), x.data(), wt.data(), b.data(), cin, h, w, cout, k, pad, col.data());
    for (int co = 0; co < cout; ++co)
      for (int oh = 0; oh < h; ++oh)
        for (int ow = 0; ow < w; ++ow) {
          float acc = 0.0f;
          for (int ci = 0; ci < cin; ++ci)
            for (int kh = 0; kh < k; ++kh)
              for (int kw = 0; kw < k; ++kw) {
                const int ih = oh + kh - pad, iw = ow + kw - pad;
                const float v = ih < 0 || ih >= h || iw < 0 || iw >= w ? 0.0f : x[(std::size_t(ci) * h + ih) * w + iw];
                acc = std::fma(wt[std::size_t(co) * rows + (ci * k + kh) * k + kw], v, acc);
              }
          want[(std::size_t(co) * h + oh) * w + ow] = acc + b[co];
        }
    CHECK(std::memcmp(got.data(), want.data(), 4 * got.size()) == 0, "conv2d %dx%dx%d -> %d: not fused in order", cin,
          h, w, cout);
    std::vector<float> t(std::size_t(cin) * h * w), tw(t.size(), 0.0f);
    ep::conv2d_transpose(t.data(), y.data(), wt.data(), cout, h, w, cin, h, w, k, pad, col.data());
    for (int ci = 0; ci < cin; ++ci)  // col (rows, npix) = w^T . y fused over co, then col2im in (kh, kw) order
      for (int kh = 0; kh < k; ++kh)
        for (int kw = 0; kw < k; ++kw)
          for (int oh = 0; oh < h; ++oh)
            for (int ow = 0; ow < w; ++ow) {
              float acc = 0.0f;
              for (int co = 0; co < cout; ++co)
                acc = std::fma(wt[std::size_t(co) * rows + (ci * k + kh) * k + kw],
                               y[std::size_t(co) * npix + oh * w + ow], acc);
              const int ih = oh + kh - pad, iw = ow + kw - pad;
              if (ih >= 0 && ih < h && iw >= 0 && iw < w) tw[(std::size_t(ci) * h + ih) * w + iw] += acc;
            }
    CHECK(std::memcmp(t.data(), tw.data(), 4 * t.size()) == 0, "conv2d_transpose %d -> %dx%dx%d: not fused in order",
          cout, cin, h, w);
  }
}

static void test_garbage() {
  std::size_t n = 0;
  CHECK(ep::required_arena(nullptr, 0, &n) == ep::ERR_ARGUMENT, "null buffer");
  const std::uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
  CHECK(ep::required_arena(junk, sizeof(junk), &n) == ep::ERR_PARSE, "overlong varint");
  const std::uint8_t no_graph[] = {0x08, 0x08};  // ir_version = 8 and nothing else
  CHECK(ep::required_arena(no_graph, sizeof(no_graph), &n) == ep::ERR_PARSE, "no graph");
  const std::uint8_t group[] = {0x0b};  // field 1, wire type 3 (group): refused
  CHECK(ep::required_arena(group, sizeof(group), &n) == ep::ERR_PARSE, "groups");
  const std::uint8_t len_past_end[] = {0x3a, 0x7f, 0x00};  // graph of 127 bytes in a 3-byte file
  CHECK(ep::required_arena(len_past_end, sizeof(len_past_end), &n) == ep::ERR_PARSE, "length past the end");
  static ep::Model m;
  float arena[4];
  CHECK(ep::load(no_graph, sizeof(no_graph), arena, 4, &m) == ep::ERR_PARSE && m.error[0] != 0, "error message");
}

// A loaded model, its workspace (16-byte aligned) and the input of a golden case.
struct Loaded {
  std::vector<std::uint8_t> file;
  std::vector<float> arena;
  std::vector<unsigned char> work;
  ep::Model m;
  void* w = nullptr;
  std::size_t ws = 0;
  bool load(const std::string& path, int batch) {
    bool ok = false;
    file = npy::read_file(path.c_str(), &ok);
    std::size_t nf = 0;
    if (!ok || ep::required_arena(file.data(), file.size(), &nf, &m) != ep::OK) return false;
    arena.assign(nf + 1, 0.0f);
    if (ep::load(file.data(), file.size(), arena.data(), arena.size(), &m) != ep::OK) return false;
    ws = ep::workspace_bytes(m, batch);
    work.assign(ws + 16, 0);
    w = reinterpret_cast<void*>((reinterpret_cast<std::uintptr_t>(work.data()) + 15) & ~std::uintptr_t(15));
    return ws > 0;
  }
};

static void run_golden(const std::string& dir) {
  std::FILE* f = std::fopen((dir + "/cases.txt").c_str(), "r");
  CHECK(f != nullptr, "no %s/cases.txt", dir.c_str());
  if (f == nullptr) return;
  char model[256], input[256], expected[256];
  int max_steps, want_steps, n_cases = 0;
  float tol, atol;
  while (std::fscanf(f, "%255s %255s %255s %d %f %d %f", model, input, expected, &max_steps, &tol, &want_steps,
                     &atol) == 7) {
    ++n_cases;
    npy::Array x, want;
    CHECK(
        npy::read((dir + "/" + input).c_str(), &x).empty() && npy::read((dir + "/" + expected).c_str(), &want).empty(),
        "%s: npy", input);
    const int batch = int(x.shape[0]);
    Loaded L;
    const bool loaded = L.load(dir + "/" + model, batch);
    CHECK(loaded, "%s: load: %s", model, L.m.error);
    if (!loaded) continue;
    const ep::Model& m = L.m;
    std::vector<float> scores(std::size_t(batch) * m.n_classes);
    int steps = -1;
    float res = 0;
    ep::Status s = ep::run(m, x.data.data(), batch, max_steps, tol, L.w, L.ws, scores.data(), &steps, &res);
    CHECK(s == ep::OK, "%s: run", model);
    float worst = 0;
    int same_pred = 1;
    for (int b = 0; b < batch; ++b) {
      int p1 = 0, p2 = 0;
      for (int c = 0; c < m.n_classes; ++c) {
        const std::size_t i = std::size_t(b) * m.n_classes + c;
        worst = std::fmax(worst, std::fabs(scores[i] - want.data[i]));
        if (scores[i] > scores[std::size_t(b) * m.n_classes + p1]) p1 = c;
        if (want.data[i] > want.data[std::size_t(b) * m.n_classes + p2]) p2 = c;
      }
      same_pred &= p1 == p2;
    }
    CHECK(worst <= atol, "%s on %s: max |scores - expected| = %g > %g", model, input, worst, atol);
    CHECK(same_pred, "%s on %s: a prediction differs", model, input);
    CHECK(steps == want_steps, "%s on %s: %d steps, expected %d", model, input, steps, want_steps);
    std::printf("golden %-28s %-24s max_steps=%-4d tol=%-8g steps=%-4d max_abs_diff=%.3g (atol %g)\n", model, input,
                max_steps, double(tol), steps, double(worst), double(atol));
  }
  std::fclose(f);
  CHECK(n_cases > 0, "no golden cases");
  f = std::fopen((dir + "/bad.txt").c_str(), "r");  // corrupted files and the status each must give
  int n_bad = 0;
  char name[256];
  int want = 0;
  while (f != nullptr && std::fscanf(f, "%255s %d", name, &want) == 2) {
    ++n_bad;
    bool ok = false;
    auto file = npy::read_file((dir + "/" + name).c_str(), &ok);
    std::size_t nf = 0;
    ep::Status s = ep::required_arena(file.data(), file.size(), &nf);
    static ep::Model m;
    std::vector<float> arena(nf + 1);
    if (s == ep::OK) s = ep::load(file.data(), file.size(), arena.data(), arena.size(), &m);
    if (want >= 0)
      CHECK(int(s) == want, "%s: got '%s', expected '%s' (%s)", name, ep::status_name(s),
            ep::status_name(ep::Status(want)), m.error);
  }
  if (f != nullptr) std::fclose(f);
  std::printf("golden: %d cases, %d corrupted files\n", n_cases, n_bad);
}

// ep::step() against dynamics.step: the state of every layer after 1, 2, 3 and 10 steps from s = 0.
static void run_steps(const std::string& dir) {
  std::FILE* f = std::fopen((dir + "/steps.txt").c_str(), "r");
  CHECK(f != nullptr, "no %s/steps.txt", dir.c_str());
  if (f == nullptr) return;
  char model[256], input[256], expected[256];
  int want_step, layer, n_cases = 0;
  float atol, worst_all = 0;
  while (std::fscanf(f, "%255s %255s %d %d %255s %f", model, input, &want_step, &layer, expected, &atol) == 6) {
    ++n_cases;
    npy::Array x, want;
    CHECK(
        npy::read((dir + "/" + input).c_str(), &x).empty() && npy::read((dir + "/" + expected).c_str(), &want).empty(),
        "%s: npy", expected);
    const int batch = int(x.shape[0]);
    Loaded L;
    CHECK(L.load(dir + "/" + model, batch), "%s: load", model);
    CHECK(ep::reset_state(L.m, batch, L.w, L.ws) == ep::OK, "reset_state");
    float res = 0;
    for (int t = 0; t < want_step; ++t)
      CHECK(ep::step(L.m, x.data.data(), batch, L.w, L.ws, &res) == ep::OK, "%s: step %d", model, t + 1);
    const float* s = ep::state(L.m, batch, L.w, L.ws, layer);
    CHECK(s != nullptr, "state()");
    if (s == nullptr) continue;
    const std::size_t n = std::size_t(L.m.layers[layer].out_size()) * batch;
    CHECK(n == want.data.size(), "%s: layer %d holds %zu values, expected %zu", model, layer, n, want.data.size());
    float worst = 0;
    for (std::size_t i = 0; i < n && i < want.data.size(); ++i)
      worst = std::fmax(worst, std::fabs(s[i] - want.data[i]));
    CHECK(worst <= atol, "%s step %d layer %d: max |s - expected| = %g > %g", model, want_step, layer + 1, worst, atol);
    worst_all = std::fmax(worst_all, worst);
  }
  std::fclose(f);
  CHECK(n_cases > 0, "no per-step cases");
  std::printf("per-step golden: %d layer states, max_abs_diff=%.3g\n", n_cases, double(worst_all));
}

// Two threads load and run the same file at once (run under TSan / ASan by the tests): the loader
// keeps no state of its own, so both get the single-thread scores bit for bit.
static void run_threads(const std::string& dir) {
  const std::string model = dir + "/digits_sym_ce_trained.onnx";
  npy::Array x;
  CHECK(npy::read((dir + "/digits.npy").c_str(), &x).empty(), "digits.npy");
  const int batch = int(x.shape[0]);
  auto scores_of = [&](std::vector<float>* out, bool* ok) {
    *ok = true;
    for (int rep = 0; rep < 20; ++rep) {
      Loaded L;
      if (!L.load(model, batch)) {
        *ok = false;
        return;
      }
      out->assign(std::size_t(batch) * L.m.n_classes, 0.0f);
      int steps = 0;
      float res = 0;
      if (ep::run(L.m, x.data.data(), batch, 5, 0.0f, L.w, L.ws, out->data(), &steps, &res) != ep::OK) *ok = false;
    }
  };
  std::vector<float> ref, a, b;
  bool ok_ref = false, ok_a = false, ok_b = false;
  scores_of(&ref, &ok_ref);
  std::thread ta(scores_of, &a, &ok_a), tb(scores_of, &b, &ok_b);
  ta.join();
  tb.join();
  CHECK(ok_ref && ok_a && ok_b, "a thread failed to load or run");
  CHECK(a == ref && b == ref, "two threads at once gave other scores than one thread");
  std::printf("threads: two threads x 20 loads+runs equal to one thread\n");
}

int main(int argc, char** argv) {
  test_adjoints();
  test_int8_kernels();
  test_fused_order();
  test_garbage();
  if (argc == 3 && !std::strcmp(argv[1], "--golden")) {
    run_golden(argv[2]);
    run_steps(argv[2]);
  }
  if (argc == 3 && !std::strcmp(argv[1], "--threads")) run_threads(argv[2]);
  if (failures)
    std::fprintf(stderr, "%d check(s) failed\n", failures);
  else
    std::printf("all checks passed\n");
  return failures ? 1 : 0;
}
