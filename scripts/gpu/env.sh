# Source on the GPU machine (Ubuntu 24.04, CUDA 13, PyTorch 2.11 wheel) from
# the repository root: unpacks Debian 12's gRPC/protobuf/Abseil/prometheus-cpp
# (and the other packages the project links) from .deps/debs (made here by
# scripts/gpu/fetch-debs.sh, carried with the working tree) and points the
# build at them and at the wheel's CUDA libtorch.
R=${RH_DEBROOT:-/tmp/debroot}
if [ ! -f "$R/.unpacked" ]; then
  mkdir -p "$R"
  for f in .deps/debs/*.deb; do dpkg -x "$f" "$R"; done
  touch "$R/.unpacked"
fi
export LD_LIBRARY_PATH=$R/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LIBRARY_PATH=$R/usr/lib/x86_64-linux-gnu
export PATH=$R/usr/bin:$PATH
# pkg-config files of the unpacked packages name /usr: re-root them.
export PKG_CONFIG_PATH=$R/usr/lib/x86_64-linux-gnu/pkgconfig:$R/usr/share/pkgconfig
export PKG_CONFIG_SYSROOT_DIR=$R
export TORCH_PREFIX=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
# The wheel's NCCL (nvidia-nccl-cu13): headers and libnccl.so.2.
export NCCL_ROOT=$(python3 -c 'import nvidia.nccl as n; print(list(n.__path__)[0])' 2>/dev/null)
export LD_LIBRARY_PATH=${NCCL_ROOT:+$NCCL_ROOT/lib:}$LD_LIBRARY_PATH
# Keep NVLink multicast off (shared hosts).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
rh_gpu_configure() {
  cmake -S . -B "${1:-build-gpu}" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$TORCH_PREFIX;$R/usr" -DROUNDHOUSE_ENABLE_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 "${@:2}"
}
