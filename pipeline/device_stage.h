// The transform stage on an accelerator. The executor (pipeline/executor.h) hands it the items of
// the tensors it `runs`; cuda/device_stage.h implements it with CUDA kernels, pinned staging and
// one stream per slot. The core library knows only this interface, so it builds and links without
// CUDA; a caller that has a device stage passes it in ExecOptions::device.
//
// A slot is what one item in flight holds: a host output buffer (pinned) that the write stage
// writes from, a device output buffer, and a stream. Every item in flight of a run with a device
// stage holds a slot — CPU-produced items too, which write into its host buffer — so the slots
// (and not the executor's pool) are the run's buffers, within the same memory budget.
#pragma once

#include <cstdint>
#include <string>

#include "pipeline/inputs.h"
#include "pipeline/plan.h"
#include "pipeline/produce.h"

namespace ckpt {

struct DeviceStats {
  std::string name;            // "cuda:0 (NVIDIA H200)"
  uint64_t items = 0;          // items transformed on the device
  uint64_t h2d_bytes = 0, d2h_bytes = 0;
  uint64_t device_bytes = 0;   // device memory the stage allocated (peak)
  uint64_t pinned_bytes = 0;   // pinned host memory it allocated (peak)
  double seconds = 0;          // host time in the stage (staging, enqueueing), summed over threads
  double setup_seconds = 0;    // of which allocating streams, pinned and device buffers
  double init_seconds = 0;     // starting the device's context, before the run
};

class DeviceStage {
 public:
  struct Slot {
    uint8_t* host = nullptr;    // `out_bytes` of pinned host memory, once host_buffer() was asked
    uint8_t* device = nullptr;  // `out_bytes` of device memory
    void* stream = nullptr;           // the slot's stream (a cudaStream_t)
  };

  virtual ~DeviceStage() = default;

  // Before a run: each item writes at most `out_bytes` (an FP8 export's scales from `scales_at`
  // on). Slots are made on first use, so there are as many as items in flight at once.
  virtual void begin(uint64_t out_bytes, uint64_t scales_at) = 0;
  // Whether the items of `t` are transformed here (the others run on the CPU).
  virtual bool runs(const PlannedTensor& t) const = 0;

  virtual Slot* acquire() = 0;
  virtual void release(Slot* slot) = 0;
  // The slot's host buffer, allocated on first use: a device sink never needs one for items the
  // device makes.
  virtual uint8_t* host_buffer(Slot& slot) = 0;

  // Output elements [first, last) of plan.tensors[index] (an FP8 export's codes, and the scales
  // it determines from scales_at) into the slot's device buffer, and — with `to_host` — its host
  // buffer. Returns once the work is enqueued on the slot's stream (`wait` for it); an FP8 export
  // returns the scale elements it will have written.
  virtual ScaleRange transform(Slot& slot, const Plan& plan, size_t index, uint64_t first, uint64_t last,
                               const ItemInputs& in, AmaxCache& amax, bool to_host) = 0;
  // `len` host bytes to byte `at` of the slot's device buffer (for a device sink, of an item the
  // CPU produced or copied); returns when they are there.
  virtual void upload(Slot& slot, uint64_t at, const uint8_t* host, uint64_t len) = 0;
  // Waits for the work enqueued on the slot's stream: the transform's, then a device sink's.
  virtual void wait(Slot& slot) = 0;

  virtual DeviceStats stats() const = 0;
};

// Whether a plan has work a device stage is for (`--device auto`): FP8 to dequantize or export,
// or experts to move into or out of grouped slots.
bool wants_device(const Plan& plan);

}  // namespace ckpt
