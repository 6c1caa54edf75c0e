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

 private:
  const Plan& plan_;
  const std::vector<std::unique_ptr<ShardSink>>& shards_;
};

// Discards everything: `convert --sink null` measures the pipeline without storage.
class NullTensorSink final : public TensorSink {
 public:
  void write(size_t, uint64_t, const void*, uint64_t) override {}
};

}  // namespace ckpt
