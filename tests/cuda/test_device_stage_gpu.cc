// The CUDA device stage in whole conversions, on a GPU: for every family and direction the bytes
// of every output tensor equal the CPU path's — with the default staging, with a staging buffer
// far smaller than an item (every item in many batches), and under --io pread; a device sink's
// tensors, copied back, equal them too; an injected CUDA failure ends the run with an Io error.
// (Skipped with the rest of ckpt_cuda_tests without a device.)
#include <catch2/catch.hpp>
#include <cuda_runtime.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "cuda/device_stage.h"
#include "formats/error.h"
#include "pipeline/convert.h"
#include "pipeline/synth.h"
#include "support.h"

using namespace ckpt;

namespace {

// Every tensor's bytes, assembled in host memory.
class HostBytes final : public TensorSink {
 public:
  explicit HostBytes(const Plan& plan) {
    for (const auto& t : plan.tensors) bytes.emplace_back(t.nbytes, '\xAB');  // poisoned: every byte must be written
  }
  void write(size_t t, uint64_t offset, const void* data, uint64_t len) override {
    std::memcpy(bytes[t].data() + offset, data, len);
  }
  std::vector<std::string> bytes;
};

// Every tensor's bytes assembled in device memory by copies on the executor's streams, then
// copied back for comparison when complete.
class DeviceBytes final : public TensorSink {
 public:
  explicit DeviceBytes(const Plan& plan) : bytes(plan.tensors.size()), device_(plan.tensors.size(), nullptr) {
    for (size_t i = 0; i < plan.tensors.size(); ++i) {
      REQUIRE(cudaMalloc(&device_[i], std::max<uint64_t>(1, plan.tensors[i].nbytes)) == cudaSuccess);
      REQUIRE(cudaMemset(device_[i], 0xAB, std::max<uint64_t>(1, plan.tensors[i].nbytes)) == cudaSuccess);
      sizes_.push_back(plan.tensors[i].nbytes);
    }
  }
  ~DeviceBytes() override {
    for (void* p : device_) cudaFree(p);
  }
  void write(size_t, uint64_t, const void*, uint64_t) override { host_writes++; }
  bool on_device() const override { return true; }
  void write_device(size_t t, uint64_t offset, const void* data, uint64_t len, void* stream) override {
    const cudaError_t e = cudaMemcpyAsync(static_cast<uint8_t*>(device_[t]) + offset, data, len,
                                          cudaMemcpyDeviceToDevice, static_cast<cudaStream_t>(stream));
    if (e != cudaSuccess) throw std::runtime_error(cudaGetErrorString(e));
  }
  void complete(size_t t) override {
    std::string b(sizes_[t], '\0');
    if (cudaMemcpy(b.data(), device_[t], sizes_[t], cudaMemcpyDeviceToHost) != cudaSuccess)
      throw std::runtime_error("copy back");
    std::lock_guard lock(mu_);
    bytes[t] = std::move(b);
  }
  std::vector<std::string> bytes;
  std::atomic<int> host_writes{0};

 private:
  std::vector<void*> device_;
  std::vector<uint64_t> sizes_;
  std::mutex mu_;
};

std::vector<std::string> run(const Conversion& c, DeviceStage* stage, IoMode io = IoMode::Mmap,
                             uint64_t budget = 64ull << 20) {
  RunOptions ro;
  ro.threads = 4;
  ro.memory_budget = budget;
  ro.io = io;
  if (stage) ro.device = [stage](const Plan&) { return std::shared_ptr<DeviceStage>(stage, [](DeviceStage*) {}); };
  HostBytes sink(c.plan());
  const ExecStats st = c.execute(sink, ro);
  if (stage) {
    REQUIRE(st.device);
  }
  return sink.bytes;
}

// The names of tensors whose bytes differ (at most a few, for the message).
std::string differing(const Plan& plan, const std::vector<std::string>& a, const std::vector<std::string>& b) {
  std::string out;
  int n = 0;
  for (size_t i = 0; i < plan.tensors.size() && n < 5; ++i)
    if (a[i] != b[i]) out += plan.tensors[i].out.name + " ", ++n;
  return out;
}

struct Direction_ {
  const char* name;
  PlanOptions options;
  bool from_native;
};

std::vector<Direction_> directions() {
  PlanOptions dq, nat, nat32, hf, real, placeholder;
  dq.direction = Direction::Dequant;
  nat.direction = Direction::Native;
  nat32.direction = Direction::Native;
  nat32.dtype = OutType::F32;
  hf.direction = Direction::Hf;
  real.direction = Direction::Hf;
  real.quantize = QuantizeMode::Real;
  placeholder.direction = Direction::Hf;
  placeholder.quantize = QuantizeMode::Placeholder;
  return {{"dequant", dq, false},     {"native", nat, false},        {"native f32", nat32, false},
          {"hf", hf, true},           {"hf real", real, true},       {"hf placeholder", placeholder, true}};
}

}  // namespace

