#!/usr/bin/env bash
# Installs what the tests need on a Debian/Ubuntu machine without a GPU: the
# Vulkan loader, Mesa's CPU driver (lavapipe), the validation layer, the GLSL
# compiler, and Redis (the remote tier's tests start their own servers, and
# redis-cli creates their cluster).  Does nothing when they are already present.
set -euo pipefail

need=()
ldconfig -p | grep -q 'libvulkan.so.1' || need+=(libvulkan1)
ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || need+=(mesa-vulkan-drivers)
ls /usr/share/vulkan/explicit_layer.d/VkLayer_khronos_validation.json >/dev/null 2>&1 || need+=(vulkan-validationlayers)
command -v glslangValidator >/dev/null || need+=(glslang-tools)
command -v vulkaninfo >/dev/null || need+=(vulkan-tools)
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "vyrecache needs these Debian packages: ${need[*]}. Fix: sudo apt-get install ${need[*]}" >&2
  exit 1
fi
echo "installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${need[@]}"
