"""Stage 3 as a pipeline stage: the experts, and the joint baseline beside them."""

from __future__ import annotations

from safetensors.torch import load_file

from selma_ray import layout
from selma_ray.config import load_config
from selma_ray.execution import InProcessExecutor
from selma_ray.storage import RunDir
from selma_ray.training.data import (
    job_holdout,
    load_job_pairs,
    load_pairs,
    split_holdout,
    write_synthetic_skill,
)
from selma_ray.training.stage import expert_jobs, job_names, run_experts_stage

SKILLS = ("coco", "whoops")


def _cfg(steps: int, *extra: str):
    return load_config(
        overrides=[
            f"prompts.skills=[{','.join(SKILLS)}]",
            f"train.max_steps={steps}",
            "train.checkpoint_every=2",
            "train.batch_size=2",
            "train.resolution=32",
            "train.validation_fraction=0.3",
            *extra,
        ]
    )


def _run_dir(tmp_path) -> RunDir:
    rd = RunDir(str(tmp_path / "run"))
    write_synthetic_skill(rd, "coco", prompts=5, size=32, seed=0)
    write_synthetic_skill(rd, "whoops", prompts=4, images_per_prompt=2, size=32, seed=1)
    return rd


def test_joint_pairs_are_the_union_and_hold_out_each_experts_prompts(tmp_path):
    rd = _run_dir(tmp_path)
    pairs, skipped = load_job_pairs(rd, layout.JOINT, SKILLS)
    own = {s: load_pairs(rd, s)[0] for s in SKILLS}
    assert skipped == {}
    assert [p.file_name for p in pairs] == [
        f"{s}/{p.file_name}" for s in SKILLS for p in own[s]
    ]
    assert [p.digest for p in pairs] == [p.digest for s in SKILLS for p in own[s]]
    _, val = job_holdout(pairs, 0.3, seed=7, sources=SKILLS)
    expected = {p.prompt_id for s in SKILLS for p in split_holdout(own[s], 0.3, seed=7)[1]}
    assert {p.prompt_id for p in val} == expected
    assert {p.prompt_id for p in val} & {p.prompt_id for p in own["coco"]}
    assert {p.prompt_id for p in val} & {p.prompt_id for p in own["whoops"]}


def test_joint_baseline_trains_beside_the_experts_with_their_recipe_and_resumes(
    tiny_models, tmp_path
):
    rd = _run_dir(tmp_path)
    assert job_names(_cfg(2)) == list(SKILLS)
    cfg = _cfg(2, "train.joint=true")
    assert job_names(cfg) == [*SKILLS, layout.JOINT]
    out = run_experts_stage(cfg, rd, InProcessExecutor())
    assert set(out) == {*SKILLS, layout.JOINT}

    joint = rd.read_json(*layout.expert_meta(layout.JOINT))
    experts = {s: rd.read_json(*layout.expert_meta(s)) for s in SKILLS}
    assert joint["sources"] == list(SKILLS)
    assert all(experts[s]["sources"] == [s] for s in SKILLS)
    # same recipe and steps as one expert, on every skill's pairs and held-out prompts
    assert joint["config"] == experts["coco"]["config"]
    assert joint["steps"] == experts["coco"]["steps"] == 2
    for key in ("total", "train", "val", "train_prompts", "val_prompts"):
        assert joint["pairs"][key] == sum(experts[s]["pairs"][key] for s in SKILLS), key
    assert joint["val_source"] == "holdout"
    # its own input cache, encoded up front with the experts' (the stage's encoding pass)
    encoded = rd.read_json(*layout.cache_summary())
    assert encoded[layout.JOINT]["pairs"] == joint["pairs"]["total"]
    lora = load_file(rd.path(*layout.expert_lora(layout.JOINT)))
    assert lora and set(lora) == set(load_file(rd.path(*layout.expert_lora("coco"))))

    # more steps: the joint baseline resumes from its checkpoint like the experts do
    for name in (*SKILLS, layout.JOINT):
        rd.remove(*layout.expert_dir(name))
    run_experts_stage(_cfg(4, "train.joint=true"), rd, InProcessExecutor())
    for name in (*SKILLS, layout.JOINT):
        meta = rd.read_json(*layout.expert_meta(name))
        assert meta["steps"] == 4 and meta["resumed_from"] == 2, name


def test_joint_jobs_name_their_sources(tmp_path):
    rd = RunDir(str(tmp_path / "run"))
    cfg = _cfg(2, "train.joint=true")
    jobs = {j.skill: j for j in expert_jobs(cfg, rd, job_names(cfg))}
    assert jobs[layout.JOINT].sources == SKILLS
    assert all(jobs[s].sources == () for s in SKILLS)
    assert jobs[layout.JOINT].train == jobs["coco"].train


def test_runs_sharing_a_storage_path_keep_their_checkpoints_apart(tmp_path):
    """train.storage_path holds each run's checkpoints in its own folder (the same for every
    rerun of a run), and --redo experts removes that run's folder alone: the redone experts
    must not resume from the old checkpoints, nor one run from another's."""
    from selma_ray.training.stage import discard_checkpoints, train_storage_path

    shared = tmp_path / "ckpt"
    cfg = load_config(overrides=[f"train.storage_path={shared}"])
    one, two = RunDir(str(tmp_path / "runs" / "a")), RunDir(str(tmp_path / "other" / "a"))
    path_one, path_two = train_storage_path(cfg, one), train_storage_path(cfg, two)
    assert path_one != path_two  # same folder name, other runs
    assert path_one == train_storage_path(cfg, RunDir(str(tmp_path / "runs" / "a")))
    assert path_one.startswith(f"{shared}/a-") and path_two.startswith(f"{shared}/a-")
    for path in (path_one, path_two):
        ckpt = tmp_path / path / "expert-coco" / "checkpoint_1"
        ckpt.mkdir(parents=True)
        (ckpt / "state.json").write_text("{}")
    discard_checkpoints(cfg, one)
    assert not (tmp_path / path_one).exists() and (tmp_path / path_two).exists()
    # without a storage path the checkpoints are the run's train/ (the stage's own output)
    assert train_storage_path(load_config(), one) == one.url("train")
