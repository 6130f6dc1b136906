"""A value out of a setting's range or choices is refused where the config is made, naming the setting and
the value (the bounds are declared on the fields; only checks across settings are code)."""
from __future__ import annotations

from pathlib import Path

import pytest

from inpars_ray.config import load_config
from inpars_ray.errors import ConfigError
from inpars_ray.models.rankers import RankerConfig
from inpars_ray.stages.devset import DevSetConfig
from inpars_ray.stages.mine import MineConfig
from inpars_ray.stages.teacher import TeacherConfig


@pytest.mark.parametrize(("cls", "name", "bad"), [
    (MineConfig, "depth", 0), (MineConfig, "negatives", 0), (MineConfig, "seed", -1),
    (MineConfig, "queries_per_call", 0), (MineConfig, "num_actors", 0), (MineConfig, "shuffle_partitions", 0),
    (DevSetConfig, "judge", "oracle"),
])
def test_a_bad_value_is_refused_naming_the_setting_and_the_value(cls, name, bad):
    with pytest.raises(ConfigError, match=rf"{cls.__name__}: {name}: .*\(got {bad!r}\)"):
        cls(**{name: bad})


def test_a_teachers_fusion_is_one_of_its_choices():
    with pytest.raises(ConfigError, match=r"TeacherConfig: fusion: Input should be 'zscore' \(got 'max'\)"):
        TeacherConfig(rankers=(RankerConfig(model="m"),), fusion="max")


def test_in_the_pipeline_config_the_error_names_the_dotted_path_and_where_it_came_from():
    with pytest.raises(ConfigError, match=r"--set inpars.mine.negatives=0: inpars.mine.negatives: .*\(got 0\)"):
        load_config(overrides=["inpars.mine.negatives=0"])
    with pytest.raises(ConfigError, match=r"inpars.train.pooling: Input should be 'mean' or 'cls' \(got 'max'\)"):
        load_config(overrides=["inpars.train.pooling=max"])


DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


@pytest.mark.parametrize("order", [1, -1])
def test_settings_checked_against_each_other_can_be_overridden_together_in_any_order(order):
    sets = ["inpars.train.micro_batch_size=4", "inpars.train.batch_size=4"][::order]
    config = load_config(DEMO, sets)
    assert config.inpars.train.batch_size == config.inpars.train.micro_batch_size == 4
    # a later override of the same key wins, and keys beside it in the same section are kept
    config = load_config(DEMO, ["inpars.train.lr=1e-4", "inpars.train.lr=3e-5"])
    assert config.inpars.train.lr == 3e-5 and config.inpars.train.contrastive_weight == 0.01
    with pytest.raises(ConfigError, match=r"--set inpars.train.lr=1e-4, --set inpars.train.batch_size=4: "):
        load_config(DEMO, ["inpars.train.lr=1e-4", "inpars.train.batch_size=4"])
