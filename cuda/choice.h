// Where a run's transform goes, from the spelling users write: `--device` on the command line,
// Options::device in the library. "cpu": the CPU. "cuda" or "cuda:N": that GPU, or Error(Usage)
// at once — before anything is planned — saying why it cannot be used (no CUDA in this build, no
// driver, no device, too old a device). "auto": the GPU when this build has CUDA, the plan has
// work for it (pipeline/device_stage.h: wants_device) and the device is usable; else the CPU.
// Bare "cuda" and "auto" take device 0 — or, for one of several processes on a node, device
// local_rank mod the node's device count, so that the ranks spread over its GPUs.
// Header-only, so that it compiles in every client whether or not the build found CUDA
// (CKPT_HAVE_CUDA comes with the ckpt_cuda library).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "formats/error.h"
#include "pipeline/device_stage.h"
#if defined(CKPT_HAVE_CUDA)
#include "cuda/device.h"
#include "cuda/device_stage.h"
#endif

namespace ckpt {

using DeviceChoice = std::function<std::shared_ptr<DeviceStage>(const Plan&)>;

// N of "cuda" (0) or "cuda:N"; nullopt for anything else.
inline std::optional<int> cuda_index(const std::string& v) {
  if (v == "cuda") return 0;
  if (v.rfind("cuda:", 0) != 0 || v.size() == 5 || v.size() > 8) return std::nullopt;
  for (char c : v.substr(5))
    if (c < '0' || c > '9') return std::nullopt;
  return std::stoi(v.substr(5));
}

// "auto", "cpu", "cuda" or "cuda:N".
inline bool is_device_spelling(const std::string& v) { return v == "auto" || v == "cpu" || cuda_index(v).has_value(); }

// Test hooks of the device stage (cuda::StageOptions): staging bytes per slot, injected failure.
struct DeviceHooks {
  uint64_t staging_bytes = 0, fail_at_batch = 0;
};

// The device a bare "cuda" or "auto" takes: local_rank mod `count` (0 without a local rank).
inline int device_for(std::optional<uint32_t> local_rank, int count) {
  return local_rank && count > 0 ? static_cast<int>(*local_rank % static_cast<uint32_t>(count)) : 0;
}

// The chooser for `device`; empty for the CPU.
inline DeviceChoice device_choice(const std::string& device, const DeviceHooks& hooks = {},
                                  std::optional<uint32_t> local_rank = std::nullopt) {
  const auto index = cuda_index(device);
  if (device == "cpu") return {};
  if (!is_device_spelling(device)) fail_usage("device '{}' is not one of auto, cpu, cuda[:N]", device);
#if defined(CKPT_HAVE_CUDA)
  cuda::StageOptions so;
  so.staging_bytes = hooks.staging_bytes;
  so.fail_at_batch = hooks.fail_at_batch;
  so.device = device == "cuda" || device == "auto" ? device_for(local_rank, cuda::device_count()) : index.value_or(0);
  if (index) {
    cuda::usable_device(so.device);
    return [so](const Plan&) { return std::shared_ptr<DeviceStage>(cuda::open_stage(so)); };
  }
  return [so](const Plan& plan) -> std::shared_ptr<DeviceStage> {
    if (!wants_device(plan) || !cuda::any_usable_device()) return nullptr;
    return cuda::open_stage(so);
  };
#else
  (void)hooks, (void)local_rank;
  if (index)
    fail_usage("--device {}: this build has no CUDA support (no CUDA compiler at build time); use --device cpu", device);
  return {};
#endif
}

}  // namespace ckpt
