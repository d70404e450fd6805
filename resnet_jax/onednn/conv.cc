// oneDNN 2D convolutions (forward, backward-data, backward-weights) as XLA typed-FFI handlers for the CPU:
// NHWC activations and HWIO kernels as flax lays them out, float32 or bfloat16 (accumulated in float32), any
// stride and non-negative padding. Primitives are built once per pass, shape and dtype, in runtime.h's bounded cache.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "runtime.h"

using namespace resnet_jax_onednn;
using dnnl::memory;
using tag = memory::format_tag;

namespace {

enum class Pass { kForward, kBackwardData, kBackwardWeights };

struct Geometry {
  memory::dims src, weights, dst, strides, pad_l, pad_r;
  memory::data_type type;
  bool bias;
};

struct Conv {
  dnnl::primitive primitive;
  memory::desc src, weights, dst, bias, scratchpad;
  memory::desc user_weights;
  std::optional<dnnl::reorder> weights_reorder;  // user HWIO <-> the primitive's own kernel layout
  memory::desc reorder_scratchpad;
};

std::string cache_key(Pass pass, const Geometry& g) {
  return "conv/" + std::to_string(static_cast<int>(pass)) + "/" + std::to_string(static_cast<int>(g.type)) +
         (g.bias ? "b" : "n") + dims_key({&g.src, &g.weights, &g.dst, &g.strides, &g.pad_l, &g.pad_r});
}

Conv build(Pass pass, const Geometry& g) {
  auto& engine = cpu_engine();
  memory::desc src(g.src, g.type, tag::nhwc), dst(g.dst, g.type, tag::nhwc);
  memory::desc user_weights(g.weights, g.type, tag::hwio);
  // The kernel's layout is left to oneDNN (its fastest kernels want blocked weights); activations stay NHWC.
  memory::desc any_weights(g.weights, g.type, tag::any);
  memory::desc bias = g.bias ? memory::desc({g.dst[1]}, g.type, tag::x) : memory::desc();
  auto attr = user_scratchpad();
  dnnl::convolution_forward::primitive_desc forward(engine, dnnl::prop_kind::forward_training,
                                                     dnnl::algorithm::convolution_direct, src, any_weights, bias, dst,
                                                     g.strides, g.pad_l, g.pad_r, attr);
  Conv conv;
  conv.src = src;
  conv.dst = dst;
  conv.bias = bias;
  conv.user_weights = user_weights;
  if (pass == Pass::kForward) {
    conv.primitive = dnnl::convolution_forward(forward);
    conv.weights = forward.weights_desc();
    conv.scratchpad = forward.scratchpad_desc();
  } else if (pass == Pass::kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc backward(engine, dnnl::algorithm::convolution_direct, src,
                                                             any_weights, dst, g.strides, g.pad_l, g.pad_r, forward,
                                                             attr);
    conv.primitive = dnnl::convolution_backward_data(backward);
    conv.weights = backward.weights_desc();
    conv.scratchpad = backward.scratchpad_desc();
  } else {
    dnnl::convolution_backward_weights::primitive_desc backward(engine, dnnl::algorithm::convolution_direct, src,
                                                                any_weights, bias, dst, g.strides, g.pad_l,
                                                                g.pad_r, forward, attr);
    conv.primitive = dnnl::convolution_backward_weights(backward);
    conv.weights = backward.diff_weights_desc();
    conv.scratchpad = backward.scratchpad_desc();
  }
  if (conv.weights != user_weights) {
    dnnl::reorder::primitive_desc reorder =
        pass == Pass::kBackwardWeights
            ? dnnl::reorder::primitive_desc(engine, conv.weights, engine, user_weights, attr)
            : dnnl::reorder::primitive_desc(engine, user_weights, engine, conv.weights, attr);
    conv.weights_reorder = dnnl::reorder(reorder);
    conv.reorder_scratchpad = reorder.scratchpad_desc();
  }
  return conv;
}

std::shared_ptr<const Conv> cached_conv(Pass pass, const Geometry& g) {
  return cached<Conv>(cache_key(pass, g), [&] { return build(pass, g); });
}

// NHWC / HWIO buffer shapes to oneDNN's logical NCHW / OIHW dims.
memory::dims activation_dims(const ffi::AnyBuffer& b) {
  auto d = b.dimensions();
  return {d[0], d[3], d[1], d[2]};
}

memory::dims kernel_dims(const ffi::AnyBuffer& b) {
  auto d = b.dimensions();
  return {d[3], d[2], d[0], d[1]};
}

std::optional<ffi::Error> make_geometry(const ffi::AnyBuffer& src, const ffi::AnyBuffer& weights_like,
                                        bool weights_are_hwio, const ffi::AnyBuffer& dst, bool bias, int64_t stride_h,
                                        int64_t stride_w, int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                                        int64_t pad_right, Geometry* g) {
  if (src.dimensions().size() != 4 || dst.dimensions().size() != 4 || weights_like.dimensions().size() != 4) {
    return ffi::Error::InvalidArgument("onednn conv: operands must be 4-D (NHWC activations, HWIO kernel)");
  }
  auto type = dnnl_type(src.element_type());
  if (!type || src.element_type() != dst.element_type() || src.element_type() != weights_like.element_type()) {
    return ffi::Error::InvalidArgument("onednn conv: operands must all be float32 or all bfloat16");
  }
  g->src = activation_dims(src);
  g->dst = activation_dims(dst);
  g->weights = weights_are_hwio ? kernel_dims(weights_like) : memory::dims{};
  g->strides = {stride_h, stride_w};
  g->pad_l = {pad_top, pad_left};
  g->pad_r = {pad_bottom, pad_right};
  g->type = *type;
  g->bias = bias;
  return std::nullopt;
}

// One call's scratch: [0] the primitive's scratchpad, [1] the kernel in the primitive's layout and [2] the reorder's
// scratchpad, where the primitive wants another layout than HWIO.
CallScratch call_scratch(const Conv& conv) {
  const bool reorder = conv.weights_reorder.has_value();
  return CallScratch({conv.scratchpad.get_size(), reorder ? conv.weights.get_size() : 0,
                      reorder ? conv.reorder_scratchpad.get_size() : 0});
}

// Copies a kernel between the user's HWIO buffer and the primitive's layout; returns the memory the primitive uses.
memory weights_for_primitive(const Conv& conv, void* user_data, bool user_to_primitive,
                             const CallScratch& scratch) {
  auto& engine = cpu_engine();
  memory user(conv.user_weights, engine, user_data);
  if (!conv.weights_reorder) return user;
  memory mine(conv.weights, engine, scratch[1]);
  if (user_to_primitive) {
    memory pad(conv.reorder_scratchpad, engine, scratch[2]);
    conv.weights_reorder->execute(thread_stream(),
                                  {{DNNL_ARG_FROM, user}, {DNNL_ARG_TO, mine}, {DNNL_ARG_SCRATCHPAD, pad}});
  }
  return mine;
}

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer bias, ffi::Result<ffi::AnyBuffer> y,
                   int64_t stride_h, int64_t stride_w, int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                   int64_t pad_right) {
  Geometry g;
  const bool has_bias = bias.element_count() > 0;
  if (auto error = make_geometry(x, w, true, *y, has_bias, stride_h, stride_w, pad_top, pad_bottom, pad_left,
                                 pad_right, &g)) {
    return *error;
  }
  return run([&] {
    // Held until the wait below, whatever the cache evicts meanwhile.
    const auto held = cached_conv(Pass::kForward, g);
    const Conv& conv = *held;
    auto& engine = cpu_engine();
    const CallScratch scratch = call_scratch(conv);
    memory weights = weights_for_primitive(conv, w.untyped_data(), true, scratch);
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC, memory(conv.src, engine, x.untyped_data())},
        {DNNL_ARG_WEIGHTS, weights},
        {DNNL_ARG_DST, memory(conv.dst, engine, y->untyped_data())},
        {DNNL_ARG_SCRATCHPAD, memory(conv.scratchpad, engine, scratch[0])}};
    if (has_bias) args[DNNL_ARG_BIAS] = memory(conv.bias, engine, bias.untyped_data());
    conv.primitive.execute(thread_stream(), args);
    thread_stream().wait();
  });
}

