// oneDNN batch normalisation in training mode as XLA typed-FFI handlers for the CPU: forward (normalised output and
// the batch's mean and biased variance) and backward (input, scale and shift gradients), over NHWC activations in
// float32 or bfloat16 with float32 scale, shift and statistics, optionally with the ReLU after it fused in (its mask
// kept in oneDNN's workspace between the two passes).
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>

#include "runtime.h"

using namespace resnet_jax_onednn;
using dnnl::memory;
using tag = memory::format_tag;

namespace {

struct Geometry {
  memory::dims dims;  // N, C, H, W
  memory::data_type type;
  float epsilon;
  bool relu;
};

struct BatchNorm {
  dnnl::primitive forward, backward;
  memory::desc data, channel, scratchpad_forward, scratchpad_backward, workspace;
};

dnnl::normalization_flags flags(bool relu) {
  auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
  return relu ? flags | dnnl::normalization_flags::fuse_norm_relu : flags;
}

BatchNorm build(const Geometry& g) {
  auto& engine = cpu_engine();
  memory::desc data(g.dims, g.type, tag::nhwc);
  auto attr = user_scratchpad();
  dnnl::batch_normalization_forward::primitive_desc forward(engine, dnnl::prop_kind::forward_training, data, data,
                                                            g.epsilon, flags(g.relu), attr);
  dnnl::batch_normalization_backward::primitive_desc backward(engine, dnnl::prop_kind::backward, data, data, data,
                                                              g.epsilon, flags(g.relu), forward, attr);
  return {dnnl::batch_normalization_forward(forward),
          dnnl::batch_normalization_backward(backward),
          data,
          forward.mean_desc(),
          forward.scratchpad_desc(),
          backward.scratchpad_desc(),
          forward.workspace_desc()};
}

std::shared_ptr<const BatchNorm> cached_batch_norm(const Geometry& g) {
  const std::string key = "bn/" + std::to_string(static_cast<int>(g.type)) + (g.relu ? "r/" : "n/") +
                          float_key(g.epsilon) + dims_key({&g.dims});
  return cached<BatchNorm>(key, [&] { return build(g); });
}

std::optional<ffi::Error> make_geometry(const ffi::AnyBuffer& x, float epsilon, bool relu, Geometry* g) {
  auto d = x.dimensions();
  if (d.size() != 4) return ffi::Error::InvalidArgument("onednn batch norm: the input must be 4-D NHWC");
  auto type = dnnl_type(x.element_type());
  if (!type) return ffi::Error::InvalidArgument("onednn batch norm: the input must be float32 or bfloat16");
  *g = {{d[0], d[3], d[1], d[2]}, *type, epsilon, relu};
  return std::nullopt;
}

enum class Pass { kForward, kBackward };

// Runs one pass over `x`: `per_channel` and `per_element` are the buffers of the pass's other arguments, by oneDNN
// argument, shaped like the scale and like `x`; the ReLU's workspace joins them when it is fused.
ffi::Error execute(Pass pass, const ffi::AnyBuffer& x, float epsilon, bool relu, void* workspace,
                   std::initializer_list<std::pair<int, void*>> per_channel,
                   std::initializer_list<std::pair<int, void*>> per_element) {
  Geometry g;
  if (auto error = make_geometry(x, epsilon, relu, &g)) return *error;
  return run([&] {
    // Held until the wait below, whatever the cache evicts meanwhile.
    const auto held = cached_batch_norm(g);
    const BatchNorm& bn = *held;
    auto& engine = cpu_engine();
    const memory::desc& pad = pass == Pass::kForward ? bn.scratchpad_forward : bn.scratchpad_backward;
    CallScratch scratch({pad.get_size()});
    std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, memory(bn.data, engine, x.untyped_data())},
                                            {DNNL_ARG_SCRATCHPAD, memory(pad, engine, scratch[0])}};
    for (auto [arg, data] : per_channel) args[arg] = memory(bn.channel, engine, data);
    for (auto [arg, data] : per_element) args[arg] = memory(bn.data, engine, data);
    if (relu) args[DNNL_ARG_WORKSPACE] = memory(bn.workspace, engine, workspace);
    (pass == Pass::kForward ? bn.forward : bn.backward).execute(thread_stream(), args);
    thread_stream().wait();
  });
}

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer scale, ffi::AnyBuffer shift, ffi::Result<ffi::AnyBuffer> y,
                   ffi::Result<ffi::AnyBuffer> mean, ffi::Result<ffi::AnyBuffer> variance,
                   ffi::Result<ffi::AnyBuffer> workspace, float epsilon, bool relu) {
  return execute(Pass::kForward, x, epsilon, relu, workspace->untyped_data(),
                 {{DNNL_ARG_SCALE, scale.untyped_data()},
                  {DNNL_ARG_SHIFT, shift.untyped_data()},
                  {DNNL_ARG_MEAN, mean->untyped_data()},
                  {DNNL_ARG_VARIANCE, variance->untyped_data()}},
                 {{DNNL_ARG_DST, y->untyped_data()}});
}

ffi::Error Backward(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::AnyBuffer scale, ffi::AnyBuffer mean,
                    ffi::AnyBuffer variance, ffi::AnyBuffer workspace, ffi::Result<ffi::AnyBuffer> dx,
                    ffi::Result<ffi::AnyBuffer> dscale, ffi::Result<ffi::AnyBuffer> dshift, float epsilon,
                    bool relu) {
  return execute(Pass::kBackward, x, epsilon, relu, workspace.untyped_data(),
                 {{DNNL_ARG_SCALE, scale.untyped_data()},
                  {DNNL_ARG_MEAN, mean.untyped_data()},
                  {DNNL_ARG_VARIANCE, variance.untyped_data()},
                  {DNNL_ARG_DIFF_SCALE, dscale->untyped_data()},
                  {DNNL_ARG_DIFF_SHIFT, dshift->untyped_data()}},
                 {{DNNL_ARG_DIFF_DST, dy.untyped_data()}, {DNNL_ARG_DIFF_SRC, dx->untyped_data()}});
}

}  // namespace

// The bytes of the workspace (the fused ReLU's mask) that the forward pass writes and the backward pass reads, for an
// NHWC input of this shape and dtype (0: float32, 1: bfloat16); -1 when oneDNN cannot build the primitive.
extern "C" int64_t OnednnBatchNormWorkspaceBytes(int64_t n, int64_t h, int64_t w, int64_t c, int bfloat16) {
  try {
    Geometry g{{n, c, h, w}, bfloat16 ? memory::data_type::bf16 : memory::data_type::f32, 1e-5f, true};
    return static_cast<int64_t>(cached_batch_norm(g)->workspace.get_size());
  } catch (...) {
    return -1;
  }
}

#define BATCH_NORM_ATTRS .Attr<float>("epsilon").Attr<bool>("relu")

// x, scale, shift -> y, mean, variance, workspace.
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnBatchNormForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() BATCH_NORM_ATTRS);

// x, dy, scale, mean, variance, workspace -> dx, dscale, dshift.
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnBatchNormBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() BATCH_NORM_ATTRS);
