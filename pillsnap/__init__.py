__version__ = "0.0.1"

# Importing pillsnap first makes ultralytics and timm offline (see nbs/00_offline.ipynb).
from . import offline  # noqa: F401  (imported for its effect)