ffi::Error BackwardData(ffi::AnyBuffer dy, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx, int64_t stride_h,
                        int64_t stride_w, int64_t pad_top, int64_t pad_bottom, int64_t pad_left, int64_t pad_right) {
  Geometry g;
  if (auto error = make_geometry(*dx, w, true, dy, false, stride_h, stride_w, pad_top, pad_bottom, pad_left,
                                 pad_right, &g)) {
    return *error;
  }
  return run([&] {
    // Held until the wait below, whatever the cache evicts meanwhile.
    const auto held = cached_conv(Pass::kBackwardData, g);
    const Conv& conv = *held;
    auto& engine = cpu_engine();
    const CallScratch scratch = call_scratch(conv);
    memory weights = weights_for_primitive(conv, w.untyped_data(), true, scratch);
    conv.primitive.execute(thread_stream(),
                           {{DNNL_ARG_DIFF_DST, memory(conv.dst, engine, dy.untyped_data())},
                            {DNNL_ARG_WEIGHTS, weights},
                            {DNNL_ARG_DIFF_SRC, memory(conv.src, engine, dx->untyped_data())},
                            {DNNL_ARG_SCRATCHPAD, memory(conv.scratchpad, engine, scratch[0])}});
    thread_stream().wait();
  });
}

ffi::Error BackwardWeights(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                           ffi::Result<ffi::AnyBuffer> dbias, int64_t stride_h, int64_t stride_w, int64_t pad_top,
                           int64_t pad_bottom, int64_t pad_left, int64_t pad_right) {
  Geometry g;
  const bool has_bias = dbias->element_count() > 0;
  if (auto error = make_geometry(x, *dw, true, dy, has_bias, stride_h, stride_w, pad_top, pad_bottom, pad_left,
                                 pad_right, &g)) {
    return *error;
  }
  return run([&] {
    // Held until the wait below, whatever the cache evicts meanwhile.
    const auto held = cached_conv(Pass::kBackwardWeights, g);
    const Conv& conv = *held;
    auto& engine = cpu_engine();
    const CallScratch scratch = call_scratch(conv);
    memory user(conv.user_weights, engine, dw->untyped_data());
    memory weights = weights_for_primitive(conv, dw->untyped_data(), false, scratch);
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC, memory(conv.src, engine, x.untyped_data())},
        {DNNL_ARG_DIFF_DST, memory(conv.dst, engine, dy.untyped_data())},
        {DNNL_ARG_DIFF_WEIGHTS, weights},
        {DNNL_ARG_SCRATCHPAD, memory(conv.scratchpad, engine, scratch[0])}};
    if (has_bias) args[DNNL_ARG_DIFF_BIAS] = memory(conv.bias, engine, dbias->untyped_data());
    conv.primitive.execute(thread_stream(), args);
    if (conv.weights_reorder) {
      memory pad(conv.reorder_scratchpad, engine, scratch[2]);
      conv.weights_reorder->execute(thread_stream(),
                                    {{DNNL_ARG_FROM, weights}, {DNNL_ARG_TO, user}, {DNNL_ARG_SCRATCHPAD, pad}});
    }
    thread_stream().wait();
  });
}

}  // namespace

