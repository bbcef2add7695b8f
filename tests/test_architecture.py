"""The shape of the package: stage cores never import Ray; one module spells run-dir paths."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "selma_ray"
#: The Ray layer and the top-level wiring: the only modules that may import Ray.
RAY_LAYER = ("distributed/", "cli.py", "pipeline.py")


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _core_modules() -> list[Path]:
    return [p for p in _modules() if not str(p.relative_to(PACKAGE)).startswith(RAY_LAYER)]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, at module level or inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.extend((node.lineno, f"{node.module}.{a.name}") for a in node.names)
            out.append((node.lineno, node.module))
    return out


def test_stage_cores_never_import_ray_or_the_ray_layer():
    offenders = [
        f"{p.relative_to(PACKAGE)}:{line} imports {name}"
        for p in _core_modules()
        for line, name in _imports(p)
        if name == "ray"
        or name.startswith("ray.")
        or name == "selma_ray.distributed"
        or name.startswith("selma_ray.distributed.")
    ]
    assert not offenders, "\n".join(offenders)


def test_the_rule_finds_imports_inside_functions(tmp_path):
    """The checker itself: a Ray import hidden in a function body is found."""
    sample = tmp_path / "m.py"
    sample.write_text(
        "def f():\n    from ray.data import Dataset\n    import selma_ray.distributed\n"
    )
    names = {name for _, name in _imports(sample)}
    assert {"ray.data", "selma_ray.distributed"} <= names


def test_every_core_module_imports_with_ray_unimportable():
    """Import every core module in a process where ``import ray`` fails."""
    names = [
        ".".join(("selma_ray", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(
            ".__init__"
        )
        for p in _core_modules()
    ]
    code = (
        "import importlib, sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'ray' or name.startswith('ray.'):\n"
        "            raise ImportError('ray is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print('ok', len([m for m in sys.modules if m.startswith('selma_ray')]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok")


#: Run-directory names only :mod:`selma_ray.layout` may spell (as string literals).
LAYOUT_LITERALS = (
    "pytorch_lora_weights.safetensors",
    "expert.json",
    "merge.json",
    "curves.json",
    "metadata.jsonl",
    "manifest.json",
    "config.yaml",
    "encode.json",
    "inputs.safetensors",
    "answers.parquet",
    "report.json",
    "report.html",
    "contact_sheet.png",
)
#: Folder names used as run-directory path parts, e.g. run_dir.exists("experts", ...).
LAYOUT_FOLDERS = ("prompts", "images", "cache", "train", "experts", "merged", "eval", "logs")


def test_only_the_layout_module_spells_run_dir_paths():
    offenders = []
    for path in _modules():
        if path.name == "layout.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if node.value in LAYOUT_LITERALS:
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                # run_dir.<method>("experts", ...) / rd.url("eval", ...)
                if node.func.attr in {
                    "exists", "url", "path", "read_json", "read_bytes", "read_text",
                    "read_jsonl", "write_json", "write_bytes", "write_text", "write_jsonl",
                    "listdir", "remove", "makedirs",
                }:  # fmt: skip
                    for arg in node.args:
                        if isinstance(arg, ast.Constant) and arg.value in LAYOUT_FOLDERS:
                            offenders.append(
                                f"{path.relative_to(PACKAGE)}:{node.lineno} "
                                f"{node.func.attr}({arg.value!r}, ...)"
                            )
    assert not offenders, "\n".join(offenders)


def test_one_list_of_merge_methods():
    """The merge methods are listed once; config, CLI and stage use that list."""
    literal = re.compile(r"[\"']dare_ties[\"']")
    spelled = [str(p.relative_to(PACKAGE)) for p in _modules() if literal.search(p.read_text())]
    assert len(spelled) == 1, spelled
