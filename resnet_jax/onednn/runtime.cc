// The extension's C entry points for Python's ctypes: the stamp of the sources and oneDNN it was built from, whether
// oneDNN has a CPU engine here, and what the primitive caches have built and hold.
#include <cstdint>
#include <cstdio>
#include <exception>

#include "runtime.h"

#ifndef RESNET_JAX_ONEDNN_STAMP
#error "RESNET_JAX_ONEDNN_STAMP is not defined: build with python -m resnet_jax.onednn.build"
#endif

// The hash of the C++ sources, CMakeLists.txt and oneDNN's version this file was built from (build.py computes it),
// so that Python can refuse a library left over from other sources.
extern "C" const char* OnednnStamp() { return RESNET_JAX_ONEDNN_STAMP; }

// Creates the CPU engine and reports whether that worked: 0, or -1 with the reason in `message`, so that Python can
// say in one line why oneDNN is unavailable instead of failing at a primitive's first call.
extern "C" int OnednnProbe(char* message, int capacity) {
  try {
    resnet_jax_onednn::cpu_engine();
    resnet_jax_onednn::thread_stream();
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(message, capacity, "%s", e.what());
  } catch (...) {
    std::snprintf(message, capacity, "an unknown C++ exception");
  }
  return -1;
}

// How many primitives the process has built (one per kind, pass, shape, dtype and attributes seen, again after an
// eviction).
extern "C" int64_t OnednnCachedPrimitives() {
  std::lock_guard<std::mutex> lock(resnet_jax_onednn::cache_mutex());
  return resnet_jax_onednn::cache_counts().built;
}

// How many of them the caches hold now: at most OnednnCacheCapacity() per kind.
extern "C" int64_t OnednnHeldPrimitives() {
  std::lock_guard<std::mutex> lock(resnet_jax_onednn::cache_mutex());
  return resnet_jax_onednn::cache_counts().held;
}

extern "C" int64_t OnednnCacheCapacity() { return resnet_jax_onednn::kCacheCapacity; }
