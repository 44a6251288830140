"""Hydra configs (a package so that they ship with non-editable installs and compose by module name)."""

CONFIG_PATH = "pkg://cxrnet.conf"
"""This package as Hydra names it: the ``config_path`` of every ``hydra.main`` and ``hydra.initialize`` of cxrnet,
the same from any module and any install."""
