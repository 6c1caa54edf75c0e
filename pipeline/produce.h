// The transform stage of the executor: an item's output bytes computed from the pieces of its
// tensor. Untransposed pieces convert runs of input rows (dequantized under their scale grid, or
// cast); transposed pieces convert 32-row tiles of the input band and transpose them into place
// (the group node: experts into their slots, or back out of them); FP8 export derives codes and
// scales from the same float32 values. All scratch memory is the caller's, reused across items.
#pragma once

#include <cstdint>
#include <mutex>
#include <vector>

#include "pipeline/inputs.h"
#include "pipeline/plan.h"

namespace ckpt {

struct Scratch {
  std::vector<float> scales;
  std::vector<uint8_t> tile;
  std::vector<float> values;  // float32 values of a tensor being quantized
  IoMode io = IoMode::Mmap;   // how FP8 export reads the tensors it derives scales from
  ItemInputs side;            // their staged inputs under IoMode::Pread
};

// Writes output elements [first, last) of `t`, as `as` elements (the output dtype, or F32 for
// quantization), into `out`, reading the inputs where `in` has them (staged or mapped).
void produce(const PlannedTensor& t, DType as, uint64_t first, uint64_t last, uint8_t* out, Scratch& s,
             const ItemInputs& in);

// The amax of whole tensors, for per-tensor FP8 export: computed once, by the first item that
// needs it, in chunks so that no tensor is ever held whole.
class AmaxCache {
 public:
  explicit AmaxCache(size_t n) : once_(n), value_(n, 0.0f) {}
  float get(const Plan& plan, size_t i, uint64_t chunk_elems, Scratch& s);

 private:
  std::vector<std::once_flag> once_;
  std::vector<float> value_;
};

// FP8 export of one item of plan.tensors[index]: e4m3 codes of the weight's values, or its scales.
void produce_quantized(const Plan& plan, size_t index, uint64_t first, uint64_t last, uint8_t* out, Scratch& s,
                       AmaxCache& amax, uint64_t chunk_elems, const ItemInputs& in);

}  // namespace ckpt
