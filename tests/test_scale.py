"""Scale on CPU: long-context builds stay in the output's memory, measured in a subprocess."""

import json
import subprocess
import sys
import textwrap

from conftest import SPECS

PROBE = textwrap.dedent(
    """
    import json, resource, sys, time, torch, maskspec
    name, q, kv, bs, docs = sys.argv[1], *map(int, sys.argv[2:6])
    mask = maskspec.load(sys.argv[6])
    def inputs(n):
        if not docs:
            return {}
        return {"doc": maskspec.document_ids(torch.linspace(0, n, docs + 1).long(), n)}
    mask.block_mask(1, 1, 256, 256 * (kv // q), "cpu", bs, **inputs(256 * (kv // q)))
    big = inputs(max(q, kv))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    bm = mask.block_mask(1, 1, q, kv, "cpu", bs, **big)
    dt = time.perf_counter() - t
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(json.dumps({"seconds": dt, "mb": grown, "blocks": int(bm.kv_num_blocks.sum())}))
    """
)


def _probe(name: str, q: int, kv: int, bs: int, docs: int = 0) -> dict:
    args = [sys.executable, "-c", PROBE, name, str(q), str(kv), str(bs), str(docs),
            str(SPECS / f"{name}.mask")]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_eagle3_at_long_context_fits_in_megabytes():
    """create_block_mask would need ~112 GB here (it materializes Q×KV)."""
    r = _probe("eagle3", 49152, 245760, 128)
    assert r["blocks"] > 0
    assert r["seconds"] < 5, r
    assert r["mb"] < 100, r


def test_document_causal_at_131k_tokens():
    r = _probe("document_causal", 131072, 131072, 128, docs=64)
    assert r["blocks"] > 0
    assert r["seconds"] < 5, r
    assert r["mb"] < 100, r
