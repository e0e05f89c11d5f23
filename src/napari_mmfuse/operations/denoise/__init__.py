"""denoise operations: one module per method family, each defining ``OPERATIONS``."""

#: Menu order (methods not listed follow by name).
ORDER: tuple = ("gaussian", "median", "bilateral", "tv", "nlm", "diffusion", "n2v")
