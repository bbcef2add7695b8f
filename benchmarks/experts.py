"""Stage-3 benchmark: K experts trained concurrently on K workers vs one expert alone.

Prints the makespan of one expert alone on Ray Train, of K experts launched together (goal:
<= 1.15x the single expert), and the mean step time of the bare training loop (no Ray) vs the
same loop inside Ray Train. Tiny model and synthetic imagefolders by default; ``--model`` takes
a real diffusers id on a GPU box (then pass ``--use-gpu``).

    python benchmarks/experts.py --k 2 --steps 20
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selma_ray.config import load_config  # noqa: E402
from selma_ray.storage import RunDir  # noqa: E402
from selma_ray.training.data import write_synthetic_skill  # noqa: E402
from selma_ray.training.loop import LocalReporter, train_expert  # noqa: E402

SKILLS = ["coco", "whoops", "countbench", "diffusiondb", "localized_narratives"]


class _Times(LocalReporter):
    def __init__(self) -> None:
        super().__init__()
        self.step_times: list[float] = []

    def report(self, metrics, checkpoint_dir):  # type: ignore[override]
        if "step_time_s" in metrics:
            self.step_times.append(float(metrics["step_time_s"]))
        super().report(metrics, checkpoint_dir)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=2, help="experts trained concurrently")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--model", default="tiny:sd")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--prompts", type=int, default=16, help="synthetic pairs per skill")
    p.add_argument("--use-gpu", action="store_true")
    args = p.parse_args()
    if args.k > len(SKILLS):
        p.error(f"--k at most {len(SKILLS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import ray
    import torch

    from selma_ray.distributed.train import train_experts
    from selma_ray.training.stage import expert_jobs

    skills = SKILLS[: args.k]
    work = Path(tempfile.mkdtemp(prefix="selma-bench-experts-"))
    overrides = [
        f"prompts.skills=[{', '.join(skills)}]",
        f"images.model={args.model}",
        f"train.max_steps={args.steps}",
        f"train.checkpoint_every={args.steps}",
        f"train.batch_size={args.batch_size}",
        f"train.resolution={args.resolution}",
        "train.num_workers=1",
        "train.cpus_per_worker=1",
        f"train.use_gpu={str(args.use_gpu).lower()}",
    ]
    cfg = load_config(overrides=overrides)

    def fresh_run_dir(name: str) -> RunDir:
        rd = RunDir(str(work / name))
        for i, skill in enumerate(skills):
            write_synthetic_skill(rd, skill, prompts=args.prompts, size=args.resolution, seed=i)
        return rd

    try:
        # bare loop, one thread like a Ray worker with one CPU
        torch.set_num_threads(1)
        rd = fresh_run_dir("bare")
        reporter = _Times()
        t0 = time.perf_counter()
        train_expert(
            cfg.train, skill=skills[0], run_dir_uri=rd.uri, base_model=args.model,
            reporter=reporter, seed=0,
        )  # fmt: skip
        bare_total = time.perf_counter() - t0
        bare_step = statistics.median(reporter.step_times) if reporter.step_times else float("nan")

        ray.init(num_cpus=args.k, include_dashboard=False, configure_logging=False)
        rd = fresh_run_dir("alone")
        t0 = time.perf_counter()
        alone = train_experts(expert_jobs(cfg, rd, skills[:1]))
        alone_s = time.perf_counter() - t0
        ray_step = float(alone[skills[0]].metrics.get("step_time_s", float("nan")))

        rd = fresh_run_dir("together")
        t0 = time.perf_counter()
        train_experts(expert_jobs(cfg, rd, skills))
        together_s = time.perf_counter() - t0
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nexperts benchmark: model={args.model} steps={args.steps} batch={args.batch_size} "
          f"res={args.resolution} k={args.k}")  # fmt: skip
    print(f"{'':<40}{'seconds':>10}{'ratio':>10}")
    print(f"{'1 expert alone on Ray Train (makespan)':<40}{alone_s:>10.1f}{1.0:>10.2f}")
    label = f"{args.k} experts concurrently (makespan)"
    print(f"{label:<40}{together_s:>10.1f}{together_s / alone_s:>10.2f}   goal <= 1.15")
    print(f"{'bare loop, 1 expert (total)':<40}{bare_total:>10.1f}")
    print(f"\n{'step time':<40}{'ms':>10}{'ratio':>10}")
    print(f"{'bare training loop (median)':<40}{bare_step * 1000:>10.1f}{1.0:>10.2f}")
    ratio = ray_step / bare_step
    print(f"{'inside Ray Train (last step)':<40}{ray_step * 1000:>10.1f}{ratio:>10.2f}")


if __name__ == "__main__":
    main()
