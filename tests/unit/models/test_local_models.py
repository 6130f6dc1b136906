"""``local:`` model names: passthrough, tiny builds, packaged real models and clear errors."""
from __future__ import annotations

import importlib.util

import pytest

from inpars_ray.errors import ConfigError, MissingDependencyError
from inpars_ray.models import local_models as lm


def test_other_names_pass_through_and_unknown_local_names_fail():
    assert lm.resolve_model("castorini/monot5-3b-msmarco-10k") == "castorini/monot5-3b-msmarco-10k"
    assert lm.resolve_model("/some/folder") == "/some/folder"
    with pytest.raises(ConfigError, match="local:smollm2"):
        lm.resolve_model("local:nope")
    with pytest.raises(ConfigError, match="models folder"):
        lm.resolve_model(lm.TINY_LM)


def test_tiny_models_are_built_once(tmp_path):
    path = lm.resolve_model(lm.TINY_MONOT5, tmp_path)
    stamp = (tmp_path / "tiny-monot5" / "config.json").stat().st_mtime_ns
    assert lm.resolve_model(lm.TINY_MONOT5, tmp_path) == path
    assert (tmp_path / "tiny-monot5" / "config.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("name", [lm.SMOLLM2, lm.MINILM])
def test_packaged_models_resolve_to_their_files_or_name_the_extra(name):
    package = lm.PACKAGED[name][0]
    if importlib.util.find_spec(package) is None:
        with pytest.raises(MissingDependencyError, match=r"inpars-ray\[models\]"):
            lm.resolve_model(name)
    else:
        path = lm.resolve_model(name)
        assert path.endswith(lm.PACKAGED[name][2])


def test_a_ranker_config_resolves_a_packaged_name_and_leaves_others_alone(tmp_path):
    """RankerConfig.resolved() is where every stage and integration turns ``local:minilm`` into its files."""
    from inpars_ray.models.rankers import RankerConfig

    other = RankerConfig(model=str(tmp_path / "mine"), family="bi-encoder")
    assert other.resolved() == other
    if importlib.util.find_spec(lm.PACKAGED[lm.MINILM][0]) is None:
        pytest.skip("the packaged all-MiniLM-L6-v2 is not installed here")
    got = RankerConfig(model=lm.MINILM).resolved()
    assert got.model == lm.resolve_model(lm.MINILM) and got.family == "bi-encoder"
