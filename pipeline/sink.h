// Where the executor delivers a plan's tensors: keyed by tensor, not by file. For each selected
// tensor the executor makes `write` calls that together cover its bytes exactly once — in any
// order, from any worker thread, several at once — then one `complete` call after the last of
// them has returned. The file sink maps a tensor to its shard and offset itself; other sinks
// (memory, null, the public API's) never see files.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "formats/writer.h"
#include "pipeline/plan.h"

namespace ckpt {

class TensorSink {
 public:
  virtual ~TensorSink() = default;
  // Bytes [offset, offset + len) of plan.tensors[tensor]; `data` is valid only during the call.
  virtual void write(size_t tensor, uint64_t offset, const void* data, uint64_t len) = 0;
  virtual void complete(size_t /*tensor*/) {}
  // A device sink (one that `on_device`) gets every tensor's bytes in device memory instead, from
  // a run with a device stage (ExecOptions::device): bytes [offset, offset + len) at device
  // pointer `data`, ready in the order of `stream` (a cudaStream_t). The sink enqueues its use of
  // them on that stream; the executor waits for the stream before it reuses `data`.
  virtual bool on_device() const { return false; }
  virtual void write_device(size_t tensor, uint64_t offset, const void* data, uint64_t len, void* stream);
  // True when writes to one shard of the plan serialise inside the sink anyway (a file's writes
  // take its lock): the executor then lets one thread at a time write each shard.
  virtual bool serial_shards() const { return false; }
};

// Each tensor's bytes at its shard and offset, through one ShardSink per shard of the plan.
class ShardFileSink final : public TensorSink {
 public:
  ShardFileSink(const Plan& plan, const std::vector<std::unique_ptr<ShardSink>>& shards)
      : plan_(plan), shards_(shards) {}
  void write(size_t tensor, uint64_t offset, const void* data, uint64_t len) override {
    const PlannedTensor& t = plan_.tensors[tensor];
    shards_[t.shard]->write(t.offset + offset, data, len);
  }
  bool serial_shards() const override { return true; }

 private:
  const Plan& plan_;
  const std::vector<std::unique_ptr<ShardSink>>& shards_;
};

// Discards everything: `convert --sink null` measures the pipeline without storage. With a device
// stage it discards the tensors where they are made, in device memory (`on_device`): what loading
// into a device sink costs, with nothing copied back.
class NullTensorSink final : public TensorSink {
 public:
  explicit NullTensorSink(bool on_device = false) : on_device_(on_device) {}
  void write(size_t, uint64_t, const void*, uint64_t) override {}
  bool on_device() const override { return on_device_; }
  void write_device(size_t, uint64_t, const void*, uint64_t, void*) override {}

 private:
  bool on_device_;
};

}  // namespace ckpt
