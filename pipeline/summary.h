// The `convert --json` summary: the command line prints it, and `ckptconv bench`, which runs
// each conversion as a child process to measure its own peak RSS, reads it back. One schema, in
// one place, so the two cannot drift apart.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

#include "pipeline/convert.h"

namespace ckpt {

// What the summary says about the run besides its numbers: the command line's own spellings.
struct SummaryLabels {
  std::string input, output, direction, dtype, io;
};

nlohmann::ordered_json summary_json(const ConvertSummary& s, const SummaryLabels& labels);

// The numbers of a summary printed by summary_json. Internal error if `text` is not one.
ConvertSummary summary_from_json(std::string_view text);

}  // namespace ckpt
