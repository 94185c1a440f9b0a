"""Deprecated name of :mod:`unime.models.tiny` (moved there); kept so that code written against earlier
releases keeps working. Importing it warns once and gives the very same module."""

import sys
import warnings

import unime.models.tiny as _moved

warnings.warn("unime.tiny is deprecated: import unime.models.tiny", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
