"""Trainer settings: the precision key, and OpenMP threads that sleep when idle."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from modelcycle.config import ConfigError, assemble, compose_config
from modelcycle.training import PRECISIONS, TrainerSettings


def test_precision_defaults_to_fp32_and_takes_the_mixed_ones() -> None:
    assert TrainerSettings().precision == "32-true"
    assert compose_config([]).trainer.precision == "32-true"
    assert TrainerSettings(precision="bf16-mixed").precision == "bf16-mixed"


@pytest.mark.parametrize("value", ["bf16", "bf16-true", "16", "fp8"])
def test_an_unsupported_precision_names_the_key_and_the_valid_values(value: str) -> None:
    with pytest.raises(ValueError, match=r"trainer\.precision") as raised:
        TrainerSettings(precision=value)
    assert value in str(raised.value) and all(p in str(raised.value) for p in PRECISIONS)
    with pytest.raises(ConfigError, match=r"trainer config: trainer\.precision=.*32-true"):
        assemble(compose_config(["experiment=image_rice", f"trainer.precision={value}"]))


@pytest.mark.slow  # a fresh interpreter importing the CLI: about 10 s on a loaded 2-core machine
def test_the_command_makes_idle_openmp_threads_sleep_before_torch_loads() -> None:
    # OpenMP reads OMP_WAIT_POLICY once, when torch loads it: the CLI must set it before that.
    probe = (
        "import os, sys; import modelcycle; before = 'torch' in sys.modules; "
        "import modelcycle.cli; "
        "print(before, os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    run = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert run.stdout.split() == ["False", "PASSIVE", "True"]
