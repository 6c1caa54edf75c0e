// The CUDA transform stage (pipeline/device_stage.h) on one device. Each slot owns a stream, a
// pinned staging buffer and device buffers; an item's input rectangles are copied from the maps
// (or pread buffers) into the staging buffer, sent to the device asynchronously on the slot's
// stream, converted there by cuda/kernels.h — the CPU path's element functions, so bit-identical —
// and, for a host sink, copied back into the slot's pinned output. Items on different slots run
// on different streams, so one item's copies overlap another's kernels while the CPU threads
// read and write; an item bigger than the staging buffer goes through it in batches.
#pragma once

#include <cstdint>
#include <memory>

#include "pipeline/device_stage.h"

namespace ckpt::cuda {

struct StageOptions {
  int device = 0;
  // Pinned staging bytes per slot (0: as large as an item's output, at least 1 MiB). Tests set it
  // small to send items through in many batches.
  uint64_t staging_bytes = 0;
  // Tests: fail with a CUDA error (exit 4) at the n-th batch sent to the device (0: never).
  uint64_t fail_at_batch = 0;
};

// The stage on `options.device`; Error(Usage) when it cannot be used (cuda/device.h says why).
std::unique_ptr<DeviceStage> open_stage(const StageOptions& options);

}  // namespace ckpt::cuda
