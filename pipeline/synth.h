// Synthetic HF-layout checkpoints for tests and benchmarks. `synth` writes, for one family of
// SPEC §1, a directory that looks like the hub release: the family's tensor names and dtypes
// (FP8 weights with their scale partners in the family's scheme, BF16 norms and embeddings, F32
// router weights…), a `config.json` whose fields match the tensor shapes, a
// `tokenizer_config.json`, and shards with `model.safetensors.index.json`. FP8 codes are drawn
// from a seeded generator (never NaN), scales are positive and finite, so the output is
// deterministic for a given option set and converts without error. Generation is parallel and
// streams through `ShardWriter`, so tens of GB take seconds to minutes and little memory.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace ckpt {

struct SynthOptions {
  std::string family;            // minimax_m2, minimax_m3, minimax_m3_vl, mistral3_vlm, …
  std::filesystem::path out;
  uint32_t layers = 2;
  uint32_t experts = 4;
  uint64_t hidden = 256;
  uint64_t inter = 128;
  uint32_t shards = 2;
  uint64_t seed = 1;
  uint64_t target_bytes = 0;     // when non-zero, `layers` is chosen to reach about this size
  unsigned threads = 0;          // 0: all cores
  bool sparse = false;           // headers and file sizes only: all data reads as zeros and
                                 // takes no disk, for planning and null-sink runs at full size
};

struct SynthSummary {
  uint64_t tensors = 0;
  uint64_t bytes = 0;            // sum of tensor bytes
  uint32_t layers = 0;
  uint32_t shards = 0;
};

SynthSummary synth(const SynthOptions& options);

// The family names `synth` knows, in SPEC order: every family of the converter
// (transforms/family.h's family_names()).
const std::vector<std::string>& synth_families();

}  // namespace ckpt
