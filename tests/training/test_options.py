"""`training/options.py`: flags made from dataclass fields declared with `option`."""

import argparse
import dataclasses

import pytest

from keras_robust_iqa.training.options import add_arguments, check_choices, fraction, from_arguments, option


@dataclasses.dataclass
class Settings:
    mode: str | None = option(None, "how (default: {default})", choices=("fast", "exact"))
    size: int = option(8, "side (default: {default})")
    rate: float = option(0.5, "a budget (default: {default})", type=fraction, metavar="R")
    verbose: bool = option(False, "talk (default: {default})")
    folder: str | None = option(None, "where")
    kept: int = 3  # not an option


def parse(argv, **kwargs):
    parser = argparse.ArgumentParser()
    add_arguments(parser, Settings, **kwargs)
    return parser, parser.parse_args(argv)


def test_flags_types_defaults_and_help_come_from_the_fields():
    parser, args = parse([])
    assert from_arguments(args, Settings()) == Settings()
    text = parser.format_help()
    assert "--mode {none,fast,exact}" in text and "how (default: none)" in text
    assert "--rate R" in text and "talk (default: off)" in text and "--kept" not in text
    _, args = parse(["--mode", "exact", "--size", "5", "--rate", "4/255", "--verbose", "--folder", "none"])
    # `none` means None only for an option with choices: a folder may be called none.
    assert from_arguments(args, Settings()) == Settings("exact", 5, 4 / 255, True, "none")


def test_other_defaults_unset_and_required_flags():
    parser, args = parse(["--folder", "d"], names=("mode", "size", "folder"),
                         defaults=Settings(mode="fast", size=16), unset=("size",), required=("folder",))
    assert (args.mode, args.size, args.folder) == ("fast", None, "d")  # size: the caller fills it in
    assert "how (default: fast)" in parser.format_help() and "side (default: 16)" in parser.format_help()
    assert not hasattr(args, "rate")
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --folder is required


def test_choices_are_checked_outside_the_command_line_too():
    check_choices(Settings(mode=None))
    with pytest.raises(ValueError, match=r"^--mode must be one of \('fast', 'exact'\) or none, got 'slow'\.$"):
        check_choices(Settings(mode="slow"))
