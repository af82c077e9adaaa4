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

// Returns an empty string on success, else what is wrong with the file.
inline std::string read(const char* path, Array* a) {
  std::FILE* f = std::fopen(path, "rb");
  if (f == nullptr) return std::string("cannot open ") + path;
  std::vector<unsigned char> buf;
  unsigned char chunk[65536];
  std::size_t n;
  while ((n = std::fread(chunk, 1, sizeof(chunk), f)) > 0) buf.insert(buf.end(), chunk, chunk + n);
  std::fclose(f);
  if (buf.size() < 10 || std::memcmp(buf.data(), "\x93NUMPY", 6) != 0) return "not a .npy file";
  const int major = buf[6];
  std::size_t hlen, hstart;
  if (major == 1) { hlen = buf[8] | (buf[9] << 8); hstart = 10; }
  else if (major == 2 || major == 3) {
    if (buf.size() < 12) return "truncated .npy header";
    hlen = buf[8] | (buf[9] << 8) | (std::size_t(buf[10]) << 16) | (std::size_t(buf[11]) << 24); hstart = 12;
  } else return "unsupported .npy version";
  if (hstart + hlen > buf.size()) return "truncated .npy header";
  std::string h(reinterpret_cast<const char*>(buf.data() + hstart), hlen);
  a->uint8 = h.find("'descr': '|u1'") != std::string::npos;
  if (!a->uint8 && h.find("'descr': '<f4'") == std::string::npos) return "expected float32 ('<f4') or uint8 ('|u1') data";
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
    while (p < h.size() && h[p] >= '0' && h[p] <= '9') { v = v * 10 + (h[p++] - '0'); digit = true; if (v > (1LL << 40)) return "dimension too large"; }
    if (!digit) return "malformed shape";
    a->shape.push_back(v);
    total *= v;
    if (total > (1LL << 32)) return "array too large";
  }
  const std::size_t data = hstart + hlen;
  if (buf.size() - data != std::size_t(total) * item) return "data size does not match the shape";
  a->data.resize(std::size_t(total));
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
  const unsigned char head[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, static_cast<unsigned char>(h.size() & 0xff), static_cast<unsigned char>(h.size() >> 8)};
  bool ok = std::fwrite(head, 1, 10, f) == 10 && std::fwrite(h.data(), 1, h.size(), f) == h.size() &&
            std::fwrite(data, 4, total, f) == total;
  return std::fclose(f) == 0 && ok;
}

// The size of a file in bytes, read before anything is allocated for it.
inline bool file_size(const char* path, std::uint64_t* size) {
  std::FILE* f = std::fopen(path, "rb");
  if (f == nullptr) return false;
  bool ok = std::fseek(f, 0, SEEK_END) == 0;
  const long n = ok ? std::ftell(f) : -1;
  std::fclose(f);
  if (n < 0) return false;
  *size = std::uint64_t(n);
  return true;
}

inline std::vector<std::uint8_t> read_file(const char* path, bool* ok) {
  std::vector<std::uint8_t> buf;
  std::FILE* f = std::fopen(path, "rb");
  *ok = f != nullptr;
  if (f == nullptr) return buf;
  unsigned char chunk[65536];
  std::size_t n;
  while ((n = std::fread(chunk, 1, sizeof(chunk), f)) > 0) buf.insert(buf.end(), chunk, chunk + n);
  std::fclose(f);
  return buf;
}

}  // namespace npy
