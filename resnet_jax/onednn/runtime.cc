// The extension's C entry points for Python's ctypes: whether oneDNN has a CPU engine here, and how many
// primitives the process has built.
#include <cstdint>
#include <cstdio>

#include "runtime.h"

// Creates the CPU engine and reports whether that worked: 0, or -1 with the reason in `message`, so that Python can
// say in one line why oneDNN is unavailable instead of failing at a primitive's first call.
extern "C" int OnednnProbe(char* message, int capacity) {
  try {
    resnet_jax_onednn::cpu_engine();
    resnet_jax_onednn::thread_stream();
    return 0;
  } catch (const dnnl::error& e) {
    std::snprintf(message, capacity, "%s", e.what());
    return -1;
  }
}

// How many primitives the caches hold (one per kind, pass, shape and dtype seen).
extern "C" int64_t OnednnCachedPrimitives() {
  std::lock_guard<std::mutex> lock(resnet_jax_onednn::cache_mutex());
  return resnet_jax_onednn::cached_count();
}
