// What every oneDNN FFI handler here shares: the one CPU engine, a stream and scratch memory per calling thread, a
// bounded process-wide primitive cache keyed exactly by shape and attributes, the XLA-to-oneDNN dtype map, and every
// C++ exception turned into an XLA error.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <list>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

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

// Scratch memory for one FFI call, carved from a per-thread block into disjoint 64-byte-aligned regions, one per
// request (scratchpads, reordered kernels): the primitives a call queues before its wait() then never share bytes.
// The block only grows, and only here, as a call begins and after waiting for the thread's stream, so no primitive
// still queued (a call that failed before its wait) can be using the block that growing frees.
class CallScratch {
 public:
  explicit CallScratch(std::initializer_list<size_t> sizes) {
    size_t total = 0;
    for (size_t bytes : sizes) {
      offsets_.push_back(total);
      total += (bytes + 63) / 64 * 64;
    }
    Block& block = thread_block();
    if (total > block.size) {
      thread_stream().wait();
      block.data.reset();
      block.size = 0;
      block.data.reset(static_cast<char*>(std::aligned_alloc(64, total)));
      if (!block.data) throw std::bad_alloc();
      block.size = total;
    }
    base_ = block.data.get();
  }

  // The i-th request's region.
  void* operator[](size_t i) const { return base_ + offsets_[i]; }

 private:
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  struct Block {
    std::unique_ptr<char, Free> data;
    size_t size = 0;
  };
  static Block& thread_block() {
    thread_local Block block;
    return block;
  }
  std::vector<size_t> offsets_;
  char* base_ = nullptr;
};

inline dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// How many primitives the process has built and how many the caches hold, under the caches' one mutex.
struct CacheCounts {
  int64_t built = 0, held = 0;
};

inline std::mutex& cache_mutex() {
  static std::mutex mutex;
  return mutex;
}

inline CacheCounts& cache_counts() {
  static CacheCounts counts;
  return counts;
}

// Primitives kept per kind (convolution passes, BatchNorm). Keys hold the whole shape, batch size included, so an
// unbounded cache would grow with every batch size a process meets (sweeps, evaluation, ragged last batches). A
// ResNet-50 step needs about 60 at one batch size, so this keeps a training and an evaluation shape set with room.
constexpr size_t kCacheCapacity = 256;

// Built primitives of one kind by exact key, least recently used dropped first. Callers hold a shared_ptr while they
// run one, so that another thread's eviction never frees a primitive in use.
template <typename Primitive>
std::shared_ptr<const Primitive> cached(const std::string& key, const std::function<Primitive()>& build) {
  using Entry = std::pair<std::string, std::shared_ptr<const Primitive>>;
  static std::list<Entry> recent;  // most recently used first
  static std::unordered_map<std::string, typename std::list<Entry>::iterator> index;
  std::lock_guard<std::mutex> lock(cache_mutex());
  auto found = index.find(key);
  if (found != index.end()) {
    recent.splice(recent.begin(), recent, found->second);
    return found->second->second;
  }
  auto primitive = std::make_shared<const Primitive>(build());
  recent.emplace_front(key, primitive);
  index.emplace(key, recent.begin());
  ++cache_counts().built;
  ++cache_counts().held;
  if (recent.size() > kCacheCapacity) {
    index.erase(recent.back().first);
    recent.pop_back();
    --cache_counts().held;
  }
  return primitive;
}

inline std::string dims_key(std::initializer_list<const dnnl::memory::dims*> all_dims) {
  std::string key;
  for (const dnnl::memory::dims* dims : all_dims) {
    for (auto d : *dims) key += "," + std::to_string(d);
    key += ";";
  }
  return key;
}

// A float in a key by its bits: decimal text at a fixed precision maps distinct values to one key (every epsilon
// below 5e-7 prints as "0.000000").
inline std::string float_key(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return std::to_string(bits);
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

// Runs a handler's body, turning every C++ exception into an XLA error: one escaping an FFI handler would terminate
// the process. On an error, waits for what the body queued, which may still write into XLA's buffers.
inline ffi::Error run(const std::function<void()>& body) {
  ffi::Error error = ffi::Error::Success();
  try {
    body();
    return error;
  } catch (const dnnl::error& e) {
    error = ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  } catch (const std::bad_alloc&) {
    error = ffi::Error(ffi::ErrorCode::kResourceExhausted, "oneDNN extension: out of memory for scratch space");
  } catch (const std::exception& e) {
    error = ffi::Error::Internal(std::string("oneDNN extension: ") + e.what());
  } catch (...) {
    error = ffi::Error::Internal("oneDNN extension: an unknown C++ exception");
  }
  try {
    thread_stream().wait();
  } catch (...) {
    // The error above is the one to report.
  }
  return error;
}

}  // namespace resnet_jax_onednn
