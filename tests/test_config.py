from pathlib import Path

import pytest
import yaml

from medvit.config import (
    Config,
    config_to_dict,
    load_config,
    parse_overrides,
    read_yaml_with_bases,
    save_config,
)
from medvit.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_yaml_mirrors_dataclass_defaults():
    assert read_yaml_with_bases(CONFIGS / "defaults.yaml") == config_to_dict(Config())


def test_every_shipped_config_loads():
    files = sorted(f for f in CONFIGS.glob("*.yaml") if not f.name.startswith("study_"))  # study YAMLs: test_studies
    assert len(files) >= 4
    for f in files:
        assert isinstance(load_config(f), Config), f


def test_base_inheritance_two_levels(tmp_path):
    write(tmp_path / "a.yaml", {"optim": {"lr": 0.1, "name": "sgd"}, "data": {"batch_size": 4}})
    write(tmp_path / "b.yaml", {"base": "a.yaml", "optim": {"lr": 0.2}})
    sub = tmp_path / "sub"
    sub.mkdir()
    write(sub / "c.yaml", {"base": "../b.yaml", "model": {"patch_size": 8}})
    cfg = load_config(sub / "c.yaml")
    assert cfg.optim.lr == 0.2  # child wins
    assert cfg.optim.name == "sgd"  # inherited from the grandparent
    assert cfg.data.batch_size == 4
    assert cfg.model.patch_size == 8
    assert cfg.train.epochs == Config().train.epochs  # untouched default


def test_shipped_child_states_only_the_difference():
    vit8 = load_config(CONFIGS / "mammo_vit8.yaml")
    vit16 = load_config(CONFIGS / "mammo_vit16.yaml")
    assert vit8.model.patch_size == 8 and vit16.model.patch_size == 16
    d8, d16 = config_to_dict(vit8), config_to_dict(vit16)
    d8["model"]["patch_size"] = 16
    assert d8 == d16


def test_overrides_dotted_and_typed(tmp_path):
    cfg = load_config(None, ["optim.lr=3e-4", "train.epochs=3", "data.balanced=false", "model.kwargs={width: 64}"])
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.train.epochs == 3
    assert cfg.data.balanced is False
    assert cfg.model.kwargs == {"width": 64}
    assert parse_overrides(["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


def test_override_beats_file(tmp_path):
    f = write(tmp_path / "x.yaml", {"optim": {"lr": 0.5}})
    assert load_config(f, ["optim.lr=0.25"]).optim.lr == 0.25


def test_unknown_key_suggests_the_valid_one():
    with pytest.raises(ConfigError, match=r"optim\.lrr.*did you mean 'lr'"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="unknown config key 'optimizer'.*'optim'"):
        load_config(None, ["optimizer.lr=1"])


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"train\.epochs.*expected int"):
        load_config(None, ["train.epochs=many"])
    with pytest.raises(ConfigError, match=r"data\.balanced.*expected bool"):
        load_config(None, ["data.balanced=3"])
    with pytest.raises(ConfigError, match="expected a section"):
        load_config(None, ["optim=3"])


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config(None, ["optim.lr"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_base_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", {"base": "b.yaml"})
    write(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_save_and_read_back_identically(tmp_path):
    cfg = load_config(CONFIGS / "mammo_vit8.yaml", ["optim.lr=1e-5", "data.augment={vflip: 0.5}"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(path) == cfg
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temp file left


def test_packaged_config_by_name_from_anywhere(tmp_path, monkeypatch):
    """Issue 11: `--config demo_cnn` finds the packaged file; `base:` resolves by name too."""
    from medvit.config import packaged_configs

    expected = load_config(CONFIGS / "demo_cnn.yaml")
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    assert {"defaults", "demo_cnn", "demo_vit", "mammo_vit16"} <= set(packaged_configs())
    assert load_config("demo_cnn") == expected == load_config("demo_cnn.yaml")
    write(tmp_path / "mine.yaml", {"base": "demo_cnn", "train": {"epochs": 2}})  # no demo_cnn.yaml beside it
    cfg = load_config(tmp_path / "mine.yaml")
    assert cfg.model.backbone == "resnet10t" and cfg.train.epochs == 2
    with pytest.raises(ConfigError, match="demo_cn.*demo_cnn"):
        load_config("demo_cn")
    write(tmp_path / "demo_cnn.yaml", {"train": {"epochs": 7}})  # a file by path wins over the name
    assert load_config("demo_cnn.yaml").train.epochs == 7
