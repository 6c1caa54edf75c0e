// Executes a plan: a oneTBB flow graph streams work items — row ranges of output tensors, each at
// most one chunk of output bytes — through
//
//   source -> limiter -> read -> transform -> await -> write --(token back)--> limiter
//
// `read` asks the kernel for the item's input pages (or, under `--io pread`, reads them into a
// pooled buffer: pipeline/inputs.h), `transform` turns them into output bytes (dequantized,
// grouped, cast or FP8-exported) in a pooled buffer — copies skip it and are written straight
// from the input map — or, with a device stage (pipeline/device_stage.h), enqueues that work on
// the item's GPU slot; `await` hands such items to a waiter thread until their stream is done
// (an async_node: no worker sleeps on a GPU), and `write` puts the bytes at their final offset
// in the output shard (or hands device memory to a device sink), then releases the input pages
// and hands the buffer back. The limiter admits only as many items as there are buffers, so the
// bytes in flight are bounded by the memory budget whatever the model size; a 4 GB tensor is just
// many items. Renaming happens at plan time (names live in the plan), so it needs no node.
// Items are dealt round-robin from as many output shards as there are threads, because writes
// into one file serialise on its lock.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "formats/writer.h"
#include "pipeline/device_stage.h"
#include "pipeline/inputs.h"
#include "pipeline/plan.h"
#include "pipeline/sink.h"

namespace ckpt {

struct ExecOptions {
  unsigned threads = 0;                 // 0: all cores
  uint64_t memory_budget = 1ull << 30;  // bytes of input + output held by items in flight
  IoMode io = IoMode::Mmap;  // inputs not in memory (remote) are read with pread whatever this says
  // Called from a worker thread a few times a second, and once at the end, with the output bytes
  // delivered so far and the selection's total.
  std::function<void(uint64_t done, uint64_t total)> on_progress;
  // The plan's tensors to write, by index (empty: all). Unselected tensors are not written, and
  // read only where a selected one needs them (an FP8 export's scales come from its weight).
  std::vector<bool> selected;
  // Output shards whose items are dealt at once (0: as many as threads). Files want several —
  // writes into one file serialise on its lock; a sink that assembles whole tensors in memory
  // wants 1, so that items come in plan order and few tensors are half-assembled at a time.
  unsigned lanes = 0;
  // Where the transform runs the tensors it can (pipeline/device_stage.h); null: the CPU. A
  // device sink (TensorSink::on_device) needs one.
  DeviceStage* device = nullptr;
};

struct ExecStats {
  uint64_t items = 0;
  uint64_t chunk_bytes = 0;   // output bytes per item (at most)
  uint64_t buffers = 0;       // items admitted at once
  uint64_t buffers_allocated = 0;  // output buffers the run actually needed (<= buffers)
  double read_s = 0, transform_s = 0, write_s = 0;  // summed over threads
  uint64_t bytes_read = 0;    // by pread (0 under mmap: the page faults are not counted)
  unsigned threads = 0;
  std::optional<DeviceStats> device;  // with a device stage
};

// The chunk size and number of items in flight chosen for a budget and thread count.
void size_pipeline(uint64_t memory_budget, unsigned threads, uint64_t& chunk_bytes, uint64_t& items);

// Runs the plan. An input file that is truncated, rewritten or replaced while it is read is an
// InvalidInput error (formats/mapped_file.h), raised before the caller commits anything.
ExecStats execute(const Plan& plan, TensorSink& sink, const ExecOptions& options);

}  // namespace ckpt
