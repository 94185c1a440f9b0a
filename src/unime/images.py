"""Deprecated name of :mod:`unime.io.images` (moved there); kept so that code written against earlier
releases keeps working. Importing it warns once and gives the very same module."""

import sys
import warnings

import unime.io.images as _moved

warnings.warn("unime.images is deprecated: import unime.io.images", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
