// The transform stage of the executor: an item's output bytes computed from the pieces of its
// tensor. Untransposed pieces convert runs of input rows (dequantized under their scale grid, or
// cast); transposed pieces convert 32×256 tiles of the input and transpose them into place
// (the group node: experts into their slots, or back out of them); FP8 export derives codes and
// scales from the same float32 values. All scratch memory is the caller's, reused across items.
#pragma once

#include <cstdint>
#include <vector>

#include <oneapi/tbb/collaborative_call_once.h>

#include "pipeline/inputs.h"
#include "pipeline/plan.h"

namespace ckpt {

struct Scratch {
  std::vector<float> scales;
  std::vector<uint8_t> tile;
  std::vector<float> values;  // values of a tensor being quantized, as float32
  std::vector<uint16_t> half; // or as BF16, when that is its source's dtype
  IoMode io = IoMode::Mmap;   // how a per-tensor amax pass reads its weight (values_of)
  ItemInputs side;            // their staged inputs under IoMode::Pread
};

// Writes output elements [first, last) of `t`, as `as` elements (the output dtype, or F32 for
// quantization), into `out`, reading the inputs where `in` has them (staged or mapped).
void produce(const PlannedTensor& t, DType as, uint64_t first, uint64_t last, uint8_t* out, Scratch& s,
             const ItemInputs& in);

// FP8 export (--to hf --quantize): a weight's items produce its e4m3 codes and, in the same pass
// over the same float32 values, the elements of its `_scale_inv` tensor (the planned tensor after
// it) that their rows determine — block 128×128: whole 128-row bands, MXFP8: whole rows,
// per-tensor: the one scale, by the item that starts the tensor. The scale tensor has no items
// of its own.
struct ScaleRange {
  uint64_t first = 0, last = 0;  // elements of the scale tensor
};
// The scale elements that weight elements [first, last) determine (items respect the scheme's rows).
ScaleRange scale_elements(const PlannedTensor& weight, uint64_t first, uint64_t last);

// The amax of whole tensors, for per-tensor FP8 export: a first pass over the tensor's rows, made
// once, by the first item that needs it, in parallel with every thread that waits for it; no
// tensor is ever held whole. Then each item encodes its rows: at most two passes over a
// per-tensor weight, because its scale depends on every element; block and MXFP8 weights take
// one, since their scales depend only on the rows of the item.
class AmaxCache {
 public:
  AmaxCache(size_t n, IoMode io) : once_(n), value_(n, 0.0f), io_(io) {}
  float get(const Plan& plan, size_t i);

 private:
  std::vector<oneapi::tbb::collaborative_once_flag> once_;
  std::vector<float> value_;
  IoMode io_;
};

// FP8 export of weight elements [first, last) of plan.tensors[index]: codes into `codes`, the
// scale elements it determines (returned) as the scale tensor's bytes into `scales`.
ScaleRange produce_quantized(const Plan& plan, size_t index, uint64_t first, uint64_t last, uint8_t* codes,
                             uint8_t* scales, Scratch& s, AmaxCache& amax, const ItemInputs& in);

}  // namespace ckpt
