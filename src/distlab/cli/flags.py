"""The flags that set a run's config, declared once, and the help texts they show.

`distlab run` takes every flag of CONFIG_FLAGS; sweep, compare and the deploy commands
take the same ones through `with_config_flags`, which puts them where the command's
`flags` parameter stands and hands their values over as one dict.
"""

from __future__ import annotations

import copy
import functools
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel

from distlab.cli.display import plain
from distlab.config import FLAG_KEYS

# A flag's help is its config key's docstring, read from the config schema, which takes
# every strategy's parameters and so imports every strategy module (and torch). A command
# that does not print its help needs none of it, so the help holds this mark and the key
# until `main` sees --help.
LAZY = "\x00config:"


def key_help(path: str, default: str | None = None) -> str:
    """The help of the flag that sets config key `path`, filled in when help is printed;
    `default` replaces the config's default where a command starts from another one."""
    return LAZY + path + ("" if default is None else "\x00" + default)


def resolve_help(command) -> None:
    """Fill in the config keys' help texts and the run epilog of a click command tree."""
    for param in command.params:
        help_text = getattr(param, "help", None)
        if isinstance(help_text, str) and help_text.startswith(LAZY):
            path, _, default = help_text[len(LAZY) :].partition("\x00")
            param.help = config_help(path, default or None)
    if command.epilog == LAZY:
        command.epilog = unflagged_keys()
    for sub in getattr(command, "commands", {}).values():
        resolve_help(sub)


def config_help(path: str, shown: str | None = None) -> str:
    """A config field's docstring, which is also its --help text, and its default (or
    `shown`, the default of a command that starts from another config)."""
    from distlab.config import config_field

    field = config_field(path)
    if field is None:
        return ""
    text = field.description or ""
    default = field.default if shown is None else shown
    if isinstance(default, str | int | float | bool | Path):
        return f"{text} [default: {plain(default)}]"
    return text


def names(registry: str) -> str:
    """The names a choice flag takes, read from its registry so help never drifts."""
    from distlab.data.partition import PARTITION_SCHEMES
    from distlab.strategies import STRATEGIES

    return ", ".join(STRATEGIES if registry == "strategy" else PARTITION_SCHEMES)


def unflagged_keys() -> str:
    """The run epilog: config keys that have no flag of their own, with their defaults."""
    from distlab.config import NESTED, RunConfig, config_field
    from distlab.data.partition import PARTITION_SCHEMES

    keys = [k for k in RunConfig.model_fields if k not in NESTED and k != "partition"]
    keys += [f"{s}.{k}" for s, model in NESTED.items() for k in model.model_fields]
    keys += [f"partition.{k}" for m in PARTITION_SCHEMES.values() for k in m.model_fields]
    flagged = set(FLAG_KEYS.values()) | {"strategy"}
    lines = []
    for key in dict.fromkeys(keys):
        if key not in flagged:
            default = config_field(key).default
            shown = plain(default) if not isinstance(default, BaseModel) else "-"
            lines.append(f"{key}={shown}")
    return (
        "Keys without a flag (set them with --set KEY=VALUE; defaults shown): "
        + ", ".join(lines)
        + ". The strategy.* keys: distlab strategies [NAME]."
    )


@dataclass(frozen=True)
class Flag:
    """One config flag: the command parameter's name and type, and its typer option
    (default None: a flag not given leaves the config's own value)."""

    name: str
    type: Any
    option: Any

    def parameter(self, default: str | None = None) -> inspect.Parameter:
        """This flag as a command parameter, its help showing `default` where given."""
        option = self.option if default is None else self.showing(default)
        return inspect.Parameter(
            self.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=self.type
        )

    def showing(self, default: str):
        """A copy of the option whose help names `default` as the default."""
        option = copy.copy(self.option)
        if option.help.startswith(LAZY):
            option.help = key_help(option.help[len(LAZY) :].partition("\x00")[0], default)
        else:
            option.help = re.sub(r"\[default: [^\]]*\]", f"[default: {default}]", option.help)
        return option


def config_flag(name: str, type_: Any, *decls: str, help: str | None = None) -> Flag:
    """A flag of config key FLAG_KEYS[name] (or of the config file), its help the key's."""
    return Flag(name, type_, typer.Option(None, *decls, help=help or key_help(FLAG_KEYS[name])))


# Every flag of `distlab run` that sets the config, in the order its help lists them.
CONFIG_FLAGS = (
    config_flag("config", Path, "--config", "-c", help="YAML, TOML or JSON config file."),
    config_flag("strategy", str, help=f"Strategy: {names('strategy')}. [default: centralized]"),
    config_flag("dataset", str),
    config_flag("model", str),
    config_flag("workers", int),
    config_flag("epochs", int),
    config_flag("batch_size", int, "--batch-size"),
    config_flag("lr", float),
    config_flag("optimizer", str),
    config_flag("seed", int),
    config_flag("device", str),
    config_flag("sampler", str),
    config_flag("partition", str, help=f"Partition scheme: {names('partition')}. [default: iid]"),
    config_flag("alpha", float),
    config_flag("min_size", int, "--min-size"),
    config_flag("shards_per_client", int),
    config_flag("classes_per_client", int),
    config_flag("data_dir", Path),
    config_flag("download", bool, "--download"),
    config_flag("clients", int),
    config_flag("rounds", int),
    config_flag("out_dir", Path),
    config_flag("name", str),
    config_flag("tensorboard", bool, "--tensorboard"),
)

# --set KEY=VALUE, which every command with the config flags takes after them.
SET = typer.Option(
    None, "--set", help="Override any config key: --set strategy.mode=async (repeatable)."
)

# The config flags a sweep's base takes: all but where the run directory goes, since a
# sweep names its cells itself.
SWEEP_SKIPS = ("name", "out_dir")


def with_config_flags(
    skip: tuple[str, ...] = (), defaults: dict[str, str] | None = None
) -> Callable[[Callable], Callable]:
    """Give a command the config flags (CONFIG_FLAGS but `skip`) in place of its parameter
    `flags` (keyword-only), which then receives them as one dict, parameter name -> value
    (None: not given). `defaults` (flag -> value) are the defaults the command applies
    instead of run's, which its help then shows."""

    def decorate(fn: Callable) -> Callable:
        shown = defaults or {}
        taken = [flag for flag in CONFIG_FLAGS if flag.name not in skip]
        params = []
        for param in inspect.signature(fn, eval_str=True).parameters.values():
            if param.name == "flags":
                params += [flag.parameter(shown.get(flag.name)) for flag in taken]
            else:  # typer passes every value by name
                params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))

        @functools.wraps(fn)
        def command(**given: Any) -> Any:
            flags = {flag.name: given.pop(flag.name) for flag in taken}
            return fn(**given, flags=flags)

        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


def config_keys(flags: dict[str, Any]) -> dict[str, Any]:
    """Config key -> value for each config flag in `flags` (the file and --set apart)."""
    return {FLAG_KEYS[name]: value for name, value in flags.items() if name in FLAG_KEYS}


def config_data(
    flags: dict[str, Any], overrides: list[str] | None, start: dict[str, Any] | None = None
) -> dict:
    """The unvalidated config the flags describe: `start` (a sweep file's base), then
    --config, then the flags, then --set."""
    from distlab.config import build_data

    return build_data(flags.get("config"), config_keys(flags), overrides or [], start)
