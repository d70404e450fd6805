// What every oneDNN FFI handler here shares: the one CPU engine, a stream and scratch buffers per calling thread,
// a process-wide primitive cache keyed by shape, the XLA-to-oneDNN dtype map, and oneDNN errors turned into XLA's.
#pragma once

#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace resnet_jax_onednn {

namespace ffi = xla::ffi;

inline dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// One stream per calling thread: XLA may run several primitives at once (one per forced host device), and a
// stream is not meant to be shared between threads.
inline dnnl::stream& thread_stream() {
  thread_local dnnl::stream stream(cpu_engine());
  return stream;
}

// A per-thread buffer that only grows: scratchpads and reordered kernels, so that concurrent calls never share one.
class ThreadBuffer {
 public:
  void* get(size_t bytes) {
    if (bytes > size_) {
      data_.reset(static_cast<char*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64)));
      size_ = bytes;
    }
    return data_.get();
  }

 private:
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  std::unique_ptr<char, Free> data_;
  size_t size_ = 0;
};

inline void* scratchpad(const dnnl::memory::desc& desc) {
  thread_local ThreadBuffer buffer;
  return buffer.get(desc.get_size());
}

inline dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// Built primitives of one kind, kept for the process and counted together for `OnednnCachedPrimitives`.
inline std::mutex& cache_mutex() {
  static std::mutex mutex;
  return mutex;
}

inline int64_t& cached_count() {
  static int64_t count = 0;
  return count;
}

template <typename Primitive>
const Primitive& cached(const std::string& key, const std::function<Primitive()>& build) {
  static std::unordered_map<std::string, std::unique_ptr<Primitive>> cache;
  std::lock_guard<std::mutex> lock(cache_mutex());
  auto found = cache.find(key);
  if (found == cache.end()) {
    found = cache.emplace(key, std::make_unique<Primitive>(build())).first;
    ++cached_count();
  }
  return *found->second;
}

inline std::string dims_key(std::initializer_list<const dnnl::memory::dims*> all_dims) {
  std::string key;
  for (const dnnl::memory::dims* dims : all_dims) {
    for (auto d : *dims) key += "," + std::to_string(d);
    key += ";";
  }
  return key;
}

inline std::optional<dnnl::memory::data_type> dnnl_type(ffi::DataType type) {
  switch (type) {
    case ffi::DataType::F32:
      return dnnl::memory::data_type::f32;
    case ffi::DataType::BF16:
      return dnnl::memory::data_type::bf16;
    default:
      return std::nullopt;
  }
}

inline ffi::Error run(const std::function<void()>& body) {
  try {
    body();
    return ffi::Error::Success();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  }
}

}  // namespace resnet_jax_onednn
