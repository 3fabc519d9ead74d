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
# document ids of runs of the given lengths: runs 3 2 -> 0,0,0,1,1
runs() { python -c "import sys; print(','.join(str(d) for d, n in enumerate(sys.argv[1:]) for _ in range(int(n))))" "$@"; }
show dilated_sliding_window --q-len 512 --kv-len 512 --block-size 32 --param reach=100 --param dilation=8
show global_sliding_window --q-len 1024 --kv-len 1024 --block-size 64
show natten --q-len 1024 --kv-len 1024 --block-size 64 --param width=32 --param kernel=7
show natten_tiled --q-len 1024 --kv-len 1024 --block-size 64
show natten_morton --q-len 1024 --kv-len 1024 --block-size 64
show sta_2d --q-len 1088 --kv-len 1088 --block-size 64 --param tile=16 --param nw=8
show sta_3d --q-len 1024 --kv-len 1024 --block-size 64 --param tile=16 --param nh=4 --param nw=4
show svg_spatial --q-len 1050 --kv-len 1050 --block-size 64 --param prompt=50 --param frame=196 --param frames=1 --param round=16
show svg_temporal --q-len 1030 --kv-len 1030 --block-size 64 --param prompt=50 --param frame=98
show vsa --q-len 1024 --kv-len 1024 --block-size 64 --param top_k=4
show flamingo --q-len 512 --kv-len 512 --block-size 32 --input starts=0,100,100,300,300,300,400,450 --input ends=100,100,300,300,300,400,450,512
show block_diffusion --q-len 512 --kv-len 512 --block-size 32 --param block=64
# a random draft tree of 128 nodes (parents before children), as its ancestor table
tree=$(python -c "
import torch, maskspec
g = torch.Generator().manual_seed(0)
parents = [-1] + [int(torch.randint(max(0, i - 8), i, (), generator=g)) for i in range(1, 128)]
print(','.join(str(int(x)) for x in maskspec.tree_ancestors(torch.tensor(parents)).flatten()))")
show tree --q-len 128 --kv-len 384 --block-size 16 --input ancestor="$tree"
show jetspec_training --q-len 256 --kv-len 768 --block-size 32 --param block=32
show shared_prefix --q-len 1024 --kv-len 1024 --block-size 64 --param docs=6 --input doc="$(runs 200 150 150 200 124 200)" --input offsets=0,200,350,500,700,824,1024 --input prefix_of=0,0,0,3,3,3
show document_prefix_lm --q-len 1024 --kv-len 1024 --block-size 64 --param docs=4 --param prefix=96 --input doc="$(runs 300 200 400 124)" --input offsets=0,300,500,900,1024
