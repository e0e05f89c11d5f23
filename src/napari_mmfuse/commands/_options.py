"""``mmfuse`` choices and flags built from the operation registry, and the outputs' sidecars.

Every parameter of every method of a capability becomes one flag (its
:attr:`~napari_mmfuse.operations.Param.cli_flag`), whose help names the methods that take
it and their defaults. Flags default to ``None``: an unset flag takes the operation's own
default, so the CLI holds no default of its own.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..operations import BOOLEAN_WORDS, Operation, operations


def add_method_options(parser: argparse.ArgumentParser, capability: str, *, methods=None,
                       default: str | None = None) -> None:
    """Add ``--method`` and every parameter flag of ``capability``'s methods to ``parser``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    capability : str
    methods : iterable of str, optional
        Restrict to these methods (default: all of the capability).
    default : str, optional
        The default method; ``--method`` is required when there is none.

    Raises
    ------
    ValueError
        Two methods declare the same flag with different types (a registry bug).
    """
    chosen = [op for name, op in operations(capability).items() if methods is None or name in methods]
    parser.add_argument("--method", choices=[op.name for op in chosen], default=default, required=default is None,
                        help="; ".join(f"{op.name}: {op.doc}" for op in chosen))
    flags: dict[str, list] = {}
    for operation in chosen:
        for param in operation.params:
            flags.setdefault(param.cli_flag, []).append((operation, param))
    group = parser.add_argument_group(f"{capability} parameters (unset: the method's default)")
    for flag, uses in flags.items():
        types = {param.type for _, param in uses}
        if len(types) > 1:
            raise ValueError(f"{capability}: {flag} is declared with different types by {[op.name for op, _ in uses]}")
        param = uses[0][1]
        kwargs = {"dest": _dest(flag), "default": None, "metavar": param.name.upper()}
        if param.type is bool:
            kwargs.update(type=_boolean, metavar="true|false")
        elif param.type is str:
            choices = sorted({c for _, p in uses for c in p.choices}) or None
            kwargs.update(choices=choices, metavar=None if choices else param.name.upper())
        else:
            kwargs["type"] = param.type
        text = "; ".join(f"{op.name}: {p.describe()}" for op, p in uses)
        group.add_argument(flag, help=text.replace("%", "%%"), **kwargs)


def params_from_args(operation: Operation, args: argparse.Namespace) -> dict:
    """The operation's parameters from the flags given, checked, defaults filled in.

    Raises
    ------
    ValueError
        A flag was given that ``operation`` does not take, or a value is out of range.
    """
    own = {param.cli_flag for param in operation.params}
    for other in operations(operation.capability).values():
        for param in other.params:
            if param.cli_flag not in own and getattr(args, _dest(param.cli_flag), None) is not None:
                raise ValueError(f"{param.cli_flag} does not apply to --method {operation.name}")
    given = {param.name: getattr(args, _dest(param.cli_flag), None) for param in operation.params}
    return operation.check(given, cli=True)


def write_sidecar(output, provenance, *, overwrite: bool) -> Path:
    """Write ``provenance`` beside ``output`` (see :func:`napari_mmfuse.provenance.sidecar_path`)."""
    from ..provenance import sidecar_path

    return provenance.save(sidecar_path(output), overwrite=overwrite)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _boolean(text: str) -> bool:
    if text.lower() not in BOOLEAN_WORDS:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return BOOLEAN_WORDS[text.lower()]
