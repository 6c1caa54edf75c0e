// `ckptconv inspect`: what a checkpoint holds — every tensor's dtype, shape, size and file, the
// dequantization scheme detected for each FP8 weight (or why none fits), and totals by dtype.
// Reads headers only.
#pragma once

#include <nlohmann/json.hpp>

#include <map>
#include <string>
#include <vector>

#include "formats/checkpoint.h"

namespace ckpt {

struct InspectRow {
  std::string name, file;
  DType dtype;
  std::vector<uint64_t> shape;
  uint64_t bytes = 0;
  std::string quant;  // for FP8 weights: "block 128x128", "mxfp8 1x32", "per-tensor", or the problem
};

struct InspectReport {
  std::string path;
  size_t files = 0;
  std::vector<InspectRow> rows;
  uint64_t bytes = 0, params = 0, fp8_weights = 0, fp8_problems = 0;
  std::map<std::string, std::pair<uint64_t, uint64_t>> by_dtype;  // dtype -> (tensors, bytes)
};

InspectReport inspect(const Checkpoint& ck, const std::string& path);
std::string inspect_text(const InspectReport& r);
nlohmann::ordered_json inspect_json(const InspectReport& r);

}  // namespace ckpt
