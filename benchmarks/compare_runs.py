"""Compare two run directories: prompts, images and eval images byte for byte, every LoRA
(experts and merged) tensor for tensor, and the DSG numbers per variant.

    python benchmarks/compare_runs.py RUN_A RUN_B

Used to show that a refactor leaves a run's results unchanged (same config, same seed, same
machine). Prints JSON; exits 1 when anything differs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from selma_ray import layout


def _files(root: Path, sub: tuple[str, ...], suffixes: set[str]) -> dict[str, bytes]:
    base = root.joinpath(*sub)
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(base.rglob("*"))
        if p.is_file() and p.suffix in suffixes
    }


def compare(a: Path, b: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    out: dict = {}
    for sub, suffixes in (
        (layout.prompts_dir(), {".jsonl", ".parquet"}),
        (layout.images_dir(), {".png", ".jpg", ".jsonl"}),
        (layout.eval_images(), {".png"}),
    ):
        fa, fb = _files(a, sub, suffixes), _files(b, sub, suffixes)
        differ = sorted(set(fa) ^ set(fb) | {k for k in fa if k in fb and fa[k] != fb[k]})
        out["/".join(sub)] = {"files": [len(fa), len(fb)], "differ": differ[:20]}
    loras = {}
    for p in sorted(a.rglob(layout.LORA_FILE)):
        rel = p.relative_to(a)
        q = b / rel
        ta = load_file(str(p))
        tb = load_file(str(q)) if q.exists() else {}
        same = set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)
        loras[str(rel)] = {"tensors": len(ta), "equal": same}
    out["loras"] = loras
    report = layout.eval_report()
    if a.joinpath(*report).exists() and b.joinpath(*report).exists():
        ra = json.loads(a.joinpath(*report).read_text())["variants"]
        rb = json.loads(b.joinpath(*report).read_text())["variants"]
        out["dsg_equal"] = {v: ra[v]["dsg"] == rb.get(v, {}).get("dsg") for v in ra}
    return out


def identical(result: dict) -> bool:
    files = all(not v["differ"] for k, v in result.items() if isinstance(v, dict) and "differ" in v)
    loras = all(v["equal"] for v in result["loras"].values())
    return files and loras and all(result.get("dsg_equal", {}).values())


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    result = compare(Path(sys.argv[1]), Path(sys.argv[2]))
    result["identical"] = identical(result)
    print(json.dumps(result, indent=1))
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
