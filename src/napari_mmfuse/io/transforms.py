"""Transform files: ITK text (.tfm/.txt), ITK/ANTs .mat (read), JSON, displacement fields.

Our transforms are ``(n + 1, n + 1)`` matrices in napari axis order (z, y, x) that map
fixed-world points to moving-world points (LPS frame). ITK files hold the same mapping
in physical (x, y, z) order; converting reverses the axes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..core.space import check_affine, itk_from_affine
from ._common import on_file_grid

ITK_TEXT_SUFFIXES = (".tfm", ".txt")
FIELD_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd")
_HEADER = "#Insight Transform File V1.0"


def _reverse(n: int) -> np.ndarray:
    flip = np.eye(n + 1)
    flip[:n, :n] = np.eye(n)[::-1]
    return flip


def to_physical(transform: np.ndarray) -> np.ndarray:
    """napari-order matrix -> physical (x, y[, z]) order matrix (same mapping)."""
    transform = np.asarray(transform, np.float64)
    flip = _reverse(transform.shape[0] - 1)
    return flip @ transform @ flip


def from_physical(matrix: np.ndarray) -> np.ndarray:
    """Physical (x, y[, z]) order matrix -> napari-order matrix (its own inverse operation)."""
    return to_physical(matrix)


def _check_writable(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")


def _check_transform(transform) -> np.ndarray:
    transform = np.asarray(transform, np.float64)
    if transform.shape not in ((3, 3), (4, 4)):
        raise ValueError(f"a transform must be a 3x3 (2D) or 4x4 (3D) matrix, got shape {transform.shape}")
    if not np.allclose(transform[-1], np.eye(transform.shape[0])[-1]):
        raise ValueError(f"the last row of a transform must be {np.eye(transform.shape[0])[-1].tolist()}")
    return check_affine(transform)


def write_itk_transform(path, transform, *, overwrite: bool = False) -> Path:
    """Write an ITK text transform file (AffineTransform_double_N_N, centre 0).

    Parameters
    ----------
    path : str or Path
        Ends in ``.tfm`` or ``.txt``.
    transform : ndarray, shape (3, 3) or (4, 4)
        Fixed -> moving world, napari order.
    overwrite : bool

    Returns
    -------
    Path
    """
    path = Path(path)
    if path.suffix.lower() not in ITK_TEXT_SUFFIXES:
        raise ValueError(f"an ITK text transform file must end in .tfm or .txt: {path}")
    physical = to_physical(_check_transform(transform))
    _check_writable(path, overwrite)
    n = physical.shape[0] - 1
    numbers = list(physical[:n, :n].ravel()) + list(physical[:n, n])
    text = "\n".join(
        [
            _HEADER,
            "#Transform 0",
            f"Transform: AffineTransform_double_{n}_{n}",
            "Parameters: " + " ".join(repr(float(v)) for v in numbers),
            "FixedParameters: " + " ".join(["0"] * n),
            "",
        ]
    )
    from .atomic import write_text

    return write_text(path, text, overwrite=overwrite)


def _parse_affine_text(text: str) -> np.ndarray | None:
    """Matrix of a text file holding exactly one Affine/MatrixOffset transform, else None."""
    kinds, parameters, fixed = [], [], []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Transform":
            kinds.append(value.strip())
        elif key.strip() == "Parameters":
            parameters.append([float(v) for v in value.split()])
        elif key.strip() == "FixedParameters":
            fixed.append([float(v) for v in value.split()])
    if len(kinds) != 1 or len(parameters) != 1:
        return None
    kind = kinds[0]
    if not kind.startswith(("AffineTransform_", "MatrixOffsetTransformBase_")):
        return None
    n = int(kind.rsplit("_", 1)[-1])
    values = np.asarray(parameters[0])
    if values.size != n * n + n:
        raise ValueError(f"{kind} needs {n * n + n} parameters, the file has {values.size}")
    center = np.asarray(fixed[0]) if fixed and len(fixed[0]) == n else np.zeros(n)
    linear = values[: n * n].reshape(n, n)
    matrix = np.eye(n + 1)
    matrix[:n, :n] = linear
    matrix[:n, n] = values[n * n :] + center - linear @ center
    return matrix


def _matrix_from_sitk(transform, n: int) -> np.ndarray:
    """Matrix of any linear SimpleITK transform, by mapping the origin and unit points."""
    if not transform.IsLinear():
        raise ValueError(
            f"the file holds a {transform.GetName()}, which is not linear (e.g. a displacement field or "
            "B-spline); only linear transforms can be read as a matrix"
        )
    origin = np.asarray(transform.TransformPoint((0.0,) * n))
    matrix = np.eye(n + 1)
    for axis in range(n):
        unit = np.zeros(n)
        unit[axis] = 1.0
        matrix[:n, axis] = np.asarray(transform.TransformPoint(tuple(unit))) - origin
    matrix[:n, n] = origin
    return matrix


def _refuse_plain_list(path: Path, text: str) -> None:
    """Refuse a text file of several transforms that is not one CompositeTransform.

    ITK writes a composite as a ``CompositeTransform_*`` block followed by its parts; a plain
    list of ``#Transform`` blocks has no agreed order of application, and SimpleITK reads
    only its first transform (with a warning), which would silently drop the others.
    """
    kinds = [line.partition(":")[2].strip() for line in text.splitlines() if line.partition(":")[0].strip() == "Transform"]
    if len(kinds) > 1 and not kinds[0].startswith("CompositeTransform"):
        raise ValueError(
            f"{path} holds {len(kinds)} transforms ({', '.join(kinds)}) without a CompositeTransform header: "
            "ITK/SimpleITK would read only the first; compose them into one transform "
            "(or save them as a SimpleITK CompositeTransform) first"
        )


def read_itk_transform(path) -> np.ndarray:
    """Read a linear ITK transform file as a napari-order matrix (fixed -> moving world).

    Affine text files are parsed directly; every other type SimpleITK reads (Euler,
    VersorRigid, Similarity, Translation, Scale, a composite of linear transforms,
    ANTs/ITK ``.mat``) is evaluated through SimpleITK and converted to a matrix.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    ndarray, shape (3, 3) or (4, 4)

    Raises
    ------
    FileNotFoundError, ValueError
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such transform file: {path}")
    if path.suffix.lower() in ITK_TEXT_SUFFIXES:
        text = path.read_text(errors="replace")
        if not text.lstrip().startswith("#Insight Transform File"):
            raise ValueError(f"{path} is not an ITK transform file (no '#Insight Transform File' header)")
        _refuse_plain_list(path, text)
        matrix = _parse_affine_text(text)
        if matrix is not None:
            return from_physical(matrix)
    import SimpleITK as sitk

    try:
        transform = sitk.ReadTransform(str(path))
    except RuntimeError as error:
        raise ValueError(f"cannot read transform {path}: {str(error).strip().splitlines()[-1]}") from error
    n = transform.GetDimension()
    if n not in (2, 3):
        raise ValueError(f"{path} holds a {n}D transform; only 2D and 3D are supported")
    return from_physical(_matrix_from_sitk(transform, n))


