"""Check: in batched mode (``images.exact_per_image: false``), is an image's bytes independent of
which rows shared its batch and where it sat?

Draws ``--n`` images with the stage's :class:`~selma_ray.images.generate.ImageGenerator` in
batched mode (every pipeline call padded to ``--batch-size``) three times, with the rows grouped
differently each time (in order; in uneven groups; reversed), and counts the images whose PNG
bytes equal the first drawing. Prints the throughput of batched vs one-image-per-call drawing
too. On the CPU with tiny:sd the answer is all of them (also a test); run it on a GPU box to
check that machine's kernels:

    python benchmarks/batch_invariance.py                                   # tiny:sd on CPU
    python benchmarks/batch_invariance.py --model tiny:sd15-size --resolution 512 --steps 20
"""

from __future__ import annotations

import argparse
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
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np

    from selma_ray.config import ImagesConfig
    from selma_ray.images.generate import ImageGenerator, plan_rows
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

    draw("warmup", rows[: args.batch_size], args.batch_size)
    ref, t_batched = draw("in-order", rows, args.batch_size)
    uneven, _ = draw("uneven", rows, max(1, args.batch_size - 1))
    reversed_, _ = draw("reversed", rows[::-1], args.batch_size + 1)
    gen.exact = True
    _, t_exact = draw("exact", rows, args.batch_size)

    print(
        f"model {args.model}, {args.n} images, batch {args.batch_size}, {args.steps} steps, "
        f"{args.resolution} px, device {gen.device}, dtype {args.dtype}"
    )
    for name, files in (("uneven groups", uneven), ("reversed order", reversed_)):
        same = sum(files[k] == v for k, v in ref.items())
        print(f"{name:<16} {same}/{len(ref)} images byte-identical to the in-order drawing")
    print(
        f"throughput: batched {args.n / t_batched:.2f} images/s, one per call "
        f"{args.n / t_exact:.2f} images/s ({t_exact / t_batched:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
