// The plan: computed from headers alone, it is the single source of truth for a conversion —
// every output tensor's name, dtype, shape, shard and byte offset, and the input tensor and
// transform that produce it. Execution, progress and the output index all derive from it; no
// tensor data is read to make it, so a full-size model plans in well under a second and every
// error that can be known from headers (a missing scale, a scale shape that fits no scheme) is
// raised before a byte is written.
#pragma once

#include <cstdint>
#include <map>
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

// One rectangular part of an output tensor, made from one input tensor. The input is seen as a
// matrix [rows = shape[0], cols = the rest] and the output as [PlannedTensor::rows × row_len].
// The piece reads the input region rows [in_row0, +rows) × cols [in_col0, +cols) and writes it at
// output (out_row0, out_col0) — as is, or transposed (output (r, c) = input (c, r)) — converting
// each element to the output dtype: dequantized under `scale` for FP8 inputs, cast otherwise.
struct Piece {
  TensorRef input;
  TensorRef scale;          // FP8 inputs only
  DequantScheme scheme;     // FP8 inputs only
  Fp8 format = Fp8::E4M3;   // FP8 inputs only
  uint64_t in_cols = 1;     // row length of the input matrix
  uint64_t in_row0 = 0, in_col0 = 0, rows = 0, cols = 0;
  uint64_t out_row0 = 0, out_col0 = 0;
  bool transpose = false;
  uint64_t out_rows() const { return transpose ? cols : rows; }
  uint64_t out_cols() const { return transpose ? rows : cols; }
};

enum class QuantizeMode : uint8_t { None, Placeholder, Real };

struct PlannedTensor {
  OutTensor out;
  uint32_t shard = 0;
  uint64_t offset = 0;  // absolute byte offset in the shard file
  uint64_t nbytes = 0;
  uint64_t rows = 1, row_len = 1;  // the output as a matrix
  std::vector<Piece> pieces;       // tile the output exactly
  // Work items never straddle a multiple of `segment_rows` output rows; a segment's inputs are
  // released when its last item is written. Grouped experts use one segment per expert slot.
  uint64_t segment_rows = 0;       // 0: the whole tensor is one segment
  // FP8 export (--to hf --quantize): this tensor holds the e4m3 codes of its pieces' values, or
  // — with `scale_of` — the scales of the planned tensor at that index, in `qscheme`. A weight's
  // scale tensor is planned right after it (scale_tensor_of).
  QuantizeMode quantize = QuantizeMode::None;
  ScaleScheme qscheme = ScaleScheme::Block;
  int64_t scale_of = -1;
  bool dequantizes() const;
  // A single untransformed piece: the bytes are written straight from the input map.
  bool is_copy() const;
};

struct Plan {
  OutType dtype = OutType::BF16;
  std::vector<PlannedTensor> tensors;  // in write order
  std::vector<ShardLayout> shards;
  std::vector<std::string> dropped;    // input tensors deliberately not written
  uint64_t input_bytes = 0;            // bytes the conversion reads
  uint64_t output_bytes = 0;           // tensor bytes it writes
  uint64_t dequantized = 0;            // tensors dequantized
  uint64_t quantized = 0;              // tensors written as FP8 (hf --quantize)
  std::optional<ScaleScheme> export_scheme;  // set when FP8 was exported
  // What every shard's "__metadata__" holds besides "format": "pt": the input's own entries.
  std::map<std::string, std::string> metadata;
};

enum class MtpMode : uint8_t { Auto, On, Off };

struct PlanOptions {
  Direction direction = Direction::Dequant;
  OutType dtype = OutType::BF16;
  uint64_t max_shard_size = 5'000'000'000;
  std::string family = "auto";          // native / hf: a family name, or auto (config.json)
  MtpMode mtp = MtpMode::Auto;
  std::optional<uint32_t> ep_rank;      // with ep_size > 1: write this rank's experts only
  uint32_t ep_size = 1;
  QuantizeMode quantize = QuantizeMode::None;  // hf: FP8 export of the family's FP8 keys
};

// The input rectangle rows [row0, row1) × columns [col0, col1) of piece `p` that output elements
// [first, last) of `t` read (empty when they do not touch the piece): for a transposed piece every
// input row of the piece and the columns that are the item's output rows; otherwise the input
// rows of the item's output rows, whole piece width, or a slice of one row.
struct InputRect {
  uint64_t row0 = 0, row1 = 0, col0 = 0, col1 = 0;
  bool empty() const { return row0 >= row1 || col0 >= col1; }
};
InputRect input_rect(const PlannedTensor& t, const Piece& p, uint64_t first, uint64_t last);

// The index of the `_scale_inv` tensor that FP8 export writes for weight `i`, or -1.
int64_t scale_tensor_of(const Plan& plan, size_t i);

// Expert parallelism's range rule (SPEC §3): rank r of n holds experts [first, last).
void ep_range(uint32_t experts, uint32_t rank, uint32_t size, uint32_t& first, uint32_t& last);

struct FamilyRules;
// The family a conversion uses: `name`, or with "auto" the one the checkpoint's config.json names.
const FamilyRules& resolve_family(const Checkpoint& ck, std::string_view name);

// The HF -> native plan of a model family (pipeline/plan_native.cc), and its inverse
// (pipeline/plan_hf.cc).
void plan_native(const Checkpoint& ck, const PlanOptions& options, Plan& plan);
void plan_hf(const Checkpoint& ck, const PlanOptions& options, Plan& plan);

Plan make_plan(const Checkpoint& ckpt, const PlanOptions& options);

// In a run that dequantizes (and consumes `_scale_inv` tensors): refuses, exit 3, a tensor of a
// copy-only dtype (F8_E4M3FNUZ, F4, …) that has a `_scale_inv` partner — it would need
// dequantizing, and copying it while its scale is consumed would write FP8 bytes without it.
void refuse_scaled_copy_only(const Checkpoint& ck, const TensorRef& t);

// A whole input tensor as the only piece of an output of the same shape in `dtype`.
PlannedTensor whole_tensor(std::string name, const TensorRef& input, DType dtype);
// The same, dequantized under `scale`.
PlannedTensor dequantized_tensor(std::string name, const TensorRef& weight, const TensorRef& scale,
                                 const DequantScheme& scheme, DType dtype);

// Splits planned tensors into shards in order, each at most `max_shard_size` tensor bytes unless
// one tensor alone is larger, and fills in shard, offset and the shard layouts (with the plan's
// metadata).
void assign_shards(Plan& plan, uint64_t max_shard_size);

// "5GB" (10^9), "512MiB" (2^20), "1.5G", "4096": bytes. Throws a usage error on anything else.
uint64_t parse_size(std::string_view text, std::string_view option);

}  // namespace ckpt
