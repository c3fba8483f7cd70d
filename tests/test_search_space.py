import optuna
import pytest

from modelcycle.config import ConfigError, compose_config, sweep_config
from modelcycle.search_space import SpaceError, hydra_value, parse_space


def test_nested_entries_become_params_with_hydra_overrides() -> None:
    space = parse_space(
        {
            "task": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
            "model": {
                "hidden": {"type": "categorical", "choices": [[32], [64, 32]]},
                "layers": {"type": "int", "low": 1, "high": 3},
            },
        }
    )
    assert [p.path for p in space] == ["task.lr", "model.hidden", "model.layers"]
    lr, hidden, layers = space
    assert lr.distribution() == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert hidden.choices == ("[32]", "[64,32]")
    assert hidden.override("[64,32]") == "model.hidden=[64,32]"
    assert layers.override(2) == "model.layers=2"
    trial = optuna.create_study().ask()
    assert 1e-4 <= lr.suggest(trial) <= 1e-2 and hidden.suggest(trial) in hidden.choices


def test_hydra_values() -> None:
    assert [hydra_value(v) for v in (True, None, [1, "a"], "infonce")] == [
        "true",
        "null",
        "[1,a]",
        "infonce",
    ]
    assert hydra_value("a b") == "'a b'"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (0.1, r"sweep.space.x=0.1 is not a search-space entry"),
        ({"type": "normal"}, r"sweep.space.x.type='normal' is not a distribution"),
        ({"type": "float", "low": 1}, r"sweep.space.x.high=None: a float range needs a number"),
        ({"type": "int", "low": 1.5, "high": 3}, r"sweep.space.x.low=1.5: a int range"),
        ({"type": "float", "low": 2, "high": 1}, r"low=2 must be below high=1"),
        ({"type": "float", "low": 0, "high": 1, "log": True}, r"log scale needs low > 0"),
        ({"type": "float", "low": 0, "high": 1, "lo": 0}, r"sweep.space.x: lo is not a float key"),
        ({"type": "categorical", "choices": [1]}, r"at least two values"),
        ({"type": "categorical", "choices": [1, 1]}, r"a choice is repeated"),
    ],
)
def test_bad_entries_name_the_key_and_the_fix(entry: object, message: str) -> None:
    with pytest.raises(SpaceError, match=message):
        parse_space({"x": entry})


def test_empty_space_says_how_to_add_one() -> None:
    with pytest.raises(SpaceError, match=r"sweep.space is empty.*\+sweep.space"):
        parse_space({})


def test_sweep_config_defaults_and_command_line_precedence(tmp_path: object) -> None:
    cfg = compose_config([f"workspace={tmp_path}", "experiment=twins_graph"])
    plan = sweep_config(cfg)
    assert plan.study.name == "twins_graph" and plan.study.trials == 20
    assert plan.study.storage == f"sqlite:///{tmp_path}/optuna.db"
    assert "model.layers" in {p.path for p in plan.space}  # the experiment's own space
    given = sweep_config(cfg, trials=3, study="s", storage="sqlite:///x.db")
    assert (given.study.trials, given.study.name, given.study.storage) == (3, "s", "sqlite:///x.db")


@pytest.mark.parametrize("experiment", ["twins", "twins_graph", "twins_functional", "image_rice"])
def test_every_shipped_space_names_real_keys(experiment: str) -> None:
    assert sweep_config(compose_config([f"experiment={experiment}"])).space


def test_unknown_path_suggests_the_close_key() -> None:
    cfg = compose_config(["+sweep.space.model.dropuot={type:float,low:0,high:1}"])
    with pytest.raises(
        ConfigError, match=r"model.dropuot \(did you mean model.dropout\?\) is not a key"
    ):
        sweep_config(cfg)


def test_ends_are_the_extremes_a_trial_may_draw() -> None:
    (lr, layers, widths, share) = parse_space(
        {
            "task": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
            "model": {
                "layers": {"type": "int", "low": 1, "high": 10, "step": 4},  # 1, 5, 9
                "hidden": {"type": "categorical", "choices": [[32], [64, 32]]},
                "dropout": {"type": "float", "low": 0.0, "high": 0.55, "step": 0.1},
            },
        }
    )
    assert lr.ends() == [("low", 1e-4), ("high", 1e-2)]
    assert layers.ends() == [("low", 1), ("high", 9)]
    assert widths.ends() == [("choice", [32]), ("choice", [64, 32])]
    assert share.ends() == [("low", 0.0), ("high", pytest.approx(0.5))]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["sweep.space.model.dropout.high=2"],
            r"sweep.space.model.dropout: a trial that draws high 2.0 could not start "
            r"\(model.dropout=2.0: give a value from 0 to below 1\); narrow the range",
        ),
        (
            ["+sweep.space.task.batch_size={type:int,low:0,high:4}"],  # the task's own check
            r"sweep.space.task.batch_size: a trial that draws low 0 could not start \(.*"
            r"batch_size=0: give a whole number >= 1",
        ),
        (
            ["+sweep.space.task.objective={type:categorical,choices:[bce,hinge]}"],
            r"sweep.space.task.objective: a trial that draws choice 'hinge' could not start",
        ),
    ],
)
def test_a_space_whose_trials_could_not_start_is_refused_before_the_study(
    overrides: list[str], message: str
) -> None:
    # A trial drawing dropout 1.3 failed after the data loaded, and the study kept it.
    with pytest.raises(ConfigError, match=message):
        sweep_config(compose_config(overrides))


def test_the_shipped_spaces_pass_the_check_unchanged() -> None:
    for experiment in ("twins", "image_rice"):
        assert sweep_config(compose_config([f"experiment={experiment}"])).space