TEST_CASE("the CUDA stage writes the CPU path's bytes for every family and direction", "[cuda]") {
  test::TempDir dir;
  for (const std::string& family : synth_families()) {
    SynthOptions so;
    so.family = family;
    so.out = dir / family;
    so.hidden = 320;  // ragged against 128-blocks
    so.inter = 160;
    so.experts = 4;
    so.layers = 2;
    synth(so);
    // The native checkpoint that the hf directions read: the CPU's conversion of the synth.
    PlanOptions to_native;
    to_native.direction = Direction::Native;
    Conversion::plan(so.out, to_native).write(dir / (family + "-native"), {}, RunOptions{});
    for (const auto& d : directions()) {
      INFO(family << " " << d.name);
      if (d.options.quantize != QuantizeMode::None && family == "nemotron_v3") continue;  // no FP8 release
      const Conversion c = Conversion::plan(d.from_native ? dir / (family + "-native") : so.out, d.options);
      const auto cpu = run(c, nullptr);
      for (uint64_t staging : {uint64_t{0}, uint64_t{4096}}) {
        cuda::StageOptions opt;
        opt.staging_bytes = staging;
        const auto stage = cuda::open_stage(opt);
        INFO("staging " << staging);
        const auto gpu = run(c, stage.get());
        CHECK(differing(c.plan(), cpu, gpu) == "");
        // Plans with FP8 or grouping work run on the device (placeholder FP8 export stays on the CPU).
        if (staging == 0 && wants_device(c.plan()) && d.options.quantize != QuantizeMode::Placeholder)
          CHECK(stage->stats().items > 0);
      }
      const auto stage = cuda::open_stage({});
      CHECK(differing(c.plan(), cpu, run(c, stage.get(), IoMode::Pread)) == "");
    }
  }
}

TEST_CASE("a device sink gets the CPU path's bytes in device memory", "[cuda]") {
  test::TempDir dir;
  for (const char* family : {"minimax_m2", "deepseek_v3", "minimax_m3"}) {
    SynthOptions so;
    so.family = family;
    so.out = dir / family;
    synth(so);
    PlanOptions po;
    po.direction = Direction::Native;
    const Conversion c = Conversion::plan(so.out, po);
    const auto cpu = run(c, nullptr);
    const auto stage = cuda::open_stage({});
    RunOptions ro;
    ro.threads = 4;
    ro.memory_budget = 64ull << 20;
    ro.device = [&](const Plan&) { return std::shared_ptr<DeviceStage>(stage.get(), [](DeviceStage*) {}); };
    DeviceBytes sink(c.plan());
    c.execute(sink, ro);
    CHECK(sink.host_writes == 0);
    CHECK(differing(c.plan(), cpu, sink.bytes) == "");
  }
}

TEST_CASE("an injected CUDA failure ends the run with an Io error", "[cuda]") {
  test::TempDir dir;
  SynthOptions so;
  so.family = "minimax_m2";
  so.out = dir / "in";
  synth(so);
  PlanOptions po;
  po.direction = Direction::Native;
  const Conversion c = Conversion::plan(so.out, po);
  cuda::StageOptions opt;
  opt.fail_at_batch = 3;
  const auto stage = cuda::open_stage(opt);
  try {
    run(c, stage.get());
    FAIL("the run did not fail");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::Io);
    CHECK(std::string(e.what()).find("injected") != std::string::npos);
  }
}
