"""Bytes on disk: the one image decoder, the one JSON Lines reader, checksums and atomic writes."""
