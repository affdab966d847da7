#!/usr/bin/env bash
# Download the official backbone checkpoints used by the hrnet and csn feature families (see weights/README.md).
# Usage: bash weights/download.sh [DEST_DIR (default: this folder)] [hrnet] [ip_csn_152] [ir_csn_152] [clip_RN50_openai]
#        [clip_ViT-B-32_openai] [clip_ViT-L-14_openai]
# Without names: the three backbones of the hrnet and csn tiers, and the clip tier's default (clip_RN50_openai).
# Files already present (and big enough, or with the right checksum) are skipped. Needs curl or wget.
set -euo pipefail

dest="${1:-}"
[ -n "$dest" ] || dest="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
shift $(( $# > 0 ? 1 : 0 ))
wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(hrnet ip_csn_152 ir_csn_152 clip_RN50_openai)

# name | path under DEST | URL | minimum size in bytes (the tensors' own size; a complete file is larger)
entries=(
  "hrnet|ade20k-hrnetv2-c1/encoder_epoch_30.pth|http://sceneparsing.csail.mit.edu/model/pytorch/ade20k-hrnetv2-c1/encoder_epoch_30.pth|261976908"
  "ip_csn_152|ipCSN_152_ft_kinetics_from_ig65m_f133090949.pth|https://github.com/bjuncek/VMZ/releases/download/test_models/ipCSN_152_ft_kinetics_from_ig65m_f133090949.pth|132769448"
  "ir_csn_152|irCSN_152_ft_kinetics_from_ig65m_f126851907.pth|https://github.com/bjuncek/VMZ/releases/download/test_models/irCSN_152_ft_kinetics_from_ig65m_f126851907.pth|119421208"
)

# CLIP image towers of the clip tier (features/clip.py CLIP_WEIGHTS), OpenAI's TorchScript archives:
# name path-under-DEST URL sha256-of-the-file (OpenAI publishes it as the URL's folder name)
clip_entries=(
  "clip_RN50_openai clip/RN50_openai.pt https://openaipublic.azureedge.net/clip/models/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762"
  "clip_ViT-B-32_openai clip/ViT-B-32_openai.pt https://openaipublic.azureedge.net/clip/models/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt 40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"
  "clip_ViT-L-14_openai clip/ViT-L-14_openai.pt https://openaipublic.azureedge.net/clip/models/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"
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

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1; else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

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
  for entry in "${clip_entries[@]}"; do
    read -r name rel url sha <<<"$entry"
    [ "$name" = "$want" ] || continue
    found=1
    out="$dest/$rel"
    if [ -f "$out" ] && [ "$(sha256_of "$out")" = "$sha" ]; then
      echo "ok       $out (present, checksum ok)"; continue
    fi
    mkdir -p "$(dirname "$out")"
    echo "fetching $url -> $out"
    if fetch "$url" "$out.part" && [ "$(sha256_of "$out.part")" = "$sha" ]; then
      mv "$out.part" "$out"; echo "ok       $out (checksum ok)"
    else
      echo "error: $url failed or its sha256 is not $sha (kept as $out.part); see weights/README.md" >&2
      status=1
    fi
  done
  if [ "$found" = 0 ]; then
    echo "error: unknown name '$want' (hrnet, ip_csn_152, ir_csn_152, clip_RN50_openai, clip_ViT-B-32_openai," \
      "clip_ViT-L-14_openai)" >&2
    status=1
  fi
done
exit $status
