"""register operations: one module per method family, each defining ``OPERATIONS``."""

#: Menu order (methods not listed follow by name).
ORDER: tuple = ("rigid", "similarity", "affine", "deformable", "landmarks")
