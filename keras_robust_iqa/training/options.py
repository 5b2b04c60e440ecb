"""Options declared once, as dataclass fields, and the command-line flags made from them.

A field declared with `option(default, help, ...)` carries what its flag needs: the help
text, the choices, the type and a metavar. `add_arguments` makes the flags of some fields
(`robust-iqa train` all of `TrainConfig`'s, a recipe and the demo a few, each with its own
defaults) and `from_arguments` reads them back into the dataclass, so a new option is one
field.

- A flag is the field's name with dashes: `patch_size` -> `--patch-size`.
- A bool is a switch (`action="store_true"`); `{default}` shows it as on or off.
- An option whose default is None and which has choices also takes `none` (its default).
- `{default}` in the help text is the flag's default, as the parser got it.
"""

import argparse
import dataclasses

NONE = "none"


def option(default, help, *, choices=None, type=None, metavar=None):
    """A dataclass field with what its command-line flag needs.

    Args:
        default: the field's default.
        help: what the option does, for `--help`; `{default}` stands for the default.
        choices: the values it takes (None: any).
        type: parses the flag's text (default: the type of `default`, else `str`).
        metavar: the flag's value in the usage line.
    """
    metadata = {"help": help, "choices": None if choices is None else tuple(choices), "type": type,
                "metavar": metavar}
    return dataclasses.field(default=default, metadata={"option": metadata})


def flag(name):
    """The command-line flag of field `name`."""
    return "--" + name.replace("_", "-")


def declared(cls):
    """`{name: field}` of the fields of dataclass `cls` declared with `option`."""
    return {f.name: f for f in dataclasses.fields(cls) if "option" in f.metadata}


def check_choices(config):
    """Raise ValueError naming the flag when a field of `config` is not one of its choices."""
    for name, field in declared(type(config)).items():
        choices = field.metadata["option"]["choices"]
        value = getattr(config, name)
        if choices is None or value in choices or (value is None and field.default is None):
            continue
        also = f" or {NONE}" if field.default is None else ""
        raise ValueError(f"{flag(name)} must be one of {choices}{also}, got {value!r}.")


def add_arguments(parser, cls, names=None, defaults=None, *, unset=(), required=()):
    """Add the flags of the `option` fields `names` of dataclass `cls` (default: all) to `parser`.

    Args:
        defaults: an object whose attributes are the flags' defaults (default: `cls()`), such
            as a recipe's `TrainConfig` or the demo's settings.
        unset: names whose flag defaults to None, so that the caller knows it was not given
            (the help still shows the default of `defaults`).
        required: names whose flag must be given.
    """
    fields = declared(cls)
    defaults = cls() if defaults is None else defaults
    for name in fields if names is None else names:
        meta = fields[name].metadata["option"]
        default = getattr(defaults, name)
        shown = NONE if default is None else ("on" if default else "off") if isinstance(default, bool) else default
        kwargs = {"help": meta["help"].format(default=shown)}
        if isinstance(fields[name].default, bool):
            kwargs.update(action="store_true", default=default)
        else:
            kind = meta["type"] or (str if fields[name].default is None else type(fields[name].default))
            kwargs.update(type=kind, default=default, metavar=meta["metavar"])
            if meta["choices"] is not None:
                optional = fields[name].default is None
                kwargs.update(choices=(NONE, *meta["choices"]) if optional else meta["choices"],
                              default=shown if optional else default)
        if name in unset:
            kwargs["default"] = None
        parser.add_argument(flag(name), required=name in required, **kwargs)


def from_arguments(args, config, names=None):
    """`config` (a dataclass) with the values of the parsed flags `names` (default: all its options)."""
    fields = declared(type(config))
    values = {}
    for name in fields if names is None else names:
        value = getattr(args, name)
        takes_none = fields[name].default is None and fields[name].metadata["option"]["choices"] is not None
        values[name] = None if takes_none and value == NONE else value
    return dataclasses.replace(config, **values)


def fraction(text):
    """A number or a fraction of two numbers ("4/255"), for budgets in [0, 1] pixel units."""
    numerator, slash, denominator = text.partition("/")
    try:
        return float(numerator) / float(denominator) if slash else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or a fraction such as 4/255, got {text!r}") from None
