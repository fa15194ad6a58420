"""The benchmark script's rows stay runnable: their config overrides are valid keys."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from src.config import load_config
from tests.e2e_helpers import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import bench  # noqa: E402


@pytest.mark.parametrize("name", sorted(bench.MODEL_ROWS))
def test_every_model_row_names_valid_config_keys(name):
    model, config, overrides, _ = bench.MODEL_ROWS[name]
    cfg = load_config(os.path.join(REPO, config), overrides + ["mode=graph"])
    assert cfg["model"] == model


def test_infer_rows_name_valid_config_keys():
    config, overrides = bench.INFER_CONFIG
    cfg = load_config(os.path.join(REPO, config), list(overrides))
    assert cfg["model"] == "aecrnet" and cfg["net"]["ngf"] == 64 and cfg["infer"]["tile"] > 0
    assert all(name in bench.OTHER_ROWS for name in bench.INFER_ROWS)


def test_conv_row_prints_a_table_row():
    res = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "bench.py"),
                          "--rows", "conv"], capture_output=True, text=True, timeout=300,
                         cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert res.returncode == 0, res.stderr
    row = [line for line in res.stdout.splitlines() if line.startswith("| conv")]
    assert row and "3x3 64->64" in row[0] and "FAILED" not in row[0], res.stdout