// Whether oneDNN builds all three passes of a small 3x3 convolution in this dtype (0: float32, 1: bfloat16) on this
// CPU: 1 or 0. oneDNN has bfloat16 convolutions only where the CPU has bfloat16 instructions (AVX-512 BF16, AMX,
// AVX2 VNNI-2); elsewhere it builds none, and Python keeps those runs on XLA's convolutions.
extern "C" int OnednnConvBuilds(int bfloat16) {
  Geometry g{{2, 8, 6, 6}, {8, 8, 3, 3}, {2, 8, 6, 6}, {1, 1}, {1, 1}, {1, 1},
             bfloat16 ? memory::data_type::bf16 : memory::data_type::f32, false};
  try {
    for (Pass pass : {Pass::kForward, Pass::kBackwardData, Pass::kBackwardWeights}) cached_conv(pass, g);
    return 1;
  } catch (...) {
    return 0;
  }
}

#define CONV_ATTRS                          \
  .Attr<int64_t>("stride_h")                \
      .Attr<int64_t>("stride_w")            \
      .Attr<int64_t>("pad_top")             \
      .Attr<int64_t>("pad_bottom")          \
      .Attr<int64_t>("pad_left")            \
      .Attr<int64_t>("pad_right")

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() CONV_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBackwardData, BackwardData,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  CONV_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBackwardWeights, BackwardWeights,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() CONV_ATTRS);
