// The public API's GPU path as a consumer sees it (libckptconv.so and include/ckptconv only): an HF
// FP8 checkpoint loaded with Options::device = "cuda" into a DeviceMemorySink lands in device
// memory the caller allocated, tensor by tensor equal to what a MemorySink gets on the CPU. Exits
// 77 (skipped) without a usable device.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <ckptconv/ckptconv.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include "pipeline/synth.h"
#include "support.h"

namespace {

std::map<std::string, std::string> on_cpu(const std::filesystem::path& in, ckptconv::Options o) {
  o.device = "cpu";
  std::map<std::string, std::string> got;
  std::mutex mu;
  ckptconv::MemorySink sink([](const ckptconv::TensorDesc& t) -> void* { return new char[t.nbytes + 1]; },
                            [&](const ckptconv::TensorDesc& t, void* data) {
                              std::lock_guard lock(mu);
                              got[t.name].assign(static_cast<char*>(data), t.nbytes);
                              delete[] static_cast<char*>(data);
                            });
  ckptconv::Conversion::plan(in, o).execute(sink);
  return got;
}

}  // namespace

TEST_CASE("a DeviceMemorySink gets the CPU's tensors in device memory", "[cuda][api]") {
  ckpt::test::TempDir tmp;
  for (const char* family : {"minimax_m2", "deepseek_v3", "minimax_m3"}) {
    INFO(family);
    const auto in = tmp / family;
    ckpt::SynthOptions so;  // the library's internals only make the input, as in ckpt_api_tests
    so.family = family;
    so.out = in;
    ckpt::synth(so);
    ckptconv::Options o;
    o.to = ckptconv::Direction::Native;
    const auto want = on_cpu(in, o);
    o.device = "cuda";
    std::map<std::string, std::string> got;
    std::mutex mu;
    ckptconv::DeviceMemorySink to_gpu(
        [](const ckptconv::TensorDesc& t) -> void* {
          void* p = nullptr;
          return cudaMalloc(&p, t.nbytes + 1) == cudaSuccess ? p : nullptr;
        },
        [&](const ckptconv::TensorDesc& t, void* device_data) {
          std::string bytes(t.nbytes, '\0');
          const bool ok = cudaMemcpy(bytes.data(), device_data, t.nbytes, cudaMemcpyDeviceToHost) == cudaSuccess;
          cudaFree(device_data);
          std::lock_guard lock(mu);
          got[t.name] = ok ? bytes : "copy failed";
        });
    const ckptconv::RunStats s = ckptconv::Conversion::plan(in, o).execute(to_gpu);
    CHECK(s.device.rfind("cuda:0", 0) == 0);
    CHECK(s.d2h_bytes == 0);  // nothing came back to the host
    CHECK(got.size() == want.size());
    for (const auto& [name, bytes] : want) {
      INFO(name);
      CHECK((got.count(name) && got[name] == bytes));
    }
  }
}

int main(int argc, char** argv) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::printf("skipped: no usable CUDA device\n");
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
