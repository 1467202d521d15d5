"""The config loader: presets, `--set` overrides, one ConfigError listing every problem."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mha.cli.app import app
from mha.configs.schema import (
    PRESET_DIR,
    Config,
    ConfigError,
    dump,
    from_dict,
    load_config,
    parse_duration,
    presets,
    to_dict,
)

PRESETS = ("tiny", "multi30k_de_en", "multi30k_en_de", "base")


def problems(error: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return str(error.value).removeprefix("invalid config: ").split("; ")


# presets


@pytest.mark.parametrize("name", PRESETS)
def test_preset_by_name_equals_the_same_yaml_by_path(name: str) -> None:
    cfg = load_config(name)
    assert isinstance(cfg, Config)
    path = PRESET_DIR / f"{name}.yaml"
    assert cfg == load_config(path) == load_config(str(path))
    assert cfg.model.d_model % cfg.model.heads == 0


def test_presets_are_listed() -> None:
    assert set(PRESETS) <= set(presets())


def test_base_is_the_papers_base_model() -> None:
    model = load_config("base").model
    assert (model.heads, model.d_model, model.encoder_layers, model.decoder_layers, model.d_ff) == \
        (8, 512, 6, 6, 2048)
    assert model.d_model // model.heads == 64


def test_configs_are_frozen() -> None:
    cfg = load_config("tiny")
    with pytest.raises(AttributeError):
        cfg.model.heads = 8  # type: ignore[misc]


# --set overrides


def test_overrides_parse_yaml_scalars() -> None:
    cfg = load_config("tiny", [
        "model.heads=8", "train.lr=1e-3", "model.dropout=0.25", "data.joint_vocab=false",
        "model.tie_embeddings=no", "train.max_time=40m", "data.data_dir=null",
        "train.weight_decay=1E-2", "data.splits.test=val", "run_dir=runs/x",
    ])
    assert cfg.model.heads == 8 and isinstance(cfg.model.heads, int)
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.train.weight_decay == 0.01
    assert cfg.model.dropout == 0.25
    assert cfg.data.joint_vocab is False and cfg.model.tie_embeddings is False
    assert cfg.train.max_time == "40m" and cfg.data.data_dir is None
    assert cfg.data.splits.test == "val" and cfg.data.splits.train == "train"
    assert cfg.run_dir == "runs/x"


def test_the_last_override_wins_and_int_is_a_float() -> None:
    cfg = load_config("tiny", ["model.heads=4", "model.heads=1", "train.lr=1"])
    assert cfg.model.heads == 1
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


def test_scientific_floats_in_a_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 5e-4\n  max_steps: 100\n  warmup_steps: 10\n")
    assert load_config(path).train.lr == 5e-4


def test_an_override_fills_an_empty_section(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model:\ntrain:\n")  # sections present but empty: null in YAML
    assert load_config(path, ["model.heads=8"]).model.heads == 8


@pytest.mark.parametrize("item", ["model.heads", "=8", "model.heads 8"])
def test_malformed_override(item: str) -> None:
    with pytest.raises(ConfigError, match=rf"--set {re.escape(repr(item))}: expected key=value"):
        load_config("tiny", [item])


def test_override_below_a_scalar_is_refused() -> None:
    with pytest.raises(ConfigError, match="'run_dir' is not a section"):
        load_config("tiny", ["run_dir.name=x"])


# one bad value, one message


BAD = [
    # unknown keys, with the closest valid name
    (["model.hedas=8"], r"unknown key model\.hedas \(did you mean model\.heads\?\)"),
    (["modle.heads=8"], r"unknown key modle \(did you mean model\?\)"),
    (["train.warmup=10"], r"unknown key train\.warmup \(did you mean train\.warmup_steps\?\)"),
    (["data.splits.tets=val"], r"unknown key data\.splits\.tets \(did you mean data\.splits\.test"),
    (["model.zzz=1"], r"unknown key model\.zzz \(valid: d_model, heads, "),
    # wrong types
    (["model.heads=eight"], r"model\.heads: expected int, got 'eight'"),
    (["model.heads=true"], r"model\.heads: expected int, got True"),
    (["model.heads=2.5"], r"model\.heads: expected int, got 2\.5"),
    (["model.heads=null"], r"model\.heads: expected int, got None"),
    (["train.lr=fast"], r"train\.lr: expected float, got 'fast'"),
    (["data.joint_vocab=1"], r"data\.joint_vocab: expected bool, got 1"),
    (["train.max_time=[1, 2]"], r"train\.max_time: expected str or null, got \[1, 2\]"),
    # sizes
    (["model.d_model=0"], r"model\.d_model must be >= 2, got 0"),
    (["model.heads=-1"], r"model\.heads must be >= 1, got -1"),
    (["data.vocab_size=0"], r"data\.vocab_size must be >= 6, got 0"),
    (["train.batch_tokens=0"], r"train\.batch_tokens must be >= 3, got 0"),
    (["model.encoder_layers=0"], r"model\.encoder_layers must be >= 1, got 0"),
    (["model.d_ff=-5"], r"model\.d_ff must be >= 1, got -5"),
    (["train.lr=0"], r"train\.lr must be > 0, got 0\.0"),
    (["decode.beam=0"], r"decode\.beam must be >= 1, got 0"),
    (["train.warmup_steps=-1"], r"train\.warmup_steps must be >= 0, got -1"),
    (["train.clip_norm=-1"], r"train\.clip_norm must be >= 0, got -1\.0"),
    # relations
    (["model.heads=3"], (r"model\.heads \(3\) must divide model\.d_model \(64\): "
                        r"d_k = d_model / heads would be 21\.33, not a whole number")),
    (["model.heads=128"], r"model\.heads \(128\) must divide model\.d_model \(64\): .* 0\.5,"),
    (["train.warmup_steps=60"], r"train\.warmup_steps \(60\) must be below train\.max_steps \(60"),
    (["train.warmup_steps=99"], r"train\.warmup_steps \(99\) must be below train\.max_steps \(60"),
    (["data.src_lang=xx"], (r"data\.src_lang: unknown language 'xx' for multi30k "
                           r"\(known: en, de, fr, cs\)")),
    (["data.tgt_lang=jp"], r"data\.tgt_lang: unknown language 'jp' for multi30k"),
    (["data.splits.test=test_2099"], (r"data\.splits\.test: unknown split 'test_2099' for multi30k "
                                     r"\(known: train, val, test_2016_flickr\)")),
    (["data.tgt_lang=de"], r"data\.src_lang and data\.tgt_lang must differ, both are 'de'"),
    (["data.joint_vocab=false"], r"model\.tie_embeddings needs data\.joint_vocab: true"),
    (["data.max_len=255"], (r"data\.max_len \(255\) \+ 2 must be at most model\.max_positions "
                           r"\(256\): the longest training target \(BOS, 255 subwords, EOS\)")),
    (["model.max_positions=101"], r"data\.max_len \(100\) \+ 2 must be at most model\.max_pos"),
    (["train.batch_tokens=101"], (r"train\.batch_tokens \(101\) must be at least data\.max_len "
                                 r"\(100\) \+ 2: the longest training target would not fit")),
    (["model.d_model=63", "model.heads=1"], (r"model\.d_model \(63\) must be even with "
                                             r"model\.positional: sinusoidal")),
    (["decode.max_len_a=0.2", "decode.max_len_b=0"],
     r"decode\.max_len_a \(0\.2\) \* 2 \+ decode\.max_len_b \(0\) must be at least 1"),
    (["train.seed=4294967296"], r"train\.seed must be in \[0, 4294967295\], got 4294967296"),
    # choices and ranges
    (["model.norm=middle"], r"model\.norm must be one of pre, post, got 'middle'"),
    (["model.activation=tanh"], r"model\.activation must be one of relu, gelu, got 'tanh'"),
    (["train.precision=fp8"], r"train\.precision must be one of fp32, bf16, fp16, auto, got 'fp8'"),
    (["model.positional=rope"], r"model\.positional must be one of sinusoidal, learned"),
    (["train.device=tpu"], r"train\.device must be one of auto, cpu, cuda, got 'tpu'"),
    (["data.spm_model_type=word"], r"data\.spm_model_type must be one of bpe, unigram"),
    (["model.dropout=1"], r"model\.dropout must be in \[0, 1\), got 1\.0"),
    (["model.attention_dropout=-0.1"], r"model\.attention_dropout must be in \[0, 1\), got -0\.1"),
    (["train.label_smoothing=1.5"], r"train\.label_smoothing must be in \[0, 1\), got 1\.5"),
    (["train.ema_decay=1"], r"train\.ema_decay must be in \[0, 1\), got 1\.0"),
    (["decode.length_penalty=-0.5"], r"decode\.length_penalty must be >= 0, got -0\.5"),
    (["train.max_time=forty minutes"], (r"train\.max_time: expected a duration like '40m', '2h' or "
                                       r"'90s', got 'forty minutes'")),
    (["train.max_time=0m"], r"train\.max_time must be positive, got '0m'"),
    # a section given as a scalar
    (["model=5"], r"model: expected a mapping, got 5"),
    (["data.splits=val"], r"data\.splits: expected a mapping, got 'val'"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[o[0] for o, _ in BAD])
def test_each_bad_value_gets_its_message(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        load_config("tiny", overrides)
    assert str(error.value).startswith("invalid config: ")
    assert len(problems(error)) == 1, str(error.value)


def test_every_problem_is_reported_at_once() -> None:
    overrides = ["model.hedas=8", "model.d_model=100", "model.heads=3", "train.warmup_steps=1000",
                 "model.norm=sideways", "data.vocab_size=0", "train.lr=high", "model.dropout=2"]
    with pytest.raises(ConfigError) as error:
        load_config("tiny", overrides)
    found = problems(error)
    assert len(found) == 7, found
    for expected in ("unknown key model.hedas", "model.heads (3) must divide model.d_model (100)",
                     "train.warmup_steps (1000) must be below train.max_steps (60)",
                     "model.norm must be one of", "data.vocab_size must be >= 6",
                     "train.lr: expected float, got 'high'", "model.dropout must be in [0, 1)"):
        assert sum(expected in line for line in found) == 1, (expected, found)


def test_relations_are_not_checked_on_values_already_reported() -> None:
    with pytest.raises(ConfigError) as error:
        load_config("tiny", ["model.heads=0", "model.d_model=0"])
    assert sorted(problems(error)) == ["model.d_model must be >= 2, got 0",
                                       "model.heads must be >= 1, got 0"]


def test_non_multi30k_corpus_skips_the_language_and_split_lists() -> None:
    cfg = load_config("tiny", ["data.corpus=some/folder", "data.src_lang=xx", "data.splits.test=t"])
    assert cfg.data.src_lang == "xx"


# files


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  heads: [8\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: not valid YAML: ") as error:
        load_config(path)
    assert "\n" not in str(error.value)


def test_yaml_whose_top_is_a_list(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- model\n- train\n")
    with pytest.raises(ConfigError, match="expected a mapping of keys at the top, got list"):
        load_config(path)


def test_an_empty_yaml_is_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert load_config(path) == from_dict({})


@pytest.mark.parametrize("name", ["no_such_preset", "missing/config.yaml"])
def test_missing_file_or_unknown_preset_lists_the_presets(name: str) -> None:
    presets = r"\(presets: base, multi30k_de_en, multi30k_en_de, quick, tiny"
    with pytest.raises(ConfigError, match=rf"config '{name}': no such file and no such preset "
                                          + presets):
        load_config(name)


def test_from_dict_reports_a_config_that_is_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match="config: expected a mapping, got 'tiny'"):
        from_dict("tiny")  # type: ignore[arg-type]


# round trips


@pytest.mark.parametrize("name", PRESETS)
def test_dict_and_yaml_round_trips(name: str, tmp_path: Path) -> None:
    cfg = load_config(name, ["train.lr=1e-3", "run_dir=1e5", "train.max_time=90s"])
    assert from_dict(to_dict(cfg)) == cfg
    path = tmp_path / "resolved.yaml"
    path.write_text(dump(cfg))
    assert load_config(path) == cfg
    assert load_config(path).run_dir == "1e5"  # a string that looks like a float stays a string


# durations


@pytest.mark.parametrize(("text", "seconds"), [("40m", 2400), ("2h", 7200), ("90s", 90), ("15", 15),
                                               ("1.5h", 5400), (" 10 m ", 600)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "40 minutes", "-5m", "2d", "1h30m"])
def test_parse_duration_errors(text: str) -> None:
    message = rf"expected a duration like '40m', '2h' or '90s', got {re.escape(repr(text))}"
    with pytest.raises(ValueError, match=message):
        parse_duration(text)


# the CLI


@pytest.mark.parametrize(("args", "message"), [
    (["tiny", "--set", "model.heads=3"], "error: invalid config: model.heads (3) must divide"),
    (["tiny", "--set", "model.heads"], "error: --set 'model.heads': expected key=value"),
    (["no/such.yaml"], "error: config 'no/such.yaml': no such file and no such preset"),
])
def test_tokenize_with_a_bad_config_prints_one_line(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["tokenize", *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
    assert result.stdout == ""
