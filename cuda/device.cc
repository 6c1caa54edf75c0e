#include "cuda/device.h"

#include <cuda_runtime.h>

#include "formats/error.h"

namespace ckpt::cuda {

DeviceInfo usable_device(int index) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e == cudaErrorInsufficientDriver || e == cudaErrorNoDevice || e == cudaErrorInitializationError ||
      e == cudaErrorSystemDriverMismatch || e == cudaErrorCompatNotSupportedOnDevice)
    fail_usage("--device cuda: no usable CUDA driver ({})", cudaGetErrorString(e));
  if (e != cudaSuccess) fail_usage("--device cuda: {}", cudaGetErrorString(e));
  if (count == 0) fail_usage("--device cuda: the driver sees no CUDA device");
  if (index < 0 || index >= count)
    fail_usage("--device cuda:{}: there are {} CUDA device(s), numbered from 0", index, count);
  cudaDeviceProp p{};
  if (const cudaError_t pe = cudaGetDeviceProperties(&p, index); pe != cudaSuccess)
    fail_usage("--device cuda:{}: {}", index, cudaGetErrorString(pe));
  if (p.major < kMinComputeMajor)
    fail_usage("--device cuda:{}: {} has compute capability {}.{}; ckptconv's kernels need {}.0 or newer", index,
               p.name, p.major, p.minor, kMinComputeMajor);
  return {index, p.name, p.major, p.minor, static_cast<uint64_t>(p.totalGlobalMem)};
}

int device_count() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess ? count : 0;
}

bool any_usable_device() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return false;
  for (int i = 0; i < count; ++i) {
    try {
      usable_device(i);
      return true;
    } catch (const Error&) {
    }
  }
  return false;
}

}  // namespace ckpt::cuda
