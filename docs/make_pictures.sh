#!/usr/bin/env bash
# Regenerates the spec pictures in docs/img/ (block grid plus element-level zooms).
set -euo pipefail
cd "$(dirname "$0")/.."
show() { maskspec show "specs/$1.mask" "${@:2}" --seed 0 --png "docs/img/$1.png" > /dev/null; }
show eagle3 --q-len 512 --kv-len 2048 --block-size 64 --input seq_len=448
show eagle3_packed --q-len 512 --kv-len 2048 --block-size 64
show causal --q-len 1024 --kv-len 1024 --block-size 64
show causal_bottom_right --q-len 512 --kv-len 1024 --block-size 64
show sliding_window --q-len 1024 --kv-len 1024 --block-size 64 --param width=200
show sliding_window_with_sinks --q-len 1024 --kv-len 1024 --block-size 64 --param width=200 --param sinks=64
show prefix_lm --q-len 1024 --kv-len 1024 --block-size 64 --input prefix_len=300
show chunked_causal --q-len 1024 --kv-len 1024 --block-size 64
show document_causal --q-len 1024 --kv-len 1024 --block-size 64
show document_bidirectional --q-len 1024 --kv-len 1024 --block-size 64
show per_head_window --q-len 1024 --kv-len 1024 --block-size 64 --input window_size=300
show dflash --q-len 256 --kv-len 768 --block-size 32 --param block=32
