"""Deprecated name of :mod:`unime.models.default` (moved there); kept so that code written against earlier
releases keeps working. Importing it warns once and gives the very same module."""

import sys
import warnings

import unime.models.default as _moved

warnings.warn("unime.default_model is deprecated: import unime.models.default", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
