#!/usr/bin/env bash
# Regenerates the committed seed corpus (tests/fuzz/corpus/) from `ckptconv synth` output, plus a
# few hand-written edge cases. Run it after a format or family change; the fuzzers only read it.
#   tests/fuzz/make_seeds.sh path/to/ckptconv
# fuzz_header seeds are whole safetensors files (the three smallest families, tiny sizes);
# fuzz_plan seeds are fuzz_plan.cc's layout: 3 option bytes, config.json, NUL, header[, NUL, header].
set -euo pipefail
ckptconv=$(realpath "${1:?usage: make_seeds.sh path/to/ckptconv}")
here=$(cd "$(dirname "$0")" && pwd)
families=(minimax_m2 minimax_m3 minimax_m3_vl mistral3_vlm mistral3_causal nemotron_v3 deepseek_v3)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
hc="$here/corpus/fuzz_header" pc="$here/corpus/fuzz_plan"
rm -rf "$hc" "$pc"
mkdir -p "$hc" "$pc"

header_of() {  # the header text of a safetensors file
  local n
  n=$(od -An -t u8 -N8 "$1" | tr -d ' ')
  head -c $((8 + n)) "$1" | tail -c "$n"
}

# A safetensors file from a header text and a data size (zero bytes).
st() {
  local h=$1 data=${2:-0} n i
  n=${#h}
  for i in 0 1 2 3 4 5 6 7; do printf "\\x$(printf %02x $(((n >> (8 * i)) & 255)))"; done
  printf '%s' "$h"
  head -c "$data" /dev/zero
}

# Option bytes (fuzz_plan.cc): a = family index << 2 (dtype bf16, mtp auto); b = 2: --quantize
# real for the hf direction; c = 0: 5GB shards.
opts() { printf "\\x$(printf %02x $(($1 << 2)))\\x02\\x00"; }

for i in "${!families[@]}"; do
  f=${families[$i]}
  for shards in 1 2; do
    "$ckptconv" synth --family "$f" --out "$work/$f-$shards" --layers 1 --experts 2 --hidden 32 \
      --inter 16 --shards "$shards" >/dev/null
    mapfile -t files < <(ls "$work/$f-$shards"/*.safetensors)
    { opts "$i"; cat "$work/$f-$shards/config.json"
      for s in "${files[@]}"; do printf '\0'; header_of "$s"; done; } >"$pc/$f-hf-$shards"
  done
  "$ckptconv" convert --in "$work/$f-1" --out "$work/$f-native" --to native >/dev/null
  { opts "$i"; cat "$work/$f-native/config.json"; printf '\0'; header_of "$work/$f-native/model.safetensors"; } \
    >"$pc/$f-native"
done
for f in minimax_m2 mistral3_causal deepseek_v3; do cp "$work/$f-1/model.safetensors" "$hc/$f"; done

# Edge cases the synthetic families do not produce.
st '{}' >"$hc/empty"
st '{"__metadata__":{"format":"pt"}}      ' >"$hc/metadata-padded"
st '{"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}' 4 >"$hc/scalar"
st '{"z":{"dtype":"BF16","shape":[0,4],"data_offsets":[0,0]},"b":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}}' 3 >"$hc/zero-size"
st '{"w":{"dtype":"F8_E5M2","shape":[2,64],"data_offsets":[0,128]},"w_scale_inv":{"dtype":"F8_E8M0","shape":[2,2],"data_offsets":[128,132]}}' 132 >"$hc/mx"
st '{"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},"b":{"dtype":"U16","shape":[2],"data_offsets":[4,8]}}' 8 >"$hc/overlap"
st '{"a":{"dtype":"F64","shape":[-1],"data_offsets":[0,8]}}' 8 >"$hc/negative"
st '{"a":{"dtype":"F9","shape":[1],"data_offsets":[0,1]}}' 1 >"$hc/unknown-dtype"
# Every dtype ckptconv only copies (SPEC §5), then sub-byte tensors whose bits do not fill bytes.
st '{"a":{"dtype":"F4","shape":[2,3],"data_offsets":[0,3]},"b":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[3,6]},"c":{"dtype":"F6_E3M2","shape":[2,4],"data_offsets":[6,12]},"d":{"dtype":"F8_E4M3FNUZ","shape":[2],"data_offsets":[12,14]},"e":{"dtype":"F8_E5M2FNUZ","shape":[2],"data_offsets":[14,16]},"f":{"dtype":"C64","shape":[1],"data_offsets":[16,24]}}' 24 >"$hc/copy-only-dtypes"
st '{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}' 2 >"$hc/sub-byte-odd"
st '{"a":{"dtype":"F6_E3M2","shape":[5],"data_offsets":[0,4]}}' 4 >"$hc/sub-byte-odd-f6"
st '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}' 2 >"$hc/duplicate"
st '{"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}}' >"$hc/overflow"

cfg='{"architectures":["MiniMaxM2ForCausalLM"],"model_type":"minimax_m2","num_hidden_layers":1,"num_local_experts":1,"intermediate_size":2}'
{ opts 0; printf '%s\0%s' "$cfg" '{"model.layers.0.block_sparse_moe.experts.0.w1.weight":{"dtype":"I64","shape":[2,1],"data_offsets":[0,16]},"model.layers.0.block_sparse_moe.experts.0.w2.weight":{"dtype":"I64","shape":[1,2],"data_offsets":[16,32]},"model.layers.0.block_sparse_moe.experts.0.w3.weight":{"dtype":"I64","shape":[2,1],"data_offsets":[32,48]}}'; } >"$pc/int-experts"
{ opts 0; printf '%s\0%s' "$cfg" '{"model.layers.0.block_sparse_moe.experts.0.w1.weight":{"dtype":"F4","shape":[2,1],"data_offsets":[0,1]},"model.layers.0.block_sparse_moe.experts.0.w2.weight":{"dtype":"F4","shape":[1,2],"data_offsets":[1,2]},"model.layers.0.block_sparse_moe.experts.0.w3.weight":{"dtype":"F4","shape":[2,1],"data_offsets":[2,3]},"model.layers.0.block_sparse_moe.gate.weight":{"dtype":"F8_E4M3FNUZ","shape":[1,2],"data_offsets":[3,5]},"model.embed_tokens.weight":{"dtype":"C64","shape":[1],"data_offsets":[5,13]}}'; } >"$pc/copy-only-experts"
{ opts 7; printf '\0%s' '{"a.weight":{"dtype":"F8_E4M3","shape":[2,3],"data_offsets":[0,6]},"a.weight_scale_inv":{"dtype":"F32","shape":[],"data_offsets":[6,10]},"a.input_scale":{"dtype":"F32","shape":[],"data_offsets":[10,14]}}'; } >"$pc/no-config"
du -sh "$here/corpus"
