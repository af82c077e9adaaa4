// Minimal .npy reader (float32 or uint8) / writer (float32), C-order arrays (host tools only: uses the heap).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace npy {

struct Array {
  std::vector<std::int64_t> shape;
  std::vector<float> data;  // uint8 files are widened to float (values 0..255)
  bool uint8 = false;
};

// Reads at most max_bytes + 1 bytes of any file (a pipe or /dev/zero included): *too_big says the
// file holds more than max_bytes, and nothing past the cap was read or allocated.
inline std::vector<std::uint8_t> read_capped(const char* path, std::uint64_t max_bytes, bool* ok, bool* too_big) {
  std::vector<std::uint8_t> buf;
  *too_big = false;
  std::FILE* f = std::fopen(path, "rb");
  *ok = f != nullptr;
  if (f == nullptr) return buf;
  unsigned char chunk[65536];
  std::size_t n;
  while ((n = std::fread(chunk, 1, sizeof(chunk), f)) > 0) {
    if (std::uint64_t(buf.size()) + n > max_bytes) {
      *too_big = true;
      break;
    }
    buf.insert(buf.end(), chunk, chunk + n);
  }
  std::fclose(f);
  return buf;
}

// Returns an empty string on success, else what is wrong with the file; reads at most max_bytes.
inline std::string read(const char* path, Array* a, std::uint64_t max_bytes = std::uint64_t(1) << 34) {
  bool ok = false, too_big = false;
  std::vector<std::uint8_t> buf = read_capped(path, max_bytes, &ok, &too_big);
  if (!ok) return std::string("cannot open ") + path;
  if (too_big) return "larger than the memory cap";
  if (buf.size() < 10 || std::memcmp(buf.data(), "\x93NUMPY", 6) != 0) return "not a .npy file";
  const int major = buf[6];
  std::size_t hlen, hstart;
  if (major == 1) {
    hlen = buf[8] | (buf[9] << 8);
    hstart = 10;
  } else if (major == 2 || major == 3) {
    if (buf.size() < 12) return "truncated .npy header";
    hlen = buf[8] | (buf[9] << 8) | (std::size_t(buf[10]) << 16) | (std::size_t(buf[11]) << 24);
    hstart = 12;
  } else
    return "unsupported .npy version";
  if (hstart + hlen > buf.size()) return "truncated .npy header";
  std::string h(reinterpret_cast<const char*>(buf.data() + hstart), hlen);
  a->uint8 = h.find("'descr': '|u1'") != std::string::npos;
  if (!a->uint8 && h.find("'descr': '<f4'") == std::string::npos)
    return "expected float32 ('<f4') or uint8 ('|u1') data";
  const std::size_t item = a->uint8 ? 1 : 4;
  if (h.find("'fortran_order': False") == std::string::npos) return "expected C-order data";
  std::size_t p = h.find("'shape': (");
  if (p == std::string::npos) return "no shape in the .npy header";
  p += 10;
  a->shape.clear();
  std::int64_t total = 1;
  while (p < h.size() && h[p] != ')') {
    while (p < h.size() && (h[p] == ' ' || h[p] == ',')) ++p;
    if (p < h.size() && h[p] == ')') break;
    std::int64_t v = 0;
    bool digit = false;
    while (p < h.size() && h[p] >= '0' && h[p] <= '9') {
      v = v * 10 + (h[p++] - '0');
      digit = true;
      if (v > (1LL << 40)) return "dimension too large";
    }
    if (!digit) return "malformed shape";
    a->shape.push_back(v);
    if (v != 0 && total > (std::int64_t(1) << 32) / v) return "array too large";  // checked before the product
    total *= v;
  }
  const std::size_t data = hstart + hlen;
  if (buf.size() - data != std::size_t(total) * item) return "data size does not match the shape";
  a->data.resize(std::size_t(total));
  if (total == 0) return "";  // an empty array: nothing to copy (and no null pointer handed to memcpy)
  if (a->uint8) {
    for (std::size_t i = 0; i < std::size_t(total); ++i) a->data[i] = float(buf[data + i]);
  } else {
    std::memcpy(a->data.data(), buf.data() + data, std::size_t(total) * 4);
  }
  return "";
}

inline bool write(const char* path, const std::vector<std::int64_t>& shape, const float* data) {
  std::string dims;
  std::size_t total = 1;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    dims += std::to_string(shape[i]) + (shape.size() == 1 ? "," : (i + 1 < shape.size() ? ", " : ""));
    total *= std::size_t(shape[i]);
  }
  std::string h = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  while ((10 + h.size() + 1) % 64 != 0) h += ' ';
  h += '\n';
  std::FILE* f = std::fopen(path, "wb");
  if (f == nullptr) return false;
  const unsigned char head[10] = {0x93,
                                  'N',
                                  'U',
                                  'M',
                                  'P',
                                  'Y',
                                  1,
                                  0,
                                  static_cast<unsigned char>(h.size() & 0xff),
                                  static_cast<unsigned char>(h.size() >> 8)};
  bool ok = std::fwrite(head, 1, 10, f) == 10 && std::fwrite(h.data(), 1, h.size(), f) == h.size() &&
            std::fwrite(data, 4, total, f) == total;
  return std::fclose(f) == 0 && ok;
}

// The whole file (host tools that read their own trusted files: tests, benchmarks).
inline std::vector<std::uint8_t> read_file(const char* path, bool* ok) {
  bool too_big = false;
  return read_capped(path, std::uint64_t(1) << 40, ok, &too_big);
}

}  // namespace npy
