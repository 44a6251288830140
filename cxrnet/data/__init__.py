"""Data: readers, phantoms, splits and the torch dataset (no Lightning, no models here)."""

from cxrnet.data.records import RawItem, Record

__all__ = ["RawItem", "Record"]
