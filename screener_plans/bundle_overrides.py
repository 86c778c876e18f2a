"""Refuse a misspelled override on ``python -m monai.bundle run`` (and the commands that check or
export a bundle's network) before anything runs.

MONAI turns every ``--key value`` that ``run`` does not know into a config entry, so
``--max_step 10`` (for ``--max_steps``) adds an unused id and trains the default schedule,
hours on a CPU, without a word. Bundle configs call ``refuse_unknown_overrides`` (through
``bundle_checks.start``) before anything else, which checks the command line of that one command
against the ids of the config files it names.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import os
import sys


def _flags(argv: list[str]) -> dict[str, str | None]:
    """``--key value`` / ``--key=value`` pairs of a fire command line, keys as fire reads them."""
    flags, i = {}, 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if not token.startswith("--") or token == "--":
            continue
        key, eq, value = token[2:].partition("=")
        if not eq and i < len(argv) and not argv[i].startswith("--"):
            value, i = argv[i], i + 1
        flags[key.replace("-", "_")] = value if (eq or value) else None
    return flags


# MONAI's bundle commands whose unknown ``--key value`` pairs become config overrides
CHECKED_COMMANDS = ("run", "verify_net_in_out", "ckpt_export", "onnx_export", "trt_export")


def _command_arguments(command: str) -> set[str]:
    from monai.bundle import scripts

    params = inspect.signature(getattr(scripts, command)).parameters.values()
    return {p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD}


def _is_setting(value) -> bool:
    """A plain value a user is meant to set (not a component, reference or expression)."""
    return (
        value is None
        or isinstance(value, (bool, int, float))
        or (isinstance(value, str) and not value.startswith(("$", "@", "%")))
    )


def unknown_overrides(argv: list[str], command: str = "run") -> list[tuple[str, list[str], list[str]]]:
    """``(flag, close matches, the plain settings)`` for each override of ``python -m monai.bundle
    COMMAND ARGV`` that names no id of the configs."""
    from monai.bundle import ConfigParser

    flags = _flags(argv)
    config_file = flags.get("config_file")
    if not config_file:
        return []  # MONAI reports the missing config itself
    try:
        if config_file.lstrip().startswith("["):  # fire reads "['a.yaml','b.yaml']" as a list
            config_file = [str(f) for f in ast.literal_eval(config_file)]
        config = ConfigParser.load_config_files(config_file)
    except Exception:  # noqa: BLE001 - unreadable configs are MONAI's to report
        return []
    known = set(config) | _command_arguments(command)
    found = []
    for key in flags:
        top = key.split("#", 1)[0]
        if top in known or top.startswith("_meta_"):
            continue
        ids = sorted(k for k in config if not k.startswith("_") and k not in ("imports",))
        settings = [k for k in ids if _is_setting(config[k])]
        found.append((key, difflib.get_close_matches(top, ids, n=1), settings))
    return found


def _is_checked_command(argv: list[str]) -> bool:
    main = os.path.join("monai", "bundle", "__main__.py")
    return len(argv) > 1 and argv[0].endswith(main) and argv[1] in CHECKED_COMMANDS


def refuse_unknown_overrides(argv: list[str] | None = None) -> None:
    """End ``python -m monai.bundle run`` (or ``verify_net_in_out``, an export) with one line if
    an override names no config id."""
    argv = sys.argv if argv is None else argv
    if not _is_checked_command(argv) or os.environ.get("SCREENER_ALLOW_NEW_IDS"):
        return
    found = unknown_overrides(argv[2:], argv[1])
    if not found:
        return
    key, close, ids = found[0]
    hint = f"did you mean --{close[0]}? " if close else ""
    sys.stderr.write(
        f"screener: error: --{key} is not a setting of this bundle; {hint}its settings: "
        f"{', '.join(ids)} (set SCREENER_ALLOW_NEW_IDS=1 to add new config ids on purpose)\n"
    )
    sys.stderr.flush()
    raise SystemExit(2)
