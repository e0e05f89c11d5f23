"""segment operations: one module per method family, each defining ``OPERATIONS``."""

#: Menu order (methods not listed follow by name): the network trained on strokes first.
ORDER: tuple = ("unet", "otsu", "multiotsu", "watershed", "predict")
