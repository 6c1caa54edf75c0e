# The CUDA stage's device benchmark (bench/cuda_kernels.cu): every kernel of cuda/kernels.h at
# checkpoint scale next to a device memcpy of the same bytes, and pinned host <-> device copies.
# Included from cuda/CMakeLists.txt once ckpt_cuda exists; exits 77 without a device.
add_executable(ckpt_bench_cuda ${PROJECT_SOURCE_DIR}/bench/cuda_kernels.cu)
target_link_libraries(ckpt_bench_cuda PRIVATE ckpt_cuda)
set_target_properties(ckpt_bench_cuda PROPERTIES CUDA_STANDARD 17 RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})
