#!/usr/bin/env bash
# Download the official backbone checkpoints used by the hrnet and csn feature families (see weights/README.md).
# Usage: bash weights/download.sh [DEST_DIR (default: this folder)] [hrnet] [ip_csn_152] [ir_csn_152]
# Files already present (and big enough) are skipped. Needs curl or wget.
set -euo pipefail

dest="${1:-}"
[ -n "$dest" ] || dest="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
shift $(( $# > 0 ? 1 : 0 ))
wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(hrnet ip_csn_152 ir_csn_152)

# name | path under DEST | URL | minimum size in bytes (the tensors' own size; a complete file is larger)
entries=(
  "hrnet|ade20k-hrnetv2-c1/encoder_epoch_30.pth|http://sceneparsing.csail.mit.edu/model/pytorch/ade20k-hrnetv2-c1/encoder_epoch_30.pth|261976908"
  "ip_csn_152|ipCSN_152_ft_kinetics_from_ig65m_f133090949.pth|https://github.com/bjuncek/VMZ/releases/download/test_models/ipCSN_152_ft_kinetics_from_ig65m_f133090949.pth|132769448"
  "ir_csn_152|irCSN_152_ft_kinetics_from_ig65m_f126851907.pth|https://github.com/bjuncek/VMZ/releases/download/test_models/irCSN_152_ft_kinetics_from_ig65m_f126851907.pth|119421208"
)

fetch() {  # fetch URL OUT
  if command -v curl >/dev/null 2>&1; then
    curl -fL --retry 3 -o "$2" "$1"
  elif command -v wget >/dev/null 2>&1; then
    wget -q --show-progress -O "$2" "$1"
  else
    echo "error: neither curl nor wget is installed" >&2; return 1
  fi
}

size_of() { wc -c <"$1" | tr -d ' '; }

status=0
for want in "${wanted[@]}"; do
  found=0
  for entry in "${entries[@]}"; do
    IFS='|' read -r name rel url min <<<"$entry"
    [ "$name" = "$want" ] || continue
    found=1
    out="$dest/$rel"
    if [ -f "$out" ] && [ "$(size_of "$out")" -ge "$min" ]; then
      echo "ok       $out (present, $(size_of "$out") bytes)"; continue
    fi
    mkdir -p "$(dirname "$out")"
    echo "fetching $url -> $out"
    if fetch "$url" "$out.part" && [ "$(size_of "$out.part")" -ge "$min" ]; then
      mv "$out.part" "$out"; echo "ok       $out ($(size_of "$out") bytes)"
    else
      echo "error: $url failed or gave a file smaller than $min bytes (kept as $out.part); see weights/README.md" >&2
      status=1
    fi
  done
  if [ "$found" = 0 ]; then echo "error: unknown backbone '$want' (hrnet, ip_csn_152, ir_csn_152)" >&2; status=1; fi
done
exit $status
