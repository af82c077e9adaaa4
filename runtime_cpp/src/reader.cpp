// The file readers: a strict protobuf reader for the parts of ONNX the runtime needs, and a small
// JSON reader for the metadata. Both read in place, allocate nothing and bound their depth.
#include <cmath>
#include <cstring>

#include "internal.h"

namespace ep {
namespace detail {

// ------------------------------------------------------------------------------- protobuf

bool parse_tensor(Span s, Tensor* t) {
  Reader r{s.p, s.p + s.n};
  while (!r.done()) {
    std::uint32_t f, w;
    if (!r.key(&f, &w)) return false;
    if (f == 1 && w == 0) {  // dims, unpacked
      std::uint64_t d;
      if (!r.varint(&d) || t->ndim >= MAX_DIMS || d > std::uint64_t(MAX_ELEMENTS)) return false;
      t->dims[t->ndim++] = std::int64_t(d);
    } else if (f == 1 && w == 2) {  // dims, packed
      Span ps;
      if (!r.bytes(&ps)) return false;
      Reader pr{ps.p, ps.p + ps.n};
      while (!pr.done()) {
        std::uint64_t d;
        if (!pr.varint(&d) || t->ndim >= MAX_DIMS || d > std::uint64_t(MAX_ELEMENTS)) return false;
        t->dims[t->ndim++] = std::int64_t(d);
      }
    } else if (f == 2 && w == 0) {
      if (!r.varint(&t->data_type)) return false;
    } else if (f == 8 && w == 2) {
      if (!r.bytes(&t->name)) return false;
    } else if (f == 9 && w == 2) {
      if (!r.bytes(&t->raw)) return false;
    } else if (f == 4 && w == 2) {
      if (!r.bytes(&t->floats)) return false;
    } else if (f == 14 && w == 0) {
      std::uint64_t loc;
      if (!r.varint(&loc)) return false;
      t->external = loc == 1;
    } else if (!r.skip(w)) {
      return false;
    }
  }
  std::int64_t n = 1;
  for (int i = 0; i < t->ndim; ++i) {
    if (t->dims[i] > MAX_ELEMENTS || n * std::max<std::int64_t>(t->dims[i], 1) > MAX_ELEMENTS) return false;
    n *= t->dims[i];
  }
  return true;
}

// ------------------------------------------------------------------------------- JSON

namespace {

const char* ws(const char* p, const char* e) {
  while (p < e && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) ++p;
  return p;
}

const char* skip_value(const char* p, const char* e, int depth) {
  p = ws(p, e);
  if (p >= e || depth > 32) return nullptr;
  if (*p == '"') {
    for (++p; p < e; ++p) {
      if (*p == '\\') {
        ++p;
        continue;
      }
      if (*p == '"') return p + 1;
    }
    return nullptr;
  }
  if (*p == '{' || *p == '[') {
    char close = *p == '{' ? '}' : ']';
    p = ws(p + 1, e);
    if (p < e && *p == close) return p + 1;
    while (p < e) {
      if (close == '}') {
        p = skip_value(p, e, depth + 1);  // key
        if (p == nullptr) return nullptr;
        p = ws(p, e);
        if (p >= e || *p != ':') return nullptr;
        ++p;
      }
      p = skip_value(p, e, depth + 1);
      if (p == nullptr) return nullptr;
      p = ws(p, e);
      if (p < e && *p == ',') {
        ++p;
        continue;
      }
      if (p < e && *p == close) return p + 1;
      return nullptr;
    }
    return nullptr;
  }
  const char* q = p;  // number, true, false, null
  while (q < e && (std::strchr("+-.eE0123456789", *q) != nullptr || (*q >= 'a' && *q <= 'z'))) ++q;
  return q > p ? q : nullptr;
}

}  // namespace

Json value_span(const char* p, const char* e) {
  p = ws(p, e);
  const char* q = skip_value(p, e, 0);
  return q == nullptr ? Json{} : Json{p, q};
}

Json get(Json obj, const char* key) {
  if (!obj.ok() || obj.p >= obj.end || *obj.p != '{') return Json{};
  const char* p = ws(obj.p + 1, obj.end);
  std::size_t klen = std::strlen(key);
  while (p < obj.end && *p == '"') {
    const char* kend = skip_value(p, obj.end, 0);
    if (kend == nullptr) return Json{};
    bool match = std::size_t(kend - p) == klen + 2 && std::memcmp(p + 1, key, klen) == 0;
    p = ws(kend, obj.end);
    if (p >= obj.end || *p != ':') return Json{};
    Json v = value_span(p + 1, obj.end);
    if (!v.ok()) return Json{};
    if (match) return v;
    p = ws(v.end, obj.end);
    if (p < obj.end && *p == ',') p = ws(p + 1, obj.end);
  }
  return Json{};
}

Json at(Json arr, int i) {
  if (!arr.ok() || arr.p >= arr.end || *arr.p != '[') return Json{};
  const char* p = ws(arr.p + 1, arr.end);
  for (int k = 0; p < arr.end && *p != ']'; ++k) {
    Json v = value_span(p, arr.end);
    if (!v.ok()) return Json{};
    if (k == i) return v;
    p = ws(v.end, arr.end);
    if (p < arr.end && *p == ',') p = ws(p + 1, arr.end);
  }
  return Json{};
}

// Elements of an array, in one pass (linear in its text); -1 when malformed.
int length(Json arr) {
  if (!arr.ok() || arr.p >= arr.end || *arr.p != '[') return -1;
  const char* p = ws(arr.p + 1, arr.end);
  int n = 0;
  while (p < arr.end && *p != ']') {
    Json v = value_span(p, arr.end);
    if (!v.ok() || n == 1 << 30) return -1;
    ++n;
    p = ws(v.end, arr.end);
    if (p < arr.end && *p == ',') p = ws(p + 1, arr.end);
  }
  return n;
}

// A JSON number, parsed by hand: newlib's strtod allocates, and the runtime must not.
bool number(Json v, double* out) {
  const char* p = v.p;
  const char* e = v.end;
  if (!v.ok() || p >= e) return false;
  const bool neg = *p == '-';
  if (neg || *p == '+') ++p;
  double mant = 0;
  int exp10 = 0, digits = 0;
  for (; p < e && *p >= '0' && *p <= '9'; ++p, ++digits) mant = mant * 10 + (*p - '0');
  if (p < e && *p == '.')
    for (++p; p < e && *p >= '0' && *p <= '9'; ++p, ++digits, --exp10) mant = mant * 10 + (*p - '0');
  if (digits == 0 || digits > 40) return false;
  if (p < e && (*p == 'e' || *p == 'E')) {
    ++p;
    const bool eneg = p < e && *p == '-';
    if (p < e && (*p == '-' || *p == '+')) ++p;
    int ev = 0, ed = 0;
    for (; p < e && *p >= '0' && *p <= '9' && ed < 4; ++p, ++ed) ev = ev * 10 + (*p - '0');
    if (ed == 0) return false;
    exp10 += eneg ? -ev : ev;
  }
  if (p != e || exp10 < -300 || exp10 > 300) return false;
  double scale = 1;
  for (int i = 0; i < (exp10 < 0 ? -exp10 : exp10); ++i) scale *= 10;
  *out = (neg ? -1 : 1) * (exp10 < 0 ? mant / scale : mant * scale);
  return std::isfinite(*out);
}

bool integer(Json v, int lo, int hi, int* out) {
  double d;
  if (!number(v, &d) || d != std::floor(d) || d < lo || d > hi) return false;
  *out = int(d);
  return true;
}

bool is_str(Json v, const char* s) {
  std::size_t n = std::strlen(s);
  return v.ok() && std::size_t(v.end - v.p) == n + 2 && *v.p == '"' && std::memcmp(v.p + 1, s, n) == 0;
}

bool is_true(Json v) { return v.ok() && v.end - v.p == 4 && std::memcmp(v.p, "true", 4) == 0; }
bool is_false(Json v) { return v.ok() && v.end - v.p == 5 && std::memcmp(v.p, "false", 5) == 0; }
bool is_null(Json v) { return v.ok() && v.end - v.p == 4 && std::memcmp(v.p, "null", 4) == 0; }

bool shape3(Json v, int* c, int* h, int* w) {
  int n = length(v);
  *h = *w = 1;
  if (n == 1) return integer(at(v, 0), 1, 1 << 24, c);
  return n == 3 && integer(at(v, 0), 1, 1 << 16, c) && integer(at(v, 1), 1, 1 << 16, h) &&
         integer(at(v, 2), 1, 1 << 16, w);
}

}  // namespace detail
}  // namespace ep
