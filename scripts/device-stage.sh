#!/usr/bin/env bash
# Builds here what scripts/device-run.sh needs on the device machine (an NVIDIA H100/H200 with
# no Rust toolchain and no network) and stages it, stripped, in .device/ (git-ignored through
# .git/info/exclude): the release `tandem`, the CUDA and wgpu test executables, stories260K.
# The device tool then carries .device (and .gl, Vulkan's loader packages) with the call:
#   run(command="bash scripts/device-run.sh", carry=[".device", ".gl"])
# Everything staged must stay well under the 64 MiB a call may carry.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >>.git/info/exclude

cargo build --release -p tandem-cli
tests=(conformance_cuda e2e_cuda conformance_wgpu)
json=$(cargo test --release -p tandem-tests --no-run --message-format=json $(printf -- '--test %s ' "${tests[@]}"))

rm -rf .device
mkdir -p .device/models
strip -o .device/tandem target/release/tandem
for t in "${tests[@]}"; do
    exe=$(printf '%s\n' "$json" | grep '"executable":"[^"]*/'"$t"'-' | sed 's/.*"executable":"\([^"]*\)".*/\1/' | tail -1)
    [ -n "$exe" ] || { echo "no test executable for $t" >&2; exit 1; }
    strip -o ".device/$t" "$exe"
done
models="${TANDEM_SHARED_MODELS:-../shared/models}"
cp -r "$models/stories260K" .device/models/
# Vulkan's loader for the wgpu backend on the device's GPU (the device README's recipe).
if ! ls .gl/*.deb >/dev/null 2>&1; then
    grep -qx '/.gl/' .git/info/exclude || echo '/.gl/' >>.git/info/exclude
    mkdir -p .gl /tmp/amd64/partial
    o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    apt-get $o update >/dev/null
    (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
du -sh .device .gl