def write_json_transform(path, transform, *, overwrite: bool = False, metadata: dict | None = None) -> Path:
    """Write a transform as JSON: the napari-order matrix, its physical form and conventions.

    Parameters
    ----------
    path : str or Path
    transform : ndarray, shape (3, 3) or (4, 4)
    overwrite : bool
    metadata : dict, optional
        Extra JSON-serialisable provenance.
    """
    path = Path(path)
    transform = _check_transform(transform)
    _check_writable(path, overwrite)
    content = {
        "type": "napari-mmfuse linear transform",
        "version": 1,
        "matrix": transform.tolist(),
        "axis_order": "napari (z, y, x)" if transform.shape[0] == 4 else "napari (y, x)",
        "frame": "LPS",
        "direction": "maps fixed-world points to moving-world points (ITK resampling convention)",
        "apply_to_layer": "moving layer affine <- inverse(matrix) @ moving affine",
        "matrix_physical_xyz": to_physical(transform).tolist(),
        "metadata": metadata or {},
    }
    from .atomic import write_text

    return write_text(path, json.dumps(content, indent=2), overwrite=overwrite)


def read_json_transform(path) -> np.ndarray:
    """Read a transform written by :func:`write_json_transform` (napari-order matrix)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such transform file: {path}")
    try:
        content = json.loads(path.read_text())
        matrix = np.asarray(content["matrix"], np.float64)
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a napari-mmfuse JSON transform: {error}") from error
    return _check_transform(matrix)


def read_transform(path) -> np.ndarray:
    """Read a linear transform by suffix: ``.json`` as JSON, anything else through ITK."""
    if Path(path).suffix.lower() == ".json":
        return read_json_transform(path)
    return read_itk_transform(path)


def write_transform(path, transform, *, overwrite: bool = False) -> Path:
    """Write a linear transform by suffix: ``.json`` as JSON, ``.tfm``/``.txt`` as ITK text."""
    if Path(path).suffix.lower() == ".json":
        return write_json_transform(path, transform, overwrite=overwrite)
    return write_itk_transform(path, transform, overwrite=overwrite)


def _field_suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def write_displacement_field(path, displacement, affine, *, overwrite: bool = False, grid: dict | None = None) -> Path:
    """Write a displacement field as an ITK vector image (SimpleITK DisplacementFieldTransform reads it).

    Parameters
    ----------
    path : str or Path
        .nii, .nii.gz, .mha, .mhd or .nrrd.
    displacement : ndarray, shape (*shape, n)
        World units, napari order components, on the grid of ``affine``; a point x maps
        to ``x + displacement(x)``.
    affine : ndarray, shape (n + 1, n + 1)
        Grid index -> world (napari order); must have no shear.
    grid : dict or sequence of dict, optional
        The fixed file's own grid (its reader's ``metadata["grid"]``), or several: a field on
        one is written in that file's array order, voxel for voxel with it (the vectors are
        unchanged).

    Returns
    -------
    Path
    """
    import SimpleITK as sitk

    path = Path(path)
    if _field_suffix(path) not in FIELD_SUFFIXES:
        raise ValueError(f"a displacement field file must end in one of {', '.join(FIELD_SUFFIXES)}: {path}")
    displacement = np.asarray(displacement, np.float64)
    placed = on_file_grid(displacement, affine, grid, rgb=True) if grid else None  # components trail, like RGB
    if placed is not None:
        displacement, affine = placed
    n = displacement.ndim - 1
    if n not in (2, 3) or displacement.shape[-1] != n:
        raise ValueError(f"displacement must have shape (*shape, n) with n = 2 or 3, got {displacement.shape}")
    affine = check_affine(affine, n)
    spacing, origin, direction = itk_from_affine(affine)
    if not np.allclose(direction.T @ direction, np.eye(n), atol=1e-6):
        raise ValueError("the field's grid affine has shear; ITK images need orthogonal directions")
    _check_writable(path, overwrite)
    image = sitk.GetImageFromArray(np.ascontiguousarray(displacement[..., ::-1]), isVector=True)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(origin.tolist())
    image.SetDirection(direction.ravel().tolist())
    from .atomic import atomic_output

    with atomic_output(path, overwrite=overwrite, companions=path.suffix.lower() == ".mhd") as temporary:
        sitk.WriteImage(image, str(temporary), True)
    return path


def read_displacement_field(path) -> tuple[np.ndarray, np.ndarray]:
    """Read a displacement field written by :func:`write_displacement_field` (or ITK/ANTs).

    Returns
    -------
    displacement : ndarray, shape (*shape, n), float32, napari-order components
    affine : ndarray, shape (n + 1, n + 1)
    """
    import SimpleITK as sitk

    from ..core.space import affine_from_itk

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such displacement field: {path}")
    from .itkimage import check_itk_file, native_stderr_muted

    check_itk_file(path)  # truncated or corrupt files, lying headers: one ReadError before any allocation
    try:
        with native_stderr_muted():
            image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ValueError(f"cannot read displacement field {path}: {str(error).strip().splitlines()[-1]}") from error
    n = image.GetDimension()
    if image.GetNumberOfComponentsPerPixel() != n:
        raise ValueError(f"{path} is not a {n}D displacement field ({image.GetNumberOfComponentsPerPixel()} components)")
    data = sitk.GetArrayFromImage(image)[..., ::-1].astype(np.float32)
    affine = affine_from_itk(image.GetSpacing(), image.GetOrigin(), np.reshape(image.GetDirection(), (n, n)))
    return np.ascontiguousarray(data), affine


def field_path(path) -> Path:
    """Where the displacement field of a deformable transform saved at ``path`` goes.

    ``transform.tfm`` -> ``transform_displacement.nii.gz`` (an ITK vector image on the
    fixed grid; the full mapping is ``x -> T(x + u(x))``).
    """
    path = Path(path)
    return path.with_name(f"{path.stem}_displacement.nii.gz")


@dataclass
class Transform:
    """A spatial transform: what the register operations give and the transform operation applies.

    The mapping is ``x -> matrix(x + displacement(x))`` from fixed (reference) world to
    moving world, napari axis order; ``displacement`` (optional) lies on the grid of
    ``displacement_affine``.

    Attributes
    ----------
    matrix : ndarray, shape (n + 1, n + 1)
    displacement : ndarray, shape (*grid, n), optional
        World units, napari-order components.
    displacement_affine : ndarray, shape (n + 1, n + 1), optional
    name : str
    metadata : dict
        ``source`` (``{"path", "displacement", "kind": "transform"}``) when read from files;
        ``registration`` (model, metric, values before/after, folding, notes) when registration made it.
    """

    matrix: np.ndarray
    displacement: np.ndarray | None = None
    displacement_affine: np.ndarray | None = None
    name: str = "transform"
    metadata: dict = field(default_factory=dict)
    #: The port kind provenance and the pipeline recognise.
    kind: ClassVar[str] = "transform"

    def __post_init__(self):
        self.matrix = _check_transform(self.matrix)

    @property
    def data(self) -> np.ndarray:
        """The matrix (what provenance hashes)."""
        return self.matrix

    @property
    def ndim(self) -> int:
        """Spatial dimensions (2 or 3)."""
        return self.matrix.shape[0] - 1

    @classmethod
    def read(cls, path, displacement=None) -> "Transform":
        """A linear transform file (``.tfm``/``.txt``/``.mat``/``.json``), with a displacement field file."""
        field_data, field_affine = read_displacement_field(displacement) if displacement else (None, None)
        source = {"path": str(Path(path).resolve()), "kind": "transform"}
        if displacement:
            source["displacement"] = str(Path(displacement).resolve())
        return cls(read_transform(path), field_data, field_affine, name=Path(path).name, metadata={"source": source})

    @classmethod
    def from_source(cls, source: dict) -> "Transform":
        """The transform a provenance ``source`` entry names (see :meth:`read`)."""
        return cls.read(source["path"], source.get("displacement"))

    def save(self, path, *, overwrite: bool = False, displacement_path=None, grid=None) -> Path:
        """Write the linear part by suffix (.tfm/.txt ITK text, .json), the field to ``displacement_path``
        (on the fixed file's own ``grid`` when it lies there, see :func:`write_displacement_field`).

        Raises
        ------
        FileExistsError
            A target exists and ``overwrite`` is False (nothing is written).
        """
        targets = [Path(path)] + ([Path(displacement_path)] if displacement_path is not None else [])
        for target in targets:
            _check_writable(target, overwrite)
        if displacement_path is not None and self.displacement is None:
            raise ValueError("this transform has no displacement field to write")
        written = write_transform(path, self.matrix, overwrite=overwrite)
        if displacement_path is not None:
            write_displacement_field(displacement_path, self.displacement, self.displacement_affine, overwrite=overwrite,
                                     grid=grid)
        return written

    def describe(self) -> dict:
        """A JSON-able summary for provenance: kind, matrix, hashes, source, and the registration's
        numbers when registration made it (metric before and after, folding fraction)."""
        from ..provenance import content_hash

        entry = {"kind": self.kind, "name": self.name, "matrix": self.matrix.tolist(), "hash": content_hash(self.matrix)}
        if self.displacement is not None:
            entry["displacement_hash"] = content_hash(np.asarray(self.displacement))
        if self.metadata.get("source"):
            entry["source"] = dict(self.metadata["source"])
        registration = self.metadata.get("registration", {})
        entry.update({key: float(registration[key]) for key in ("metric_before", "metric_after", "folding_fraction")
                      if registration.get(key) is not None})
        return entry
