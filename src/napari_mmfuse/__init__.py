"""napari-mmfuse: multimodal biomedical imaging in napari."""

__version__ = "0.1.0"
