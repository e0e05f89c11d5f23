"""``mmfuse replay``: recompute an output from its provenance sidecar.

Example::

    mmfuse denoise t1.nii.gz --method nlm -o t1_nlm.nii.gz      # writes t1_nlm.nii.gz.provenance.json
    mmfuse replay t1_nlm.nii.gz.provenance.json -o again.nii.gz   # same operation, parameters, inputs, seed

The recorded inputs are read from their recorded paths and must still hold the same content
(their hashes are checked). Deterministic operations give an identical output on the same
machine and device; trained ones reproduce with their recorded seed on the CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ._outputs import check_outputs


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="recompute an output from its provenance sidecar (<output>.provenance.json)",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("provenance", help="a provenance sidecar written by mmfuse (or saved from the viewer)")
    parser.add_argument("-o", "--output", required=True, help="where to write the recomputed output")
    parser.add_argument("--port", help="which output of the operation to write (default: the one the sidecar "
                        "was written for)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: the recorded device if present here)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.set_defaults(func=run_replay)


def run_replay(args) -> int:
    from ..pipeline import read_source, replay
    from ..provenance import Provenance, sidecar_path
    from ._options import write_sidecar
    from ._outputs import save_output

    record = Provenance.load(args.provenance)
    sources = [entry["source"]["path"] for entries in record.inputs.values() for entry in entries
               if isinstance(entry, dict) and "path" in entry.get("source", {})]
    output = Path(args.output)
    check_outputs([("-o", output), ("-o", sidecar_path(output))], sources, args.overwrite)
    port = args.port or record.output or _recorded_port(record)
    device = args.device or _usable(record.device)
    grids = []  # the inputs' own file grids: OUT is written on the one it lies on, as the original was

    def read_input(entry):
        value = read_source(entry)
        metadata = getattr(value, "metadata", None)
        grids.append(metadata.get("grid") if isinstance(metadata, dict) else None)
        return value

    outputs, new_record = replay(record, read_input=read_input, device=device)
    if port not in outputs:
        raise ValueError(f"{record.operation} has no output {port!r}; outputs: {', '.join(outputs)}")
    picture_dtype = next((entry.get("dtype") for entries in record.inputs.values() for entry in entries
                          if isinstance(entry, dict) and entry.get("dtype")), None)
    save_output(output, outputs[port], overwrite=args.overwrite, provenance=new_record.to_dict(),
                picture_dtype=picture_dtype, grid=[grid for grid in grids if grid])
    new_record.outputs.setdefault(port, {})["path"] = str(output)
    write_sidecar(output, new_record, overwrite=args.overwrite)
    before = record.outputs.get(port, {}).get("hash")
    after = new_record.outputs.get(port, {}).get("hash")
    same = "identical to" if before and before == after else "differs from" if before else "no hash in"
    print(f"replayed {record.operation} -> {output} ({same} the recorded output)", file=sys.stderr)
    return 0


def _recorded_port(record) -> str:
    """The output the sidecar was written for (the one with a path), else the only one."""
    with_path = [port for port, entry in record.outputs.items() if isinstance(entry, dict) and "path" in entry]
    if with_path:
        return with_path[0]
    if len(record.outputs) == 1:
        return next(iter(record.outputs))
    raise ValueError(f"{record.operation} has several outputs ({', '.join(record.outputs)}): choose one with --port")


def _usable(device: str | None) -> str | None:
    """The recorded device when this machine has it, else None (the best available)."""
    if not device:
        return None
    from ..core.device import available_devices

    return device if device in available_devices() or device.split(":")[0] in available_devices() else None
