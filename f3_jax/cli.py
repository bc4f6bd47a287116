"""What every f3_jax command line shares: user errors in one line, a quiet log, --debug.

    cli.run(main)              absl programs (train, eval, tokenize, generate, latent_cache)
    cli.guard(main, argv)      argparse programs (data.prepare, data.demo_corpus, llm_check)

A user error (f3_jax.errors.UserError and its subclasses, a missing file, a bad flag or config
override) prints `error: <what, naming the file, flag or field>` on stderr and exits with
status 2, without a traceback; `--debug` (or F3_DEBUG=1) shows the traceback. Anything else is
a bug and keeps its traceback. The log shows f3_jax's own lines and every library's warnings;
`--verbose` brings back the INFO lines of Orbax, Grain and absl.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging as std_logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence

from absl import app, flags
from absl import logging as absl_logging

from f3_jax.errors import UserError

DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of user errors (also F3_DEBUG=1).")
VERBOSE = flags.DEFINE_bool("verbose", False, "Log the INFO lines of Orbax, Grain and absl too.")

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
CONFIGS_HINT = "--print_config lists every field with its meaning"


def debugging() -> bool:
    return os.environ.get("F3_DEBUG", "") not in ("", "0") or (
        flags.FLAGS.is_parsed() and DEBUG.value
    )


def fail(message: str) -> None:
    """Prints one error line and exits with status 2."""
    first, *_ = message.strip().splitlines() or [""]
    print(f"error: {first}", file=sys.stderr, flush=True)
    sys.exit(2)


# ---- absl programs -------------------------------------------------------------------------
def run(main: Callable[[list[str]], None]) -> None:
    """app.run(main) with one-line user errors, flag errors included, and a quiet log."""
    app.run(lambda argv: _guarded(main, argv), flags_parser=_parse_flags)


def _guarded(main: Callable[[list[str]], None], argv: list[str]) -> None:
    setup_logging(VERBOSE.value)
    try:
        main(argv)
    except (UserError, FileNotFoundError) as e:
        if debugging():
            raise
        fail(str(e))


def _parse_flags(argv: list[str]) -> list[str]:
    debug = os.environ.get("F3_DEBUG", "") not in ("", "0") or "--debug" in argv
    try:
        rest = flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001  absl and config_flags raise many kinds
        if debug:
            raise
        fail(describe_flag_error(argv, e))
    # config_flags reports a missing or broken config file only when the config is first
    # read, deep inside the program: check it now.
    config_path = _flag_value(argv, "config")
    problem = config_path and config_file_problem(config_path)
    if problem and not debug:
        fail(f"--config={config_path}: {problem}")
    return rest


def describe_flag_error(argv: Sequence[str], error: Exception) -> str:
    """One line naming the flag (and for config overrides the field) that failed."""
    if isinstance(error, flags.Error) and not _is_config_error(error):
        return str(error).splitlines()[0]
    config_path = _flag_value(argv, "config")
    if config_path is None:
        return str(error).splitlines()[0]
    problem = config_file_problem(config_path)
    if problem:
        return f"--config={config_path}: {problem}"
    config = _load_config(config_path)
    for arg in argv:
        match = re.match(r"--config\.([\w.]+)(=.*)?$", arg)
        if match:
            problem = override_problem(config, match.group(1))
            if problem:
                return f"{arg}: {problem}"
    return str(error).splitlines()[0]


def _is_config_error(error: Exception) -> bool:
    return "--config" in str(error) or "config" in type(error).__module__


def _flag_value(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def config_file_problem(path: str) -> str | None:
    """Why a config file cannot be loaded, or None."""
    if not os.path.isfile(path):
        here = os.path.dirname(path) or "."
        known = (
            sorted(f for f in os.listdir(here) if f.endswith(".py")) if os.path.isdir(here) else []
        )
        hint = f" (there: {', '.join(known)})" if known else ""
        return f"no such config file{hint}"
    try:
        _load_config(path)
    except Exception as e:  # noqa: BLE001  a broken config file: say what broke
        return f"cannot load it: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def _load_config(path: str):
    spec = importlib.util.spec_from_file_location(f"f3_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def override_problem(config, dotted: str) -> str | None:
    """Why `--config.<dotted>` names no field of `config` (with a "did you mean"), or None."""
    node, walked = config, []
    for part in dotted.split("."):
        keys = list(node.keys()) if hasattr(node, "keys") else []
        if part not in keys:
            here = ".".join(walked)
            return unknown_field_message(
                f"{here + '.' if here else ''}{part}", all_fields(config), group=here
            )
        node, walked = node[part], [*walked, part]
    return None


def all_fields(config, prefix: str = "") -> list[str]:
    """Every leaf field of a config, dotted ("train.steps")."""
    out = []
    for key in config.keys():
        value = config[key]
        if hasattr(value, "keys"):
            out += all_fields(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


def unknown_field_message(name: str, fields: Sequence[str], group: str = "") -> str:
    close = difflib.get_close_matches(name, fields, n=1, cutoff=0.6)
    if not close and group:
        in_group = [f for f in fields if f.startswith(group + ".")]
        close = difflib.get_close_matches(name, in_group, n=1, cutoff=0.3)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"unknown config field {name}{hint} ({CONFIGS_HINT})"


# ---- argparse programs ---------------------------------------------------------------------
def guard(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Runs an argparse main with one-line user errors (exit 2) and a quiet log."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("F3_DEBUG", "") not in ("", "0")
    if "--debug" in args:
        args.remove("--debug")
    setup_logging(verbose="--verbose" in args)
    try:
        return main(args) or 0
    except (UserError, FileNotFoundError) as e:
        if debug:
            raise
        fail(str(e))
    return 2


# ---- logging -------------------------------------------------------------------------------
class _OwnInfoOnly(std_logging.Filter):
    """INFO lines from f3_jax only; warnings and errors from everyone."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or record.pathname.startswith(_PACKAGE_DIR)


class _ShortFormatter(std_logging.Formatter):
    """`15:04:05 message` (INFO) or `15:04:05 WARNING message`: what a person reads."""

    def format(self, record: std_logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        level = "" if record.levelno == std_logging.INFO else f"{record.levelname} "
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return f"{stamp} {level}{text}"


def setup_logging(verbose: bool) -> None:
    """Quiet, short log lines unless `verbose`; INFO level for f3_jax's own lines."""
    absl_logging.set_verbosity(absl_logging.INFO)
    handler = absl_logging.get_absl_handler()
    if verbose:
        return
    handler.addFilter(_OwnInfoOnly())
    handler.setFormatter(_ShortFormatter())
    for name in ("orbax", "grain", "jax", "absl"):
        std_logging.getLogger(name).addFilter(_OwnInfoOnly())
