import pytest

from charrnn import safeload
from charrnn.config import Config, load_config, parse_override
from charrnn.errors import ConfigError, UsageError


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_and_yaml_values(tmp_path):
    cfg = load_config(write(tmp_path, "model:\n  cell: gru\n  hidden_size: 512\noptim:\n"
                                      "  lr: 1e-3\n"))
    assert cfg.model.cell == "gru" and cfg.model.hidden_size == 512
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.data == Config().data


def test_overrides_are_parsed_as_yaml_and_repeatable(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  max_steps: 10\n"),
                      ["model.hidden_size=64", "train.max_time=2.5", "data.vocab=null",
                       "model.cell=rnn", "train.max_steps=20"])
    assert cfg.model.hidden_size == 64 and cfg.train.max_time == 2.5
    assert cfg.data.vocab is None and cfg.model.cell == "rnn" and cfg.train.max_steps == 20


@pytest.mark.parametrize("text", ["model.hidden_size", "hidden_size=3", "=3", "a.b.c=1",
                                  ".x=1"])
def test_malformed_override_is_a_usage_error(text):
    with pytest.raises(UsageError, match="malformed --set"):
        parse_override(text)


def test_every_problem_is_reported_at_once_each_naming_its_key(tmp_path):
    path = write(tmp_path, """
data: {seq_len: 0, val_fraction: 0.9}
model: {cell: transformer, hidden_size: 0, dropout: 1.5, num_layers: 0, hiden: 3}
optim: {lr: -0.1}
train: {max_steps: "many"}
extra: {}
""")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = info.value.problems
    for key in ("data.seq_len", "data.val_fraction", "model.cell", "model.hidden_size",
                "model.dropout", "model.num_layers", "model.hiden", "optim.lr",
                "train.max_steps", "extra"):
        assert any(key in p for p in problems), key
    assert any("did you mean 'model.hidden_size'" in p for p in problems)
    assert info.value.exit_code == 2


