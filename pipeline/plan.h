// The plan: computed from headers alone, it is the single source of truth for a conversion —
// every output tensor's name, dtype, shape, shard and byte offset, and the input tensor and
// transform that produce it. Execution, progress and the output index all derive from it; no
// tensor data is read to make it, so a full-size model plans in well under a second and every
// error that can be known from headers (a missing scale, a scale shape that fits no scheme) is
// raised before a byte is written.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "formats/checkpoint.h"
#include "formats/writer.h"
#include "transforms/fp8.h"
#include "transforms/scheme.h"

namespace ckpt {

enum class Direction : uint8_t { Dequant, Native, Hf };
std::optional<Direction> parse_direction(std::string_view s);

enum class Op : uint8_t {
  Copy,     // bytes unchanged
  Dequant,  // FP8 weight × scale grid -> output dtype
};

// How one output tensor's bytes are made from the input.
struct Source {
  Op op = Op::Copy;
  TensorRef input;
  TensorRef scale;        // Dequant only
  DequantScheme scheme;   // Dequant only
  Fp8 format = Fp8::E4M3; // Dequant only
};

struct PlannedTensor {
  OutTensor out;
  uint32_t shard = 0;
  uint64_t offset = 0;  // absolute byte offset in the shard file
  uint64_t nbytes = 0;
  Source src;
};

struct Plan {
  Direction direction = Direction::Dequant;
  OutType dtype = OutType::BF16;
  std::vector<PlannedTensor> tensors;  // in write order
  std::vector<ShardLayout> shards;
  std::vector<std::string> dropped;    // input tensors deliberately not written
  uint64_t input_bytes = 0;            // bytes the conversion reads
  uint64_t output_bytes = 0;           // tensor bytes it writes
  uint64_t dequantized = 0;            // tensors dequantized
};

struct PlanOptions {
  Direction direction = Direction::Dequant;
  OutType dtype = OutType::BF16;
  uint64_t max_shard_size = 5'000'000'000;
};

Plan make_plan(const Checkpoint& ckpt, const PlanOptions& options);

// Splits planned tensors into shards in order, each at most `max_shard_size` tensor bytes unless
// one tensor alone is larger, and fills in shard, offset and the shard layouts.
void assign_shards(Plan& plan, uint64_t max_shard_size);

// "5GB" (10^9), "512MiB" (2^20), "1.5G", "4096": bytes. Throws a usage error on anything else.
uint64_t parse_size(std::string_view text, std::string_view option);

}  // namespace ckpt
