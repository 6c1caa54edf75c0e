#include "pipeline/summary.h"

#include "formats/error.h"

namespace ckpt {

nlohmann::ordered_json summary_json(const ConvertSummary& s, const SummaryLabels& l) {
  const double gbps = s.execute_s > 0 ? static_cast<double>(s.output_bytes) / s.execute_s / 1e9 : 0;
  nlohmann::ordered_json j = {{"input", l.input}, {"output", l.output}, {"direction", l.direction}, {"dtype", l.dtype},
          {"input_tensors", s.input_tensors}, {"output_tensors", s.output_tensors},
          {"dequantized", s.dequantized}, {"dropped", s.dropped}, {"shards", s.shards},
          {"reused_shards", s.reused_shards}, {"input_bytes", s.input_bytes}, {"output_bytes", s.output_bytes},
          {"plan_seconds", s.plan_s}, {"execute_seconds", s.execute_s}, {"total_seconds", s.total_s},
          {"output_gb_per_s", gbps}, {"peak_rss_bytes", s.peak_rss_bytes}, {"threads", s.exec.threads},
          {"io", l.io}, {"chunk_bytes", s.exec.chunk_bytes}, {"items_in_flight", s.exec.buffers},
          {"buffers_allocated", s.exec.buffers_allocated}, {"isa", s.isa}, {"device", s.exec.device ? s.exec.device->name : "cpu"},
          {"stage_seconds", {{"read", s.exec.read_s}, {"dequantize", s.exec.transform_s}, {"write", s.exec.write_s}}}};
  if (const auto& d = s.exec.device)
    j["device_stage"] = {{"items", d->items}, {"seconds", d->seconds}, {"setup_seconds", d->setup_seconds},
                         {"init_seconds", d->init_seconds},
                         {"h2d_bytes", d->h2d_bytes},
                         {"d2h_bytes", d->d2h_bytes}, {"device_memory_bytes", d->device_bytes},
                         {"pinned_bytes", d->pinned_bytes}};
  if (s.fetched)
    j["remote"] = {{"requests", s.fetched->requests}, {"bytes_fetched", s.fetched->bytes_fetched}, {"retries", s.fetched->retries}};
  if (s.part)
    j["part"] = {{"rank", s.part->rank}, {"world_size", s.part->world}, {"shards", s.part_shards},
                 {"bytes", s.part_bytes}, {"balance_max_over_mean", s.balance}, {"published", s.published}};
  return j;
}

ConvertSummary summary_from_json(std::string_view text) {
  const auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) fail(ErrorKind::Internal, "convert printed no JSON summary");
  try {
    ConvertSummary s;
    s.plan_s = j.at("plan_seconds").get<double>();
    s.execute_s = j.at("execute_seconds").get<double>();
    s.total_s = j.at("total_seconds").get<double>();
    const auto& st = j.at("stage_seconds");
    s.exec.read_s = st.at("read").get<double>();
    s.exec.transform_s = st.at("dequantize").get<double>();
    s.exec.write_s = st.at("write").get<double>();
    s.exec.threads = j.at("threads").get<unsigned>();
    s.exec.chunk_bytes = j.at("chunk_bytes").get<uint64_t>();
    s.input_bytes = j.at("input_bytes").get<uint64_t>();
    s.output_bytes = j.at("output_bytes").get<uint64_t>();
    s.shards = j.at("shards").get<size_t>();
    s.peak_rss_bytes = j.at("peak_rss_bytes").get<uint64_t>();
    return s;
  } catch (const nlohmann::json::exception& e) {
    fail(ErrorKind::Internal, "convert's JSON summary lacks a field: {}", e.what());
  }
}

}  // namespace ckpt
