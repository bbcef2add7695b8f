"""Check: in batched mode (``images.exact_per_image: false``), does an image's bytes depend on
how the rows reach the workers, and on which rows share its batch?

Two parts, both on ``--n`` images in batched mode (every pipeline call padded to
``--batch-size``):

- the stage as it runs: the same rows through :func:`~selma_ray.images.stage.draw_rows` (an
  :class:`~selma_ray.execution.InProcessExecutor`, a fresh generator each time) with two task
  splits (``--task-splits``: ``images.rows_per_task`` values, the second drawing with the rows
  in reverse order). The batch plan is a pure function of the rows and the batch size, so every
  image should be byte-identical: on a GPU too;
- for information, regrouping: the stage's
  :class:`~selma_ray.images.generate.ImageGenerator` called on rows grouped three ways (in
  order; in uneven groups; reversed), as batches the plan would never form. On a GPU, fp16
  kernels depend on a sample's batch and position, so fewer images match there.

Prints the counts of identical images and the throughput of batched vs one-image-per-call
drawing (``--no-exact`` leaves the latter out); ``--json PATH`` writes them to PATH.

    python benchmarks/batch_invariance.py                                   # tiny:sd on CPU
    python benchmarks/batch_invariance.py --model tiny:sd15-size --resolution 512 --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

try:
    import selma_ray  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = (
    "a red cat on a table",
    "two dogs on the left of a person",
    "a blue car next to three green trees",
    "a photo of a kitchen with a white oven",
    "an astronaut riding a horse on the moon",
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny:sd")
    p.add_argument("--n", type=int, default=8, help="images")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--dtype", default="auto")
    p.add_argument(
        "--task-splits", type=int, nargs=2, default=None, metavar=("A", "B"),
        help="images.rows_per_task of the two stage drawings (batch size and 3x it)",
    )  # fmt: skip
    p.add_argument("--no-exact", action="store_true", help="no one-image-per-call drawing")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results here")
    args = p.parse_args(argv)
    splits = args.task_splits or [args.batch_size, 3 * args.batch_size]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np

    from selma_ray.config import ImagesConfig
    from selma_ray.execution import InProcessExecutor
    from selma_ray.images.generate import ImageGenerator, plan_rows
    from selma_ray.images.stage import draw_rows
    from selma_ray.storage import RunDir

    cfg = ImagesConfig(
        model=args.model,
        steps=args.steps,
        resolution=args.resolution,
        rows_per_task=args.batch_size,
        images_per_call=args.batch_size,
        dtype=args.dtype,
        exact_per_image=False,
    )
    gen = ImageGenerator(cfg, "memory://unused")
    prompts = [
        {"id": f"p{i:04d}", "skill": "check", "prompt": PROMPTS[i % len(PROMPTS)] + f" #{i}"}
        for i in range(args.n)
    ]
    rows = plan_rows(prompts, 1, run_seed=0)

    def draw(name: str, order: list[dict], group: int) -> tuple[dict[str, bytes], float]:
        gen.out = RunDir(f"memory://invariance-{name}/images")
        start = time.perf_counter()
        for i in range(0, len(order), group):
            chunk = order[i : i + group]
            gen({k: np.array([r[k] for r in chunk]) for k in chunk[0]})
        seconds = time.perf_counter() - start
        files = {r["file_name"]: gen.out.read_bytes(r["skill"], r["file_name"]) for r in order}
        return files, seconds

    def draw_stage(name: str, order: list[dict], rows_per_task: int) -> dict[str, bytes]:
        """The rows through the stage's draw_rows, in a fresh generator (as a new actor)."""
        out = RunDir(f"memory://invariance-{name}/images")
        split = cfg.model_copy(update={"rows_per_task": rows_per_task})
        draw_rows(order, split, out.url(), InProcessExecutor())
        return {r["file_name"]: out.read_bytes(r["skill"], r["file_name"]) for r in order}

    draw("warmup", rows[: args.batch_size], args.batch_size)
    ref, t_batched = draw("in-order", rows, args.batch_size)
    uneven, _ = draw("uneven", rows, max(1, args.batch_size - 1))
    reversed_, _ = draw("reversed", rows[::-1], args.batch_size + 1)
    t_exact = None
    if not args.no_exact:
        gen.exact = True
        _, t_exact = draw("exact", rows, args.batch_size)
    split_a = draw_stage("split-a", rows, splits[0])
    split_b = draw_stage("split-b", rows[::-1], splits[1])

    def same(files: dict[str, bytes], reference: dict[str, bytes]) -> int:
        return sum(files[k] == v for k, v in reference.items())

    result = {
        "model": args.model,
        "n": args.n,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "resolution": args.resolution,
        "device": str(gen.device),
        "dtype": args.dtype,
        "task_splits": splits,
        "task_splits_identical": same(split_b, split_a),
        "task_splits_all_identical": split_a == split_b,
        "task_split_vs_in_order_identical": same(split_a, ref),
        "regrouped_identical": {"uneven": same(uneven, ref), "reversed": same(reversed_, ref)},
        "batched_images_per_s": args.n / t_batched,
        "exact_images_per_s": args.n / t_exact if t_exact else None,
    }
    print(
        f"model {args.model}, {args.n} images, batch {args.batch_size}, {args.steps} steps, "
        f"{args.resolution} px, device {gen.device}, dtype {args.dtype}"
    )
    print(
        f"{'task splits':<16} {result['task_splits_identical']}/{args.n} images byte-identical "
        f"between draw_rows with rows_per_task {splits[0]} and {splits[1]} (rows reversed)"
    )
    for name, key in (("uneven groups", "uneven"), ("reversed order", "reversed")):
        k = result["regrouped_identical"][key]
        print(f"{name:<16} {k}/{args.n} images byte-identical to the in-order drawing")
    line = f"throughput: batched {args.n / t_batched:.2f} images/s"
    if t_exact:
        line += f", one per call {args.n / t_exact:.2f} images/s ({t_exact / t_batched:.2f}x)"
    print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
