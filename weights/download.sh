#!/usr/bin/env bash
# Download the official backbone checkpoints used by the hrnet, csn and clip feature families (see weights/README.md).
# Usage: bash weights/download.sh [DEST_DIR (default: this folder)] [hrnet] [ip_csn_152] [ir_csn_152] [clip_RN50_openai]
#        [clip_ViT-B-32_openai] [clip_ViT-L-14_openai]
# Without names: the three backbones of the hrnet and csn tiers, and the clip tier's default (clip_RN50_openai).
# A file whose sha256 is pinned in SHA256SUMS (beside this script; the Python loader reads the same file) is accepted
# only with that digest: a present one is skipped, a fetched one that differs is kept as .part and the exit status is 1.
# A file with no pinned digest (the CSN files: none is published) is checked for its size only. Needs curl or wget.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
sums="$here/SHA256SUMS"
dest="${1:-}"
[ -n "$dest" ] || dest="$here"
shift $(( $# > 0 ? 1 : 0 ))
wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(hrnet ip_csn_152 ir_csn_152 clip_RN50_openai)
[ -f "$sums" ] || { echo "error: $sums not found (it pins the files' sha256); restore it from the repository" >&2; exit 1; }

# name | path under DEST (the SHA256SUMS key) | URL | minimum size in bytes, checked where no digest is pinned (the
# tensors' own size, a complete file is larger; "-": must be pinned). The clip_ ones are features/clip.py CLIP_WEIGHTS.
entries=(
  "hrnet|ade20k-hrnetv2-c1/encoder_epoch_30.pth|http://sceneparsing.csail.mit.edu/model/pytorch/ade20k-hrnetv2-c1/encoder_epoch_30.pth|261976908"
  "ip_csn_152|ipCSN_152_ft_kinetics_from_ig65m_f133090949.pth|https://github.com/bjuncek/VMZ/releases/download/test_models/ipCSN_152_ft_kinetics_from_ig65m_f133090949.pth|132769448"
  "ir_csn_152|irCSN_152_ft_kinetics_from_ig65m_f126851907.pth|https://github.com/bjuncek/VMZ/releases/download/test_models/irCSN_152_ft_kinetics_from_ig65m_f126851907.pth|119421208"
  "clip_RN50_openai|clip/RN50_openai.pt|https://openaipublic.azureedge.net/clip/models/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt|-"
  "clip_ViT-B-32_openai|clip/ViT-B-32_openai.pt|https://openaipublic.azureedge.net/clip/models/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt|-"
  "clip_ViT-L-14_openai|clip/ViT-L-14_openai.pt|https://openaipublic.azureedge.net/clip/models/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt|-"
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

pinned() { awk -v f="$1" '$2 == f || $2 == "*" f { print $1; exit }' "$sums"; }  # pinned REL: its digest, or nothing

accept() {  # accept FILE SHA MIN: the pinned digest where there is one, else the size floor
  if [ -n "$2" ]; then [ "$(sha256_of "$1")" = "$2" ]; else [ "$(size_of "$1")" -ge "$3" ]; fi
}

status=0
for want in "${wanted[@]}"; do
  found=0
  for entry in "${entries[@]}"; do
    IFS='|' read -r name rel url min <<<"$entry"
    [ "$name" = "$want" ] || continue
    found=1
    out="$dest/$rel"
    sha="$(pinned "$rel")"
    if [ -z "$sha" ] && [ "$min" = - ]; then
      echo "error: $sums pins no sha256 for $rel; restore that file from the repository" >&2
      status=1; continue
    fi
    check="${sha:+sha256 ok}"; check="${check:-size ok, no pinned sha256}"
    if [ -f "$out" ] && accept "$out" "$sha" "$min"; then
      echo "ok       $out (present, $check)"
    else
      [ -f "$out" ] && echo "replace  $out (present, but $([ -n "$sha" ] && echo "its sha256 is not $sha" || echo "too small"))"
      mkdir -p "$(dirname "$out")"
      echo "fetching $url -> $out"
      if ! fetch "$url" "$out.part"; then
        echo "error: $url failed (what came is in $out.part); see weights/README.md" >&2
        status=1; continue
      elif ! accept "$out.part" "$sha" "$min"; then
        if [ -n "$sha" ]; then
          echo "error: $url gave a file whose sha256 is $(sha256_of "$out.part"), not the $sha pinned in $sums:" \
            "kept as $out.part, not used; see weights/README.md" >&2
        else
          echo "error: $url gave a file of $(size_of "$out.part") bytes, smaller than $min (kept as $out.part);" \
            "see weights/README.md" >&2
        fi
        status=1; continue
      fi
      mv "$out.part" "$out"; echo "ok       $out ($check)"
    fi
    if [ -z "$sha" ]; then
      echo "note     no sha256 is published for $rel, so only its size was checked. Compare it with a trusted copy" \
        "(sha256sum), then pin it, and this script and the loader check it from then on:" \
        "(cd \"$dest\" && sha256sum $rel) >> \"$sums\""
    fi
  done
  if [ "$found" = 0 ]; then
    echo "error: unknown name '$want' (hrnet, ip_csn_152, ir_csn_152, clip_RN50_openai, clip_ViT-B-32_openai," \
      "clip_ViT-L-14_openai)" >&2
    status=1
  fi
done
exit $status
