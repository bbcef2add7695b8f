"""Ground-truth pairs: imagefolder / Parquet / WebDataset read as the `datasets` library reads
them, imported into the run's imagefolder, bad rows counted, and a skill trained on them."""

from __future__ import annotations

import io
import json
import tarfile
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from selma_ray.images.pairs import detect_format, import_skill, read_pairs
from selma_ray.skills import SkillData
from selma_ray.storage import RunDir

CAPTIONS = ["a red cube on a blue table", "two green birds", "a yellow lamp beside a bed"]


def _img(i: int, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(i)
    arr = rng.integers(0, 255, size=(24, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _imagefolder(root) -> str:
    root.mkdir()
    with open(root / "metadata.jsonl", "w") as f:
        for i, text in enumerate(CAPTIONS):
            (root / f"img{i}.png").write_bytes(_img(i))
            f.write(json.dumps({"file_name": f"img{i}.png", "caption": text}) + "\n")
    return str(root)


def _parquet(path) -> str:
    structs = [{"bytes": _img(i), "path": None} for i in range(len(CAPTIONS))]
    pq.write_table(pa.table({"image": structs, "text": CAPTIONS}), str(path))
    return str(path)


def _webdataset(path) -> str:
    with tarfile.open(path, "w") as tar:
        for i, text in enumerate(CAPTIONS):
            for ext, data in (("jpg", _img(i, "JPEG")), ("txt", text.encode())):
                info = tarfile.TarInfo(f"sample{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_each_format_reads_as_the_datasets_library_reads_it(tmp_path):
    """Our readers against `datasets.load_dataset` on the same files: same captions, same
    pixels, same order."""
    from datasets import load_dataset

    folder = _imagefolder(tmp_path / "folder")
    parquet = _parquet(tmp_path / "pairs.parquet")
    shard = _webdataset(tmp_path / "shard-000.tar")
    hf = str(tmp_path / "hf-cache")
    cases = [
        (SkillData(uri=folder, text_column="caption"), "imagefolder",
         load_dataset("imagefolder", data_dir=folder, split="train", cache_dir=hf),
         "image", "caption"),
        (SkillData(uri=parquet), "parquet",
         load_dataset("parquet", data_files=parquet, split="train", cache_dir=hf),
         "image", "text"),
        (SkillData(uri=shard), "webdataset",
         load_dataset("webdataset", data_files=shard, split="train", cache_dir=hf),
         "jpg", "txt"),
    ]  # fmt: skip
    for data, fmt, ref, image_key, text_key in cases:
        assert detect_format(data) == fmt
        ours = list(read_pairs(data))
        assert [p.text for p in ours] == [r[text_key] for r in ref] == CAPTIONS, fmt
        for p, r in zip(ours, ref, strict=True):
            theirs = r[image_key]  # a PIL image, or the raw struct of a plain Parquet file
            if isinstance(theirs, dict):
                theirs = Image.open(io.BytesIO(theirs["bytes"]))
            assert np.array_equal(_pixels(p.image), np.asarray(theirs.convert("RGB"))), fmt


def test_import_writes_stage_2s_imagefolder_counts_bad_rows_and_resumes(tmp_path):
    root = tmp_path / "folder"
    _imagefolder(root)
    with open(root / "metadata.jsonl", "a") as f:
        (root / "broken.png").write_bytes(b"not an image")
        f.write(json.dumps({"file_name": "broken.png", "caption": "x"}) + "\n")
        f.write(json.dumps({"file_name": "img0.png", "caption": ""}) + "\n")
        f.write(json.dumps({"file_name": "gone.png", "caption": "y"}) + "\n")
    rd = RunDir(str(tmp_path / "run"))
    data = SkillData(uri=str(root), text_column="caption")
    info = import_skill(rd, "mine", data)
    assert info["pairs"] == 3 and info["imported_now"] == 3 and info["format"] == "imagefolder"
    assert info["skipped"] == {"corrupt_image": 1, "no_caption": 1, "no_image": 1}
    rows = rd.read_jsonl("images", "mine", "metadata.jsonl")
    assert [r["text"] for r in rows] == CAPTIONS
    assert [r["prompt_id"] for r in rows] == [f"mine-gt{i:06d}" for i in range(3)]
    assert {r["model"] for r in rows} == {f"data:{root}"} and {r["skill"] for r in rows} == {"mine"}
    assert rd.read_bytes("images", "mine", rows[1]["file_name"]) == _img(1)
    # the training reader takes the imported folder like a generated one
    from selma_ray.training.data import load_pairs

    pairs, skipped = load_pairs(rd, "mine")
    assert [p.text for p in pairs] == CAPTIONS and skipped == {}
    # rerun: nothing copied again; max_pairs limits the import
    assert import_skill(rd, "mine", data)["imported_now"] == 0
    assert import_skill(rd, "two", data.model_copy(update={"max_pairs": 2}))["pairs"] == 2


def test_unreadable_rows_odd_formats_and_bombs_are_skipped_or_converted_not_fatal(tmp_path):
    """A metadata line that is not UTF-8 JSON, an absolute file name and an image past PIL's
    decompression-bomb limit are skipped and counted; GIF / BMP / TIFF / WebP images become PNG
    files (the imagefolder holds PNG and JPEG, named for what they are)."""
    root = tmp_path / "folder"
    root.mkdir()
    odd = {"gif": "GIF", "bmp": "BMP", "tif": "TIFF", "webp": "WEBP", "jpg": "JPEG"}
    lines = [b"\xef\xbb\xbf" + json.dumps({"file_name": "img0.png", "text": "first"}).encode()]
    (root / "img0.png").write_bytes(_img(0))
    for i, (ext, fmt) in enumerate(odd.items(), start=1):
        (root / f"img{i}.{ext}").write_bytes(_img(i, fmt))
        lines.append(json.dumps({"file_name": f"img{i}.{ext}", "text": f"odd {ext}"}).encode())
    lines.append(b'{"file_name": "img0.png", "text": "caf\xe9 in latin-1"}')  # not UTF-8
    lines.append(b'{"file_name": "img0.png", "text": ')  # cut off
    lines.append(b'["a list, not an object"]')
    lines.append(json.dumps({"file_name": str(root / "img0.png"), "text": "absolute"}).encode())
    bomb = io.BytesIO()
    Image.new("L", (1, 1)).save(bomb, format="PNG")
    raw = bytearray(bomb.getvalue())
    raw[16:24] = (30000).to_bytes(4, "big") * 2  # IHDR: 30000 x 30000, past the bomb limit
    raw[29:33] = zlib.crc32(bytes(raw[12:29])).to_bytes(4, "big")  # the chunk's CRC
    (root / "bomb.png").write_bytes(bytes(raw))
    lines.append(json.dumps({"file_name": "bomb.png", "text": "huge"}).encode())
    (root / "metadata.jsonl").write_bytes(b"\n".join(lines) + b"\n")

    rd = RunDir(str(tmp_path / "run"))
    info = import_skill(rd, "mine", SkillData(uri=str(root)))
    assert info["skipped"] == {"bad_metadata": 3, "no_image": 1, "too_large": 1}
    rows = rd.read_jsonl("images", "mine", "metadata.jsonl")
    assert [r["text"] for r in rows] == ["first", *(f"odd {ext}" for ext in odd)]
    names = [r["file_name"] for r in rows]
    assert [n.rsplit(".", 1)[1] for n in names] == ["png", "png", "png", "png", "png", "jpg"]
    sources = ["PNG", *odd.values()]
    for i, (name, fmt) in enumerate(zip(names, sources, strict=True)):
        data = rd.read_bytes("images", "mine", name)
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == ("JPEG" if fmt == "JPEG" else "PNG")
        assert np.array_equal(_pixels(data), _pixels(_img(i, fmt))), fmt  # the source's pixels


def test_unusable_data_names_the_skill_and_the_fix(tmp_path):
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.table({"img": [_img(0)], "text": ["a"]}), str(parquet))
    with pytest.raises(ValueError, match=r"has no column\(s\) \['image'\].*data.image_column"):
        import_skill(RunDir(str(tmp_path / "run")), "mine", SkillData(uri=str(parquet)))
    # captions alone need no image column, only the text one
    from selma_ray.images.pairs import import_captions

    assert (
        import_captions("mine", SkillData(uri=str(parquet), use="captions"))[0][0]["prompt"] == "a"
    )
    with pytest.raises(ValueError, match=r"has no column\(s\) \['caption'\]"):
        import_captions("mine", SkillData(uri=str(parquet), use="captions", text_column="caption"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metadata.jsonl").write_text("")
    with pytest.raises(ValueError, match="skill 'mine': no usable image-text pairs"):
        import_skill(RunDir(str(tmp_path / "run")), "mine", SkillData(uri=str(empty)))
    with pytest.raises(FileNotFoundError, match="not found"):
        detect_format(SkillData(uri=str(tmp_path / "nowhere")))


def test_a_skill_with_data_skips_prompts_and_trains_on_its_pairs(tiny_models, tmp_path):
    """The pipeline with one generated skill and one ground-truth skill: no prompts for the
    latter, its pairs imported at the images stage, its expert trained on them."""
    from selma_ray.config import load_config
    from selma_ray.pipeline import run_pipeline
    from selma_ray.preflight import check_config

    folder = _imagefolder(tmp_path / "folder")
    skills = f"prompts.skills=[coco, {{name: mine, data: {{uri: {folder}, text_column: caption}}}}]"
    cfg = load_config(
        overrides=[
            skills, "prompts.num_prompts=4", "images.resolution=32", "train.resolution=32",
            "train.max_steps=2", "train.batch_size=2", "train.joint=true",
            "ray.executor=in-process",
        ]
    )  # fmt: skip
    run = str(tmp_path / "run")
    summary = run_pipeline(cfg, run, stages=["prompts", "images", "experts"])
    assert summary.ran == ["prompts", "images", "experts"]
    rd = RunDir(run)
    assert rd.exists("prompts", "coco.jsonl") and not rd.exists("prompts", "mine.jsonl")
    stats = rd.read_json("images", "stats.json")
    assert stats["imported"]["mine"]["pairs"] == 3 and "mine" not in stats["skills"]
    meta = rd.read_json("experts", "mine", "expert.json")
    assert meta["image_models"] == [f"data:{folder}"] and meta["pairs"]["total"] == 3
    joint = rd.read_json("experts", "joint", "expert.json")
    assert (
        joint["pairs"]["total"]
        == 3 + rd.read_json("experts", "coco", "expert.json")["pairs"]["total"]
    )
    # a missing data folder is refused before any work, naming the field
    bad = cfg.model_copy(deep=True)
    object.__setattr__(bad.prompts.skills[1], "data", SkillData(uri=str(tmp_path / "nope")))
    errors = check_config(bad, str(tmp_path / "run2"), ["images"]).errors
    assert [e.field for e in errors] == ["prompts.skills[1].data"]


def test_captions_only_become_the_skills_prompts_and_stage_2_draws_them(tiny_models, tmp_path):
    """data.use: captions: the paper's ground-truth prompts with generated images. The captions
    are the skill's prompts (in the data's order, max_pairs of them, unreadable rows counted),
    no image of the data is read, and stage 2 draws them as it draws generated prompts."""
    from selma_ray.config import load_config
    from selma_ray.images.pairs import import_captions
    from selma_ray.pipeline import run_pipeline

    folder = tmp_path / "folder"
    _imagefolder(folder)
    with open(folder / "metadata.jsonl", "ab") as f:
        f.write(b'{"file_name": "gone.png", "caption": "a lamp nobody drew"}\n')
        f.write(b'{"file_name": "img0.png", "caption": "caf\xe9"}\n')  # not UTF-8
        f.write(b'{"file_name": "img1.png", "caption": ""}\n')
    data = SkillData(uri=str(folder), text_column="caption", use="captions")
    rows, info = import_captions("mine", data)
    assert [r["prompt"] for r in rows] == [*CAPTIONS, "a lamp nobody drew"]  # no image needed
    assert [r["id"] for r in rows] == [f"mine-gt{i:06d}" for i in range(4)]
    assert {r["engine"] for r in rows} == {"data"} and {r["questions"] for r in rows} == {None}
    assert info["skipped"] == {"bad_metadata": 1, "no_caption": 1}
    two = data.model_copy(update={"max_pairs": 2})
    assert [r["prompt"] for r in import_captions("mine", two)[0]] == CAPTIONS[:2]

    skill = f"{{name: mine, data: {{uri: {folder}, text_column: caption, use: captions}}}}"
    cfg = load_config(
        overrides=[
            f"prompts.skills=[{skill}]", "images.resolution=32", "images.steps=2",
            "ray.executor=in-process",
        ]
    )  # fmt: skip
    run = str(tmp_path / "run")
    summary = run_pipeline(cfg, run, stages=["prompts", "images"])
    assert summary.ran == ["prompts", "images"]
    rd = RunDir(run)
    assert [r["prompt"] for r in rd.read_jsonl("prompts", "mine.jsonl")] == [
        r["prompt"] for r in rows
    ]
    assert rd.read_json("prompts", "stats.json")["mine"]["prompts"] == 4
    meta = rd.read_jsonl("images", "mine", "metadata.jsonl")
    assert [m["text"] for m in meta] == [r["prompt"] for r in rows]
    assert {m["model"] for m in meta} == {cfg.images.model}  # drawn, not imported
    assert "mine" in rd.read_json("images", "stats.json")["skills"]
