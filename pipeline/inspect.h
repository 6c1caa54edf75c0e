// `ckptconv inspect`: what a checkpoint holds — every tensor's dtype, shape, size and file, the
// dequantization scheme detected for each FP8 weight (or why none fits), and totals by dtype.
// Reads headers only.
//
// A full-size model has about 100,000 tensors: the report points at the checkpoint's tensors
// rather than copying them, and both renderings go to a stream as they are made — building the
// JSON document first took three times the memory of opening the checkpoint.
#pragma once

#include <cstdint>
#include <map>
#include <ostream>
#include <string>
#include <vector>

#include "formats/checkpoint.h"

namespace ckpt {

struct InspectRow {
  const TensorRef* tensor = nullptr;  // into the inspected Checkpoint, which outlives the report
  std::string quant;  // for FP8 weights: "block 128x128", "mxfp8 1x32", "per-tensor", or the problem
};

struct InspectReport {
  std::string path;
  size_t files = 0;
  std::vector<InspectRow> rows;  // one per tensor, in Checkpoint::tensors() order
  uint64_t bytes = 0, params = 0, fp8_weights = 0, fp8_problems = 0;
  std::map<std::string, std::pair<uint64_t, uint64_t>> by_dtype;  // dtype -> (tensors, bytes)
};

InspectReport inspect(const Checkpoint& ck, const std::string& path);
// A table with a line per tensor, then the totals.
void write_inspect_text(const InspectReport& r, std::ostream& out);
// The report as a JSON document, byte for byte as nlohmann's dump(2) prints it, and a newline.
// A path or file name that is not UTF-8 throws nlohmann's type_error, as dump does, before the
// first byte is written (tensor names are UTF-8: parse_header validates the header).
void write_inspect_json(const InspectReport& r, std::ostream& out);

}  // namespace ckpt
