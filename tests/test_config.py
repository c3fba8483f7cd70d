import os

import pytest

from modelcycle.config import ConfigError, compose_config, serve_config
from modelcycle.serving.loading import VariantChoice


def test_serve_threads_follow_the_cores_unless_set() -> None:
    cores = len(os.sched_getaffinity(0))
    assert serve_config(compose_config([])).settings.threads == cores
    assert serve_config(compose_config(["serve.threads=1"])).settings.threads == 1


def test_serve_settings_from_config(tmp_path: os.PathLike[str]) -> None:
    config = serve_config(
        compose_config([f"workspace={tmp_path}", "serve.port=9001", "serve.cors_origins=[a]"])
    )
    assert config.port == 9001 and config.host == "127.0.0.1"
    assert config.settings.cors_origins == ("a",)
    assert str(config.capture_path).endswith("capture.db")
    assert serve_config(compose_config(["serve.capture=false"])).capture_path is None


def test_unknown_serve_key_names_the_group() -> None:
    with pytest.raises(ConfigError, match=r"serve config.*Valid keys"):
        serve_config(compose_config(["+serve.max_batches=3"]))


def test_max_connections_is_a_positive_whole_number_or_null() -> None:
    assert serve_config(compose_config([])).max_connections == 256
    assert serve_config(compose_config(["serve.max_connections=null"])).max_connections is None
    for bad in ("0", "many"):
        with pytest.raises(ConfigError, match=rf"serve.max_connections=.*{bad}.*or null"):
            serve_config(compose_config([f"serve.max_connections={bad}"]))


def test_serve_variant_is_fp32_or_int8_with_a_numeric_drop_limit() -> None:
    assert serve_config(compose_config([])).variant == VariantChoice("fp32", 0.01)
    chosen = serve_config(compose_config(["serve.variant=int8", "serve.int8_max_drop=-0.5"]))
    assert chosen.variant == VariantChoice("int8", -0.5)
    with pytest.raises(ConfigError, match=r"serve.variant='fp16': choose one of fp32, int8"):
        serve_config(compose_config(["serve.variant=fp16"]))
    with pytest.raises(ConfigError, match=r"serve.int8_max_drop='lots': give a number"):
        serve_config(compose_config(["serve.int8_max_drop=lots"]))
