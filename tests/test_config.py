"""Dataclass configs: YAML files, command-line flags over them, help text and round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from iddm.config import ConfigError, build_config, config_from_namespace, config_to_dict, flat_fields, load_yaml
from iddm.decouple.privacy import PrivacyConfig
from iddm.diffusion.generate import GenerateConfig
from iddm.diffusion.loading import DEFAULT_MODEL
from iddm.schedule.config import PersonalizeConfig

REQUIRED = ("--photos", "me/photos", "--output_dir", "runs/me")


@pytest.fixture(scope="module")
def parser():
    from iddm.cli import build_parser

    return build_parser()


@pytest.fixture
def personalize(parser):
    """``iddm personalize ARGS`` -> ``PersonalizeConfig``, exactly as the CLI builds it."""

    def run(*args: str, required: bool = True) -> PersonalizeConfig:
        namespace = parser.parse_args(["personalize", *(REQUIRED if required else ()), *args])
        assert namespace.command == "personalize"
        return config_from_namespace(PersonalizeConfig, namespace)

    return run


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_with_only_the_required_flags(personalize):
    config = personalize()
    assert config == PersonalizeConfig(photos=Path("me/photos"), output_dir=Path("runs/me"))
    assert config.max_train_steps is None and config.learning_rate is None  # the base model's recommendation
    assert config.lora_target_modules is None
    assert config.overwrite is False
    assert config.checkpoints_total_limit == 2
    assert config.privacy_config == PrivacyConfig()


def test_required_options_are_named_together(personalize):
    with pytest.raises(ConfigError, match="--photos is required; --output_dir is required"):
        personalize(required=False)


def test_list_and_nested_defaults_are_not_shared_between_instances():
    first, second = PersonalizeConfig(), PersonalizeConfig()
    first.privacy_config.surrogates.append("arcface")
    assert second.privacy_config.surrogates == ["sface", "facenet"]
    assert PersonalizeConfig().privacy_config.surrogates == ["sface", "facenet"]


def test_cli_flags_have_the_field_types(personalize):
    config = personalize(
        "--max_train_steps", "20",
        "--learning_rate", "5e-4",
        "--lora_alpha", "8",
        "--resolution", "128",
        "--surrogates", "sface", "arcface", "facenet",
        "--surrogate_weights", "1", "0.5", "2",
        "--lora_target_modules", "to_q",
        "--privacy", "0.7",
    )  # fmt: skip
    assert config.photos == Path("me/photos") and isinstance(config.photos, Path)
    assert config.output_dir == Path("runs/me")
    assert config.max_train_steps == 20 and isinstance(config.max_train_steps, int)
    assert config.learning_rate == 5e-4
    assert config.lora_alpha == 8.0 and isinstance(config.lora_alpha, float)
    assert config.resolution == 128
    privacy = config.privacy_config
    assert privacy.surrogates == ["sface", "arcface", "facenet"]
    assert privacy.surrogate_weights == [1.0, 0.5, 2.0]
    assert all(isinstance(w, float) for w in privacy.surrogate_weights)
    assert config.lora_target_modules == ["to_q"]
    assert privacy.privacy == "0.7"  # a level name or a number: kept as given


def test_bool_flags_and_their_negation(personalize, tmp_path):
    assert personalize("--overwrite").overwrite is True
    assert personalize("--no-overwrite").overwrite is False
    assert personalize("--skip_bad_photos", "--with_prior_preservation").skip_bad_photos is True
    yaml_file = write_yaml(tmp_path / "c.yaml", {"overwrite": True, "train_text_encoder": True})
    config = personalize("--config", str(yaml_file), "--no-overwrite")
    assert config.overwrite is False  # the flag beats the file
    assert config.train_text_encoder is True  # the file beats the default


def test_invalid_cli_values_are_rejected(parser, capsys):
    for args, expected in (
        (["--max_train_steps", "many"], "argument --max_train_steps: invalid int value: 'many'"),
        (["--crop", "square"], "argument --crop: invalid choice: 'square'"),
        (["--mixed_precision", "fp32"], "argument --mixed_precision: invalid choice: 'fp32'"),
        (["--learning_rate", "fast"], "argument --learning_rate: invalid float value: 'fast'"),
        (["--overwrite", "yes"], "unrecognized arguments: yes"),  # a bool flag takes no value
        (
            ["--learning_rte", "0.1"],
            "unrecognized arguments: --learning_rte 0.1; --learning_rte (did you mean --learning_rate?)",
        ),
        (["--lr", "0.1"], "unrecognized arguments: --lr 0.1"),  # no abbreviations: --lr is not --lr_scheduler
        (["--surrogates", "dlib"], "argument --surrogates: invalid choice: 'dlib'"),  # not differentiable
    ):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(["personalize", *args])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert expected in err
        assert len(err.strip().splitlines()) == 1, err  # one line, no usage block


def test_yaml_file_sets_options_with_their_types(personalize, tmp_path):
    yaml_file = tmp_path / "experiment.yaml"
    yaml_file.write_text(
        "photos: data/me\n"
        "output_dir: runs/me\n"
        "class_data_dir: cache/class\n"
        "max_train_steps: 30\n"
        "learning_rate: 1e-4\n"  # YAML 1.1 reads this as a string
        "lora_alpha: 16\n"
        "epsilon: 0.05\n"
        "checkpoints_total_limit: null\n"
        "surrogates: [facenet]\n"
        "eot:\n  - jpeg\n"
        "crop: portrait\n"
        "with_prior_preservation: true\n"
    )
    config = personalize("--config", str(yaml_file), required=False)
    assert config.photos == Path("data/me") and isinstance(config.photos, Path)
    assert config.class_data_dir == Path("cache/class") and isinstance(config.class_data_dir, Path)
    assert config.max_train_steps == 30
    assert config.learning_rate == pytest.approx(1e-4) and isinstance(config.learning_rate, float)
    assert config.lora_alpha == 16.0 and isinstance(config.lora_alpha, float)
    assert config.privacy_config.epsilon == 0.05
    assert config.checkpoints_total_limit is None
    assert config.privacy_config.surrogates == ["facenet"]
    assert config.privacy_config.eot == ["jpeg"]
    assert config.crop == "portrait"
    assert config.with_prior_preservation is True
    assert config.num_class_images == 50  # untouched options keep their defaults


def test_cli_flags_override_yaml(personalize, tmp_path):
    yaml_file = write_yaml(
        tmp_path / "c.yaml",
        {"photos": "from_yaml", "max_train_steps": 10, "surrogates": ["facenet"], "seed": 7, "learning_rate": 0.01},
    )
    config = personalize(
        "--config", str(yaml_file), "--photos", "from_cli", "--surrogates", "sface", "--max_train_steps", "1500"
    )
    assert config.photos == Path("from_cli")
    assert config.privacy_config.surrogates == ["sface"]
    # A flag given explicitly wins even when it equals the default.
    assert config.max_train_steps == 1500
    assert config.seed == 7 and config.learning_rate == 0.01  # not given on the command line: from the file


def test_unknown_yaml_key_names_the_closest_option(personalize, tmp_path):
    yaml_file = write_yaml(tmp_path / "typo.yaml", {"learning_rte": 0.1, "max_train_steps": 5})
    with pytest.raises(
        ConfigError, match=r"unknown option\(s\) 'learning_rte' \(did you mean 'learning_rate'\?\)"
    ) as info:
        personalize("--config", str(yaml_file))
    message = str(info.value)
    assert "known options:" in message
    for name in ("learning_rate", "max_train_steps", "photos", "privacy", "surrogates"):
        assert f"'{name}'" in message


def test_every_invalid_value_is_listed_in_one_error(personalize, tmp_path):
    values = {
        "crop": "square",
        "mixed_precision": "fp32",
        "learning_rate": "fast",
        "max_train_steps": "two",
        "train_batch_size": 0,
        "resolution": 100000,
        "min_photos": 0,
        "epsilon": 2.0,
        "eot": ["jpeg", "unknown"],
        "overwrite": "yes",
    }
    with pytest.raises(ConfigError) as info:
        personalize("--config", str(write_yaml(tmp_path / "bad.yaml", values)))
    message = str(info.value)
    assert "\n" not in message
    for expected in (
        "--crop must be one of ['aligned', 'portrait'], got 'square'",
        "--mixed_precision must be one of ['no', 'fp16', 'bf16'], got 'fp32'",
        "--learning_rate must be a number, got 'fast'",
        "--max_train_steps must be an integer, got 'two'",
        "--train_batch_size must be >= 1, got 0",
        "--resolution must be <= 2048, got 100000",
        "--min_photos must be >= 1, got 0",
        "--epsilon must be <= 1, got 2.0",
        "--eot must be one of ['blur', 'jpeg', 'resize'], got ['jpeg', 'unknown']",
        "--overwrite must be true or false, got 'yes'",
    ):
        assert expected in message


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--max_train_steps", "0"], "--max_train_steps must be >= 1, got 0"),
        (["--max_train_steps", "-5"], "--max_train_steps must be >= 1, got -5"),
        (["--resolution", "7"], "--resolution must be >= 32, got 7"),
        (["--resolution", "100"], "--resolution must be a multiple of 8, got 100"),
        (["--lora_rank", "0"], "--lora_rank must be >= 1, got 0"),
        (["--learning_rate", "nan"], "--learning_rate must be a finite number, got nan"),
        (
            ["--surrogates", "sface", "--surrogate_weights", "1", "2"],
            "--surrogate_weights has 2 values for 1 surrogates",
        ),
        (["--privacy", "extreme"], "--privacy must be one of ['off', 'low', 'medium', 'high'] or a number in [0, 1]"),
        (["--output_dir", "me/photos/out"], "--output_dir me/photos/out is inside --photos me/photos"),
        (["--method", "full", "--pretrained_model_name_or_path", "org/model"], "--method full is the micro"),
    ],
)
def test_out_of_range_and_inconsistent_values_name_the_flag(personalize, args, expected):
    with pytest.raises(ConfigError, match="invalid options: .*" + __import__("re").escape(expected)):
        personalize(*args)


def test_diffusers_flag_aliases(personalize, parser):
    config = personalize("--rank", "8")
    assert config.lora_rank == 8
    namespace = parser.parse_args(["personalize", "--instance_data_dir", "shots", "--output_dir", "o"])
    assert config_from_namespace(PersonalizeConfig, namespace).photos == Path("shots")


def test_nested_yaml_for_the_composed_privacy_config(personalize, tmp_path):
    nested = write_yaml(tmp_path / "n.yaml", {"privacy_config": {"privacy": "high", "epsilon": 0.03}})
    config = personalize("--config", str(nested))
    assert config.privacy_config.privacy == "high" and config.privacy_config.epsilon == 0.03
    with pytest.raises(ConfigError, match="'epsilonn'"):
        personalize("--config", str(write_yaml(tmp_path / "m.yaml", {"privacy_config": {"epsilonn": 0.1}})))


def test_yaml_file_errors_name_the_file(personalize, tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        personalize("--config", str(missing))
    assert str(missing) in str(info.value)

    listing = tmp_path / "list.yaml"
    listing.write_text("- photos\n- output_dir\n")
    with pytest.raises(ValueError, match="must hold a mapping of option names to values, got list") as info:
        load_yaml(listing)
    assert str(listing) in str(info.value)

    broken = tmp_path / "broken.yaml"
    broken.write_text("photos: [unclosed\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML at line \d+"):
        load_yaml(broken)

    unsafe = tmp_path / "unsafe.yaml"
    marker = tmp_path / "executed"
    unsafe.write_text(f"photos: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_yaml(unsafe)
    assert not marker.exists()

    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing set yet\n")
    assert load_yaml(empty) == {}
    assert personalize("--config", str(empty)) == personalize()


def test_build_config_rejects_unknown_keys_of_generate_config():
    with pytest.raises(ConfigError, match=r"unknown option\(s\) 'steps' for GenerateConfig.*'num_inference_steps'"):
        build_config(GenerateConfig, {"steps": 3, "pretrained_model_name_or_path": "m", "output_dir": "o"})


def test_generate_command_builds_generate_config(parser, tmp_path):
    yaml_file = write_yaml(tmp_path / "g.yaml", {"num_images": 3, "lora": "runs/lora", "guidance_scale": 7})
    namespace = parser.parse_args(
        ["generate", "--config", str(yaml_file), "--pretrained_model_name_or_path", "runs/me",
         "--prompt", "a photo of sks person", "sks person at the beach", "--output_dir", "out"]
    )  # fmt: skip
    config = config_from_namespace(GenerateConfig, namespace)
    assert config.pretrained_model_name_or_path == "runs/me"
    assert config.prompt == ["a photo of sks person", "sks person at the beach"]
    assert config.output_dir == Path("out")
    assert config.lora == Path("runs/lora")
    assert config.num_images == 3
    assert config.guidance_scale == 7.0 and isinstance(config.guidance_scale, float)
    assert config.device is None


def test_generate_and_personalize_default_to_the_same_base_model(parser):
    generate = config_from_namespace(GenerateConfig, parser.parse_args(["generate", "--output_dir", "out"]))
    personalize = config_from_namespace(
        PersonalizeConfig, parser.parse_args(["personalize", "--photos", "p", "--output_dir", "o"])
    )
    assert generate.pretrained_model_name_or_path == personalize.pretrained_model_name_or_path == DEFAULT_MODEL


@pytest.mark.parametrize("cls", [PersonalizeConfig, GenerateConfig])
def test_every_field_has_help_text(cls, parser, capsys):
    fields = [f for f, _, _ in flat_fields(cls).values()]
    assert len(fields) >= 10
    for f in fields:
        text = f.metadata.get("help")
        assert isinstance(text, str) and len(text.strip()) >= 10, f"{cls.__name__}.{f.name} has no help text"
    command = "personalize" if cls is PersonalizeConfig else "generate"
    with pytest.raises(SystemExit) as info:
        parser.parse_args([command, "--help"])
    assert info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for f in fields:
        assert f"--{f.name}" in help_text
        assert " ".join(f.metadata["help"].split()[:3]) in help_text


def test_help_shows_defaults_and_choices(parser, capsys):
    with pytest.raises(SystemExit):
        parser.parse_args(["personalize", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(default: 500)" in help_text  # --checkpointing_steps
    assert "--overwrite, --no-overwrite" in help_text
    assert "{aligned,portrait}" in help_text
    assert "{no,fp16,bf16}" in help_text
    assert "--lora_rank LORA_RANK, --rank LORA_RANK" in help_text


@pytest.mark.parametrize("cls", [PersonalizeConfig, GenerateConfig])
def test_config_to_dict_round_trips_through_yaml(cls, parser, tmp_path):
    if cls is PersonalizeConfig:
        config = PersonalizeConfig(
            photos=Path("me"), output_dir=Path("out/run"), class_data_dir=Path("cache"), learning_rate=2e-4,
            overwrite=True, crop="aligned", checkpoints_total_limit=None,
            privacy_config=PrivacyConfig(surrogate_weights=[1.0, 0.25], eot=["jpeg"], privacy="high"),
        )  # fmt: skip
        command = "personalize"
    else:
        config = GenerateConfig(pretrained_model_name_or_path="runs/me", output_dir=Path("x"), prompt=["a", "b"])
        command = "generate"
    plain = config_to_dict(config)
    assert set(plain) == set(flat_fields(cls))
    assert json.loads(json.dumps(plain)) == plain  # only JSON/YAML types: paths are strings
    assert all(not isinstance(v, (Path, tuple)) for v in plain.values())
    assert plain["output_dir"] == str(config.output_dir)

    yaml_file = tmp_path / "saved.yaml"
    yaml_file.write_text(yaml.safe_dump(plain))
    reloaded = config_from_namespace(cls, parser.parse_args([command, "--config", str(yaml_file)]))
    assert reloaded == config
    assert build_config(cls, plain) == config
