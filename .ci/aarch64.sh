#!/usr/bin/env bash
# The extension on 64-bit ARM, checked from x86-64 under emulation: an arm64 Debian bookworm root
# made with debootstrap runs under qemu-user (binfmt_misc), `pip install`s the tree inside it and
# runs a defined subset of the suite there, after asserting that the NEON tier is the one chosen.
#
#   .ci/aarch64.sh          (as root: debootstrap, chroot and mount need it; installs
#                            qemu-user-static, debootstrap and binfmt-support when missing)
#
# The subset (SUBSET below): values against the reference on the NEON tier, the errors,
# bitwise-identical results for every thread count, a short fuzz (SELFATTN_FUZZ_EXAMPLES=10), the
# platform layer's checks and the accuracy of NEON's exp.
# Only numpy, pytest and hypothesis are installed (not the [test] extra: matplotlib and ipykernel
# would take minutes to install under emulation, and no test of the subset needs them). Timings under qemu say nothing about
# speed on ARM. Nothing is cached between runs; SELFATTN_ARM64_ROOT=DIR (a root made by an
# earlier run, left unmodified) skips debootstrap when iterating locally.
# Measured on a 2-core AMD EPYC before the subset was cut to the NEON tier: 28 minutes
# (debootstrap 6, pip install 8, the subset 14: 798 tests). Python runs about 30 times slower
# under qemu than natively, and NumPy's long double, the tests' oracle, is a software quad there.
# .ci/run runs this script side by side with the steps after it that have no wall-clock bounds.
source "$(dirname "$0")/lib.sh" aarch64
cd "$ROOT"

SUBSET=(tests/test_values.py tests/test_isa_tiers.py tests/test_errors.py tests/test_thread_count.py
        tests/test_fuzz.py tests/test_platform.py tests/test_vexp.py)
# Left out: the largest sizes of test_isa_tiers, which run the same code paths as its smaller
# ones; and the generic and reference tiers in the tier and thread-count tests: they are the same
# portable C on every machine, checked on x86 (and an arm64 CPU always has NEON, so they are never
# chosen there), and under qemu they took two thirds of the subset's time.
DESELECT="not (test_attention_masks_causal_batches and (300-77 or 77-300))
 and not (test_self_attention_layer and 300-64-64) and not (test_attention and 63-256-255)
 and not ((test_thread_count or test_isa_tiers or test_vexp) and (generic or reference))"
MIRROR=http://deb.debian.org/debian
ARM_ROOT="$WORK/root"
start=$SECONDS

[[ $(id -u) == 0 ]] || { echo "aarch64.sh: needs root (debootstrap, chroot, mount)"; exit 1; }

# The root's /proc is mounted while the tests run: unmount it before lib.sh's trap removes WORK,
# and remove nothing if it would not unmount.
cleanup() {
    if mountpoint -q "$ARM_ROOT/proc" 2>/dev/null; then
        umount "$ARM_ROOT/proc" || umount -l "$ARM_ROOT/proc" || { echo "aarch64.sh: $ARM_ROOT/proc still mounted; leaving $WORK"; return; }
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

step "aarch64 1. tools: qemu-user-static, debootstrap, binfmt-support"
missing=()
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v update-binfmts >/dev/null || missing+=(binfmt-support)
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >"$WORK/apt.log" 2>&1 \
        || { tail -20 "$WORK/apt.log"; exit 1; }
fi
if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
    log "mounting binfmt_misc"
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if ! grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
    log "registering qemu-aarch64"
    update-binfmts --enable qemu-aarch64
fi
grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
    || { echo "aarch64.sh: qemu-aarch64 is registered without the F flag; the chroot cannot find it"; exit 1; }

step "aarch64 2. an arm64 Debian bookworm root"
if [[ -n "${SELFATTN_ARM64_ROOT:-}" ]]; then
    log "copying $SELFATTN_ARM64_ROOT"
    cp -a "$SELFATTN_ARM64_ROOT" "$ARM_ROOT"
else
    debootstrap --arch=arm64 --variant=minbase \
        --include=python3,python3-venv,python3-pip,python3-dev,gcc,libc6-dev \
        bookworm "$ARM_ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -30 "$WORK/debootstrap.log"; exit 1; }
fi
# pip inside reaches PyPI as this machine does: its resolver, its CA bundle (a CI network may
# inspect TLS with its own authority), its proxy settings if any
cp /etc/resolv.conf "$ARM_ROOT/etc/resolv.conf"
cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$ARM_ROOT/etc/host-ca.crt"
proxies=()
for var in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    [[ -n "${!var:-}" ]] && proxies+=("$var=${!var}")
done
mount -t proc proc "$ARM_ROOT/proc"
in_root() {     # a command inside the root, as aarch64, with a clean environment
    chroot "$ARM_ROOT" /usr/bin/env -i PATH=/venv/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
        PIP_CERT=/etc/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 "${proxies[@]}" "$@"
}
log "$(in_root uname -m), $(in_root python3 --version)"

step "aarch64 3. pip install the tree inside it (numpy, pytest, hypothesis from PyPI)"
copy_tree "$ARM_ROOT/src"
in_root python3 -m venv /venv
# setuptools 77+ (setup.py says why): the venv has Debian's 66, which a plain install would keep
in_root pip install -q --upgrade "setuptools>=77" wheel numpy pytest hypothesis
# no build isolation: the build reuses the numpy just installed instead of fetching it again
in_root sh -c 'cd /src && pip install -q --no-build-isolation --no-deps .' \
    >"$WORK/pip.log" 2>&1 || { tail -40 "$WORK/pip.log"; exit 1; }

step "aarch64 4. the NEON tier is chosen; a smoke run; the subset of the suite"
in_root sh -c 'cd / && python -c "import selfattn; isa = selfattn.get_isa(); print(\"isa:\", isa, selfattn.config()[\"supported_isas\"]); assert isa == \"neon\", isa"'
in_root sh -c 'cd / && python -m selfattn' | tail -5
in_root env SELFATTN_FUZZ_EXAMPLES=10 python -m pytest -q -p no:cacheprovider --rootdir=/src \
    -k "$(echo $DESELECT)" "${SUBSET[@]/#//src/}"

echo "aarch64.sh: passed in $((SECONDS - start)) s"
