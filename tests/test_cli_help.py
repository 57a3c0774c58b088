"""Every command's --help explains itself: a description for every argument, readable metavars, groups, an example, the
guide's launcher variables findable by name; plain --help short, --help-all complete."""
import argparse
import re
from pathlib import Path

import pytest

from wubugen.cli import build_parser, main
from wubugen.config import GROUPS, options

ROOT = Path(__file__).resolve().parents[1]
# the training guide's .bat variables (TRAINING_GUIDE.md §2-5, SPEC §10 / scripts/train.bat)
GUIDE_VARIABLES = """VIDEO_DATA_PATH VALIDATION_VIDEO_PATH CHECKPOINT_OUTPUT_DIR LOAD_CHECKPOINT EPOCHS LAMBDA_RECON
LAMBDA_KL LAMBDA_GAN LEARNING_RATE_GEN LEARNING_RATE_DISC Q_CONTROLLER_ENABLED DISC_USE_GAAD_FILM_CONDITION
DISC_APPLY_SPECTRAL_NORM GLOBAL_MAX_GRAD_NORM WANDB_ENABLED NPROC_PER_NODE""".split()
CONFIG_COMMANDS = [["train"], ["inspect"], ["data", "inspect"], ["data", "demo"]]


def commands(parser=None, prefix=()):
    """(argv prefix, parser) of every subcommand, depth first."""
    parser = parser or build_parser()
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                yield (*prefix, name), sub
                yield from commands(sub, (*prefix, name))


def help_of(capsys, monkeypatch, argv):
    monkeypatch.setenv("COLUMNS", "120")
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    return capsys.readouterr().out


def test_guide_has_16_launcher_variables_and_the_launchers_mirror_them():
    assert len(GUIDE_VARIABLES) == 16
    launcher = set(re.findall(r"^([A-Z_]+)=", (ROOT / "scripts" / "train.sh").read_text(), re.M))
    assert set(GUIDE_VARIABLES) <= launcher


def test_every_launcher_variable_is_in_plain_train_help(capsys, monkeypatch):
    text = help_of(capsys, monkeypatch, ["train", "--help"])
    missing = [v for v in GUIDE_VARIABLES if not re.search(rf"\b{v}\b", text)]
    assert missing == []
    assert "launcher LAMBDA_KL" in text and "launcher CHECKPOINT_OUTPUT_DIR" in text


def test_every_argument_of_every_command_has_a_description():
    undocumented = []
    for argv, parser in commands():
        for a in parser._actions:
            text = getattr(a, "full_help", None) or a.help
            if isinstance(a, argparse._SubParsersAction):
                undocumented += [f"{' '.join(argv)} {c.dest}" for c in a._choices_actions if not c.help]
            elif not text or text == argparse.SUPPRESS:
                undocumented.append(f"{' '.join(argv)} {a.option_strings or a.dest}")
    assert undocumented == []


def test_every_command_has_an_example_and_no_opt_metavar(capsys, monkeypatch):
    for argv, parser in commands():
        assert "example" in (parser.epilog or ""), argv
        text = help_of(capsys, monkeypatch, [*argv, "--help"])
        assert "OPT__" not in text and "example" in text, argv
        for a in parser._actions:
            assert "OPT__" not in str(a.metavar), (argv, a.dest)


@pytest.mark.parametrize("argv", CONFIG_COMMANDS, ids=" ".join)
def test_help_all_lists_every_option_by_group(capsys, monkeypatch, argv):
    text = help_of(capsys, monkeypatch, [*argv, "--help-all"])
    sections = ("data",) if argv[0] == "data" else None
    chosen = [o for o in options() if sections is None or o.path[0] in sections]
    missing = [o.name for o in chosen if not re.search(rf"^  --{o.name}\b", text, re.M)]
    assert missing == []
    for o in chosen:
        assert f"{GROUPS[o.group]}:" in text
    assert "OPT__" not in text and "options shown" not in text


def test_plain_train_help_shows_the_common_options_and_points_to_help_all(capsys, monkeypatch):
    short = help_of(capsys, monkeypatch, ["train", "--help"])
    full = help_of(capsys, monkeypatch, ["train", "--help-all"])
    assert len(short.splitlines()) < len(full.splitlines()) / 2
    for o in options():
        assert bool(re.search(rf"^  --{o.name}\b", short, re.M)) == o.common, o.name
    assert "--help-all" in short and "docs/options.md" in short
    assert short.startswith("usage: wubugen train [-h] [--help-all] [--preset NAME] [--config FILE.toml] [OPTION ...]")


def test_readable_metavars_and_descriptions(capsys, monkeypatch):
    text = help_of(capsys, monkeypatch, ["train", "--help-all"])
    for needle in ("--epochs N ", "--lambda_kl FLOAT ", "--video_data_path PATH ", "--checkpoint_dir DIR ",
                   "--task {reconstruct,predict}", "--wubu_s_hyperbolic_dims N [N ...]",
                   "--adam_betas FLOAT [FLOAT ...]", "--wandb [true|false], --no-wandb",
                   "--flow_stats_components STAT [STAT ...]", "--wubu_s_output_dim N "):
        assert needle in text, needle
    flat = " ".join(text.split())
    assert "weight of the KL divergence to the N(0, I) prior" in flat
    assert "(>= 0; default 0.0001; launcher LAMBDA_KL)" in flat
    assert "WuBu-T: nesting levels" in flat  # a stack field's help names its stack
    assert "about 7% more FLOPs" in flat  # '%' survives argparse's formatting


def test_schema_options_keep_their_values_through_the_parser():
    """The flags the help describes still parse as before: lists, booleans, choices."""
    from wubugen.config import add_config_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_config_arguments(p)
    cfg = config_from_args(p.parse_args(["--wubu_t_hyperbolic_dims", "32", "16", "--wubu_t_num_levels", "2",
                                         "--no-disc_apply_spectral_norm", "--task", "predict"]))
    assert cfg.model.wubu_t.hyperbolic_dims == [32, 16] and cfg.model.disc_apply_spectral_norm is False
    assert cfg.model.task == "predict"
