"""Every operation's defaults agree across the registry, the core, the CLI and the widgets.

The registry (``napari_mmfuse.operations``) declares each default once; the widgets' controls
and the CLI's flags are generated from it and the core functions' keyword defaults must match.
"""

import importlib
import inspect

import pytest

from napari_mmfuse.cli import build_parser
from napari_mmfuse.operations import CAPABILITIES, all_operations, operations

OPERATIONS = all_operations()
IDS = [op.key for op in OPERATIONS]
#: The dock widgets, by their display name in napari.yaml, and the capabilities whose forms they hold.
WIDGETS = {"Denoise & prepare": ("denoise", "normalize"), "Register": ("register",),
           "Manual correction": ("register",), "Fuse": ("fuse",), "Segment": ("segment",), "Explain": ("explain",)}


def test_every_capability_declares_operations():
    assert all(operations(capability) for capability in CAPABILITIES)


@pytest.mark.parametrize("operation", OPERATIONS, ids=IDS)
def test_the_run_and_core_functions_hold_no_other_default(operation):
    run = inspect.signature(operation.run).parameters
    for param in operation.params:
        assert param.name in run, f"{operation.key}: run() does not take {param.name}"
        default = run[param.name].default
        assert default is inspect.Parameter.empty or default == param.default, \
            f"{operation.key}: run({param.name}={default!r}) but the registry says {param.default!r}"
    if operation.core:
        module, function = operation.core.split(":")
        signature = inspect.signature(getattr(importlib.import_module(module), function)).parameters
        shared = [p for p in operation.params if p.name in signature]
        assert shared, f"{operation.core} shares no keyword with {operation.key}"
        for param in shared:
            default = signature[param.name].default
            assert default is inspect.Parameter.empty or default == param.default, \
                f"{operation.core}({param.name}={default!r}) but the registry says {param.default!r}"


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


@pytest.mark.parametrize("operation", OPERATIONS, ids=IDS)
def test_the_cli_offers_the_method_and_leaves_defaults_to_the_registry(operation):
    commands = [parser for parser in _subparsers().values()
                if any("--method" in a.option_strings and a.choices and operation.name in a.choices
                       for a in parser._actions)]
    commands = [p for p in commands if all(any(param.cli_flag in a.option_strings for a in p._actions)
                                           for param in operation.params)]
    assert commands, f"no mmfuse command offers {operation.key} with all its flags"
    for parser in commands:
        for param in operation.params:
            action = next(a for a in parser._actions if param.cli_flag in a.option_strings)
            assert action.default is None, f"{parser.prog} {param.cli_flag} has its own default {action.default!r}"


def test_every_operation_has_a_form_in_its_docked_widget_starting_at_the_registry_defaults(make_napari_viewer):
    viewer = make_napari_viewer()
    forms = {}
    for name in WIDGETS:
        _, widget = viewer.window.add_plugin_dock_widget("napari-mmfuse", name)
        for method, form in widget.forms.items():
            forms[(form.operation.capability, method)] = form
    expected = {(op.capability, op.name) for op in OPERATIONS if op.capability in sum(WIDGETS.values(), ())}
    assert expected <= set(forms), f"operations without a form: {sorted(expected - set(forms))}"
    for (capability, method), form in forms.items():
        assert form.operation is operations(capability)[method]
        assert form.values() == form.operation.defaults(), f"{capability}/{method}"
