#!/bin/sh
# An ARM64 Python with LiteRT, run by QEMU's user mode on an x86 Debian / Ubuntu desktop: for
# benchmarks/arm64_exactness.py (the exports on LiteRT's ARM64 kernels, as a phone runs them) and
# edge/run_tflite.py. Exact numerics of an ARM64 CPU; its times mean nothing.
#
#     sh edge/arm64_python.sh /tmp/arm64          # needs root (apt), the Debian archive and PyPI
#
# Into DIR: qemu-aarch64-static, a sysroot with Debian's arm64 python3.11 (dpkg -x, nothing
# installed on this machine but the arm64 package lists), the aarch64 wheels of ai-edge-litert,
# numpy and absl-py, and a /proc/cpuinfo of a Cortex-A76 (a phone's big core) inside the sysroot:
# LiteRT's CPU detection reads it and, under QEMU, would read the host's x86 one and crash.
# Prints the --device_python command at the end. Checked on Debian 12 (x86_64), 2026-12-07.
set -eu
DIR=$(mkdir -p "${1:?usage: sh edge/arm64_python.sh DIR}" && cd "$1" && pwd)
PIP=${PIP:-pip}
PYTHON_VERSION=3.11
cd "$DIR"

dpkg --add-architecture arm64
apt-get update -q >/dev/null
mkdir -p debs && chmod 777 debs && cd debs
apt-get download -q qemu-user-static
for package in python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libexpat1 zlib1g libffi8 \
    libssl3 libbz2-1.0 liblzma5 libstdc++6 libgcc-s1 libuuid1 libcrypt1 libnsl2 libtirpc3 libgssapi-krb5-2 \
    libkrb5-3 libk5crypto3 libkrb5support0 libcom-err2 libkeyutils1 libsqlite3-0 libtinfo6 libncursesw6 \
    libreadline8 libdb5.3; do
  apt-get download -q "$package:arm64"
done
cd "$DIR"
mkdir -p qemu sysroot/proc
dpkg -x debs/qemu-user-static_*_amd64.deb qemu
for deb in debs/*_arm64.deb; do dpkg -x "$deb" sysroot; done

"$PIP" install -q --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp --abi cp311 \
  --platform manylinux2014_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64 \
  --target site ai-edge-litert numpy absl-py

for cpu in 0 1; do
  printf 'processor\t: %s\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n' "$cpu"
done > sysroot/proc/cpuinfo

COMMAND="env PYTHONPATH=$DIR/site $DIR/qemu/usr/bin/qemu-aarch64-static -cpu cortex-a76 -L $DIR/sysroot $DIR/sysroot/usr/bin/python$PYTHON_VERSION"
$COMMAND -c "import platform, numpy, ai_edge_litert.interpreter; print('ARM64 Python ready:', platform.machine())"
echo "--device_python=\"$COMMAND\""