def test_problems_from_the_command_line_say_so(tmp_path):
    path = write(tmp_path, "model: {dropout: 2}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["optim.lr=-1", "model.hiden=3"])
    marked = {p.split("'")[1]: p.endswith("(from --set)") for p in info.value.problems}
    assert marked == {"model.dropout": False, "optim.lr": True, "model.hiden": True}


def test_wrong_types_are_named(tmp_path):
    with pytest.raises(ConfigError, match="'model.num_layers' must be an integer, not 2.5"):
        load_config(None, ["model.num_layers=2.5"])
    with pytest.raises(ConfigError, match="'train.tensorboard' must be true or false"):
        load_config(None, ["train.tensorboard=3"])
    with pytest.raises(ConfigError, match="must be a finite number"):
        load_config(None, ["optim.lr=.inf"])


def test_yaml_that_is_not_a_mapping_or_not_yaml(tmp_path):
    with pytest.raises(UsageError, match="must be a YAML mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(UsageError, match="not valid YAML at line 3"):
        load_config(write(tmp_path, "model:\n  cell: [lstm\n"))
    with pytest.raises(UsageError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_a_key_given_twice_is_refused_naming_it(tmp_path):
    """YAML keeps the last of two equal keys silently: a second `data:` section would drop
    the first one's settings. Keys merged in with `<<` may still be overridden."""
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  path: a.txt\nmodel:\n  hidden_size: 32\ndata:\n  seq_len: 16\n")
    with pytest.raises(UsageError, match="line 5, column 1: the key 'data' is given twice"):
        load_config(path)
    path.write_text("model:\n  hidden_size: 32\n  hidden_size: 64\n")
    with pytest.raises(UsageError, match="'hidden_size' is given twice"):
        load_config(path)
    path.write_text("base: &b {lr: 0.01, weight_decay: 0.1}\noptim:\n  <<: *b\n  lr: 0.02\n"
                    "train:\n  max_time: 60\n")
    merged = safeload.load_yaml(path.read_text())
    assert merged["optim"] == {"lr": 0.02, "weight_decay": 0.1}


def test_numbers_yaml_would_read_in_base_8_or_60_are_refused(tmp_path):
    """YAML 1.1 reads 017 as 15 and 1:30 as 90: a hidden_size of 017 trained 15 units."""
    path = tmp_path / "c.yaml"
    for text in ("model:\n  hidden_size: 017\n", "train:\n  max_time: 1:30\n"):
        path.write_text(text)
        with pytest.raises(UsageError, match="line 2, column .*: .* would be read in base 8 "
                                             "or 60 .* without the leading zero or the colon"):
            load_config(path)
    for override in ("train.seed=0123", "train.max_time=1:30"):  # read as text, so refused
        with pytest.raises(ConfigError, match="must be"):
            load_config(None, [override])
    assert load_config(None, ["train.seed=0", "model.hidden_size=0x20", "optim.lr=0.01",
                              "data.separator='017'"]).model.hidden_size == 32


def test_adamw_betas_must_be_below_one():
    with pytest.raises(ConfigError, match="'optim.beta2' must be less than 1, not 1"):
        load_config(None, ["optim.beta2=1"])


def test_a_budget_is_required():
    with pytest.raises(ConfigError, match="both null"):
        load_config(None, ["train.max_steps=null"])


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        load_config(path)


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(None, ["model.hidden_size=77", "data.separator=\\n"])
    again = load_config(write(tmp_path, cfg.to_yaml()))
    assert again == cfg


def test_readme_documents_every_config_key():
    from pathlib import Path

    from charrnn.config import field_reference

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    missing = [key for key, *_ in field_reference() if f"`{key}`" not in readme]
    assert not missing, f"README.md lacks {missing}"


def test_config_replace_checks_its_names_and_marks_its_keys_as_set():
    config = Config()
    with pytest.raises(ConfigError, match=r"Config.replace: 2 problems: unknown section "
                       r"'trian' \(sections: data, model, optim, train\); unknown key "
                       r"'train.max_step' \(did you mean 'train.max_steps'\?\)"):
        config.replace(train={"max_step": 5}, trian={})
    with pytest.raises(ConfigError, match="'train' must be a mapping of keys to values"):
        config.replace(train=None)
    changed = config.replace(model={"hidden_size": 32})
    assert changed.model.hidden_size == 32 and "model.hidden_size" in changed.given


def test_values_from_code_are_taken_as_the_numbers_and_paths_they_stand_for(tmp_path):
    """np.float64(1e-4) was refused as "must be a number"; a pathlib path as not a string."""
    np = pytest.importorskip("numpy")
    config = Config().replace(optim={"lr": np.float64(1e-4)}, model={"hidden_size": np.int64(32)},
                              data={"path": tmp_path / "corpus.txt"},
                              train={"out_dir": tmp_path / "run", "seed": np.uint8(3)}).checked()
    assert (config.optim.lr, config.model.hidden_size, config.train.seed) == (1e-4, 32, 3)
    assert type(config.optim.lr) is float and type(config.model.hidden_size) is int
    assert config.data.path == str(tmp_path / "corpus.txt")
    # Plain at once: written to YAML before any check (it could not represent numpy's).
    assert "lr: 0.5" in Config().replace(optim={"lr": np.float32(0.5)}).to_yaml()
    assert Config().replace(train={"tensorboard": np.bool_(True)}).checked().train.tensorboard
    with pytest.raises(ConfigError, match=r"'model.hidden_size' must be an integer, not 32.5"):
        Config().replace(model={"hidden_size": np.float64(32.5)}).checked()


def test_a_separator_no_text_can_hold_is_refused():
    """A lone surrogate ended training in a UnicodeEncodeError, leaving a run directory."""
    with pytest.raises(ConfigError, match="'data.separator' holds a lone surrogate"):
        load_config(None, ['data.separator="\\ud800"'])
