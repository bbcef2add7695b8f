"""The one list of merge methods: config, CLI and merge accept the same; no torch to read it."""

from __future__ import annotations

import subprocess
import sys
import typing

import pytest

from selma_ray.cli import build_parser
from selma_ray.config import MergeConfig
from selma_ray.merging.methods import METHODS, MergeOptionError, check_options


def test_config_and_cli_use_the_one_list():
    assert typing.get_args(MergeConfig.model_fields["method"].annotation) == METHODS
    parser = build_parser()
    for m in METHODS:
        assert parser.parse_args(["merge", "--method", m]).method == m
    with pytest.raises(SystemExit):
        parser.parse_args(["merge", "--method", "average"])


def test_options_are_checked_with_their_config_field():
    check_options("svd", 1.0, None)
    with pytest.raises(MergeOptionError, match=r"'average' is unknown.*\(merge.method\)"):
        check_options("average", 0.5, None)
    with pytest.raises(MergeOptionError, match=r"density must be in \(0, 1\].*merge.density"):
        check_options("ties", 0.0, None)
    with pytest.raises(MergeOptionError, match="svd_rank must be >= 1.*merge.svd_rank"):
        check_options("svd", 0.5, 0)


def test_importing_the_package_and_its_method_list_imports_no_torch():
    code = (
        "import sys, selma_ray.merging, selma_ray.merging.methods, selma_ray.config; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert selma_ray.merging.METHODS == selma_ray.merging.methods.METHODS"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
