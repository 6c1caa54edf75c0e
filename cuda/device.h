// Which CUDA device a run may use. `--device cuda[:N]` on a machine that cannot run the kernels
// is a usage error that says why — no driver, no device, compute capability too old — decided
// here once, before anything is planned or written.
#pragma once

#include <cstdint>
#include <string>

namespace ckpt::cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  int major = 0, minor = 0;  // compute capability
  uint64_t memory = 0;       // bytes
};

inline constexpr int kMinComputeMajor = 8;  // the kernels are built for sm_80 and sm_90

// The device `index`, or Error(Usage) naming why it cannot be used.
DeviceInfo usable_device(int index);

// True when some device passes usable_device (for --device auto).
bool any_usable_device();

// The devices the driver sees (0 without a driver).
int device_count();

}  // namespace ckpt::cuda
